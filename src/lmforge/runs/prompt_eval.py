"""`lmforge prompt eval`: how well a decoder classifies by prompting, over shots, exemplar draws and calibration.

    prompt_eval("runs/gpt", data="sst2/stsa.binary.dev", train="sst2/stsa.binary.train", template="sst2/cloze",
                shots=(0, 1, 4, 8), seeds=5, out="runs/gpt-prompts")

For each number of shots k and each seed, k exemplars are chosen from the training file (at random,
balanced over the labels, or the nearest neighbours of each query by sentence embedding; see
`lmforge.data.exemplars`), every validation example is classified by label likelihood
(`lmforge.infer.label_likelihood`), with and without contextual calibration, and the accuracies are
summarised as mean ± standard deviation over the seeds (zero shots needs no draw, nor do nearest neighbours
in a fixed order: one run). Without a validation file, one is carved from the training file by hash
(`val_fraction`, as fine-tuning carves it), and exemplars come only from the rest. A fine-tuned run's
validation metric can be put beside them. Written to OUT/prompt_eval.json, .md and .png.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Sequence

import torch

from lmforge.atomic import write_json_atomic, write_text_atomic
from lmforge.data.formats.reading import read_examples
from lmforge.data.prompts import PromptTemplate, load_template
from lmforge.data.splits import carve_split
from lmforge.errors import ConfigError
from lmforge.infer.label_likelihood import CONTENT_FREE, calibrate, label_logprobs, label_probabilities
from lmforge.runs.prompt_report import markdown_table, plot_prompt_eval
from lmforge.runs.prompting import ShotPicker, check_fits, reason, summary
from lmforge.runs.rundir import check_out, load


def accuracies(model, tokenizer, template: PromptTemplate, examples: Sequence[dict],
               shots: Sequence[Sequence[dict]], *, reasoning_tokens: int = 48) -> dict:
    """Accuracy of label-likelihood classification of `examples`, each under its own `shots`, plain and
    calibrated (content-free inputs scored under each distinct set of exemplars), and the labels predicted."""
    labels = list(template.verbalizers)
    gold = [labels.index(template.label_of(e)) for e in examples]
    verbalizers = [template.verbalizers[label] for label in labels]
    prompts = [template.prompt(e, s) for e, s in zip(examples, shots)]
    k = max(map(len, shots))
    check_fits(model, tokenizer, prompts, k, reasoning_tokens if template.reasons else 0)

    def probabilities(texts: Sequence[str]) -> torch.Tensor:
        texts = reason(model, tokenizer, template, texts, reasoning_tokens)
        return label_probabilities(label_logprobs(model, tokenizer, texts, verbalizers,
                                                  delimiter=template.target_delimiter))

    probs = probabilities(prompts)
    calibrated = torch.empty_like(probs)
    by_shots: dict[tuple, list[int]] = {}
    for i, s in enumerate(shots):
        by_shots.setdefault(tuple(map(id, s)), []).append(i)
    for rows in by_shots.values():
        content_free = [template.prompt({v: text for v in template.variables}, shots[rows[0]])
                        for text in CONTENT_FREE]
        calibrated[rows] = calibrate(probs[rows], probabilities(content_free))
    n = len(gold)
    plain, fixed = probs.argmax(-1).tolist(), calibrated.argmax(-1).tolist()
    return {"accuracy": sum(p == g for p, g in zip(plain, gold)) / n,
            "calibrated_accuracy": sum(p == g for p, g in zip(fixed, gold)) / n,
            "predictions": [labels[p] for p in plain], "calibrated_predictions": [labels[p] for p in fixed]}


def _read(path, template: PromptTemplate, what: str) -> list[dict]:
    examples = read_examples(path, task="classify")
    unknown = sorted({template.label_of(e) for e in examples} - set(template.verbalizers))
    if unknown:
        raise ConfigError(f"the {what} file has label {unknown[0]!r}, which template {template.name!r} has no "
                          "verbalizer for", f"add it under `verbalizers` (it has {', '.join(template.verbalizers)})")
    return examples


def read_splits(template, train, data, val_fraction: float | None, read) -> tuple[list[dict], list[dict]]:
    """(exemplar pool, validation examples): both files, or the validation carved from `train` by hash."""
    if data is not None and val_fraction is not None:
        raise ConfigError("both --data and --val_fraction were given", "pass a validation file or a fraction, not both")
    if data is not None:
        return read(train, template, "training"), read(data, template, "validation")
    if val_fraction is None:
        raise ConfigError("no validation data", "pass --data FILE, or --val_fraction F to carve it from --train")
    return carve_split(read(train, template, "training"), fraction=val_fraction, how="hash")


def prompt_eval(run_dir: str | Path, *, train: str | Path, template: str | Path, data: str | Path | None = None,
                val_fraction: float | None = None, shots: Sequence[int] = (0, 1, 4, 8), seeds: int = 5,
                selection: str = "random", order: str = "random", encoder: str | None = None,
                limit: int | None = None, reasoning_tokens: int = 48, out: str | Path,
                finetuned: str | Path | None = None, device: str = "cpu") -> dict:
    """Prompted accuracy per number of shots (mean ± std over `seeds` exemplar draws, plain and calibrated),
    beside a fine-tuned run's validation metric when `finetuned` is given; see the module docstring."""
    out = check_out(out)
    tpl = load_template(template)
    if seeds < 1 or any(k < 0 for k in shots) or not shots:
        raise ConfigError("need at least one seed and non-negative shot counts", "pass e.g. --shots 0,1,4 --seeds 5")
    pool, examples = read_splits(tpl, train, data, val_fraction, _read)
    examples, fine, picker = checked_setup(tpl, pool, examples[:limit] if limit else examples, shots, finetuned,
                                          selection=selection, order=order, encoder=encoder)
    model, tokenizer = load(run_dir, device=device)
    rows = []
    for k in shots:
        draws = range(seeds) if k and picker.depends_on_seed else [0]
        runs = [accuracies(model, tokenizer, tpl, examples, [picker.shots(k, seed, i) for i in range(len(examples))],
                           reasoning_tokens=reasoning_tokens) for seed in draws]
        rows.append({"shots": k, "accuracy": summary([r["accuracy"] for r in runs]),
                     "calibrated_accuracy": summary([r["calibrated_accuracy"] for r in runs])})
    result = {"model": str(run_dir), "template": tpl.name, "examples": len(examples), "seeds": seeds,
              "selection": selection, "order": order, "encoder": encoder, "chance": 1 / len(tpl.verbalizers),
              "rows": rows, "finetuned": fine}
    write_json_atomic(out / "prompt_eval.json", result)
    write_text_atomic(out / "prompt_eval.md", markdown_table(result))
    plot_prompt_eval(result, out / "prompt_eval.png")
    return result


def checked_setup(tpl, pool: list[dict], examples: list[dict], shots: Sequence[int], finetuned, *, selection: str,
                  order: str, encoder) -> tuple[list[dict], dict | None, ShotPicker]:
    """(examples, the fine-tuned run's metric, the exemplar picker), after the template, the shots and the
    fine-tuned run are checked: mistakes there are reported before any model loads."""
    tpl.fill(examples[0])
    tpl.exemplar(pool[0])
    fine = finetuned_metric(finetuned)
    picker = ShotPicker(pool, examples, tpl, how=selection, order=order, encoder=encoder)
    for k in shots:
        picker.check(k)
    return examples, fine, picker


def finetuned_metric(run_dir: str | Path | None) -> dict | None:
    if run_dir is None:
        return None
    path = Path(run_dir) / "summary.json"
    if not path.is_file():
        raise ConfigError(f"{path} is missing", "pass the directory of a finished `lmforge finetune` run")
    summary_ = json.loads(path.read_text())
    metric = summary_.get("main_metric")
    if metric is None or summary_.get(metric) is None:
        raise ConfigError(f"{path} records no validation metric", "pass a fine-tuning run that had validation data")
    return {"run": str(run_dir), "metric": metric, "value": summary_[metric]}
