"""`lmforge explain`: token attributions of a run's outputs, written as JSON, PNG heatmaps, a self-contained
HTML viewer and a bertviz export; `lmforge explain eval`: how faithful the attributions are on a dataset.

    OUT/explanations.json   per text: tokens, target, F = the target's probability, the method's token scores
                            (and IG's completeness figures, the rollout matrix or the logit lens)
    OUT/attention.json      every layer's and head's attention probabilities per text (bertviz head_view layout)
    OUT/viewer.html         open in a browser: no network needed
    OUT/plots/NNN_*.png     token scores and per-layer attention heatmaps
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch

from lmforge.atomic import atomic_directory, write_json_atomic
from lmforge.errors import ConfigError, DataError
from lmforge.explain.faithfulness import erasure_report, rank_correlation
from lmforge.explain.logit_lens import can_read_residuals, logit_lens
from lmforge.explain.methods import (attention_maps, attention_scores, integrated_gradients, rollout,
                                     rollout_scores, saliency)
from lmforge.explain.render import bertviz_params, plot_attention, plot_scores
from lmforge.explain.viewer import write_viewer
from lmforge.runs.explain_subjects import ExplainedRun
from lmforge.runs.rundir import check_out

METHODS = ("attention", "rollout", "ig", "saliency", "logit-lens")
EVAL_METHODS = ("ig", "rollout", "attention")


def check_method(run: ExplainedRun, method: str) -> None:
    """A one-line error for a method this run's family or kind cannot give."""
    if method not in METHODS:
        raise ConfigError(f"unknown method {method!r}", f"choose one of {', '.join(METHODS)}")
    if method == "logit-lens" and not (run.kind == "next-token" and can_read_residuals(run.model)):
        what = f"a fine-tuned {run.kind} model" if run.task else f"a {run.traits.structure} model"
        raise ConfigError(f"the logit lens reads a decoder language model's residual stream; {run.run_dir} is {what}",
                          "use it on a GPT-family language-model run, or choose attention, rollout, ig or saliency")
    if method != "attention" and run.kind == "next-token" and run.traits.structure == "encoder-decoder":
        raise ConfigError(f"{method} explains a single stack's tokens; {run.run_dir} is an encoder-decoder "
                          "language model", "use --method attention (self and cross attention) on it")


def explain_one(run: ExplainedRun, text: str, method: str, target: str | None = None,
                steps: int | None = None) -> tuple[dict, dict[str, torch.Tensor]]:
    """(the record explanations.json holds for `text`, its attention maps {kind: (L, H, T, S)})."""
    subject = run.subject(text, target)
    maps = attention_maps(subject)
    record = {"text": text, "tokens": subject.tokens, "special": subject.special, "target": subject.target,
              "probability": round(subject.value(), 6), "method": method}
    if method == "attention":
        scores = attention_scores(subject, maps)
    elif method == "rollout":
        scores = rollout_scores(subject, maps)
        record["rollout"] = np.round(rollout(maps[subject.stack]).numpy(), 5).tolist()
    elif method == "ig":
        result = integrated_gradients(subject, steps)
        scores = result.pop("scores")
        record["ig"] = result
    elif method == "saliency":
        scores = saliency(subject)
    else:
        scores = None
        record["logit_lens"] = logit_lens(run.model, subject.input_ids, lambda i: run.tokenizer.decode([i]))
    record["scores"] = None if scores is None else [round(float(s), 6) for s in scores]
    return record, maps


def read_texts(text: str | None, input: str | None) -> list[str]:
    if (text is None) == (input is None):
        raise ConfigError("pass exactly one of --text and --input", "--text 'a sentence' or --input texts.txt")
    if text is not None:
        return [text]
    path = Path(input)
    if not path.is_file():
        raise DataError(f"--input {path} is not a file", "pass a text file with one text per line")
    texts = [line.strip() for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    if not texts:
        raise DataError(f"--input {path} holds no text", "write one text per line")
    return texts


def explain(model: str | Path, *, text: str | None = None, input: str | None = None, method: str = "attention",
            target: str | None = None, out: str | Path, steps: int | None = None, overwrite: bool = False,
            device: str = "cpu") -> list[dict]:
    """Explain each text with `method`; writes the folder `out` whole or not at all; returns the records."""
    out = check_out(out)
    if out.exists() and any(out.iterdir()) and not overwrite:
        raise ConfigError(f"--out {out} already exists and is not empty", "pass --overwrite or another --out")
    texts = read_texts(text, input)
    run = ExplainedRun(model, device=device)
    check_method(run, method)
    results = [explain_one(run, t, method, target, steps) for t in texts]
    records = [r for r, _ in results]
    with atomic_directory(out) as folder:
        write_json_atomic(folder / "explanations.json", records)
        write_json_atomic(folder / "attention.json", [bertviz_params(r["tokens"], maps) for r, maps in results])
        for i, (record, maps) in enumerate(results):
            plot_scores(record, folder / "plots" / f"{i:03d}_scores.png")
            plot_attention(record, maps, folder / "plots" / f"{i:03d}_attention.png")
        write_viewer(folder / "viewer.html", records, [{k: v.numpy() for k, v in maps.items()} for _, maps in results])
    return records


def explain_eval(model: str | Path, data: str, *, methods=EVAL_METHODS, limit: int | None = None,
                 fraction: float = 0.2, steps: int | None = None, seed: int = 0, out: str | Path | None = None,
                 device: str = "cpu") -> dict:
    """Faithfulness of `methods` on a classifier's labelled file `data` (see lmforge.explain.faithfulness)."""
    run = ExplainedRun(model, device=device)
    if run.kind != "classify":
        raise ConfigError(f"explain eval scores a fine-tuned classifier; {run.run_dir} is a {run.kind} run",
                          "pass a run written by `lmforge finetune --task classify`")
    methods = [m for m in (methods.split(",") if isinstance(methods, str) else methods)]
    for m in methods:
        if m not in EVAL_METHODS:
            raise ConfigError(f"explain eval takes {', '.join(EVAL_METHODS)}, not {m!r}", "pass e.g. --method ig")
    examples = run.task.read(data, require_labels=False)[:limit]
    rng = np.random.default_rng(seed)
    rows = [_eval_row(run, e["text"], methods, fraction, steps, rng) for e in examples if e.get("text")]
    report = summarize(rows, methods, fraction)
    if out is not None:
        write_json_atomic(Path(out), {"report": report, "examples": rows})
    return report


def _eval_row(run: ExplainedRun, text: str, methods: list[str], fraction: float, steps, rng) -> dict:
    subject = run.subject(text)
    maps = attention_maps(subject)
    scores, row = {}, {"tokens": len(subject.tokens), "erasure": {}}
    for m in methods:
        if m == "ig":
            result = integrated_gradients(subject, steps)
            scores[m] = result.pop("scores")
            row["ig"] = result
        else:
            scores[m] = attention_scores(subject, maps) if m == "attention" else rollout_scores(subject, maps)
        row["erasure"][m] = erasure_report(subject, scores[m], fraction, rng)
    row["rank_correlation"] = {f"{a}~{b}": rank_correlation(scores[a], scores[b], subject.special)
                               for i, a in enumerate(methods) for b in methods[i + 1:]}
    return row


def summarize(rows: list[dict], methods: list[str], fraction: float) -> dict:
    """Means over examples, and IG's completeness figures (share within 1% of |F(x) - F(baseline)|)."""
    report: dict = {"examples": len(rows), "fraction": fraction}
    for m in methods:
        keys = ("comprehensiveness", "random_comprehensiveness", "sufficiency", "random_sufficiency")
        means = {k: float(np.mean([r["erasure"][m][k] for r in rows])) for k in keys}
        means["deletion_ratio"] = means["comprehensiveness"] / means["random_comprehensiveness"] \
            if means["random_comprehensiveness"] else None
        report[m] = means
    if "ig" in methods:
        errors = np.array([r["ig"]["relative_error"] for r in rows])
        steps = [r["ig"]["steps"] for r in rows]
        report["ig_completeness"] = {"within_1_percent": float(np.mean(errors <= 0.01)),
                                     "median_relative_error": float(np.median(errors)),
                                     "max_relative_error": float(errors.max()),
                                     "steps": {str(s): steps.count(s) for s in sorted(set(steps))}}
    pairs = rows[0]["rank_correlation"] if rows else {}
    report["rank_correlation"] = {p: _mean([r["rank_correlation"][p] for r in rows]) for p in pairs}
    return report


def _mean(values: list) -> float | None:
    kept = [v for v in values if v is not None]
    return float(np.mean(kept)) if kept else None
