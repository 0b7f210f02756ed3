"""`lmforge prompt eval`: how well a decoder classifies by prompting, over shots, exemplar draws and calibration.

    prompt_eval("runs/gpt", data="sst2/stsa.binary.dev", train="sst2/stsa.binary.train", template="sst2/cloze",
                shots=(0, 1, 4, 8), seeds=5, out="runs/gpt-prompts")

For each number of shots k and each seed, k exemplars are drawn from the training file (at random, or
balanced over the labels, in a random order), every validation example is classified by label likelihood
(`lmforge.infer.label_likelihood`), with and without contextual calibration, and the accuracies are
summarised as mean ± standard deviation over the seeds (zero shots needs no draw, so one run). A fine-tuned
run's validation metric can be put beside them. Written to OUT/prompt_eval.json and OUT/prompt_eval.md.
"""
from __future__ import annotations

import json
import random
import statistics
from pathlib import Path
from typing import Sequence

from lmforge.atomic import write_json_atomic, write_text_atomic
from lmforge.data.formats.reading import read_examples
from lmforge.data.prompts import PromptTemplate, load_template
from lmforge.errors import ConfigError
from lmforge.infer.label_likelihood import CONTENT_FREE, calibrate, label_logprobs, label_probabilities
from lmforge.runs.rundir import check_out, load


def select_exemplars(pool: Sequence[dict], k: int, seed: int, template: PromptTemplate, *,
                     balanced: bool = False) -> list[dict]:
    """`k` training examples drawn with `seed`: uniformly, or round-robin over the labels (each label's examples
    shuffled); either way in a random order."""
    if k > len(pool):
        raise ConfigError(f"{k} shots asked for but the training file has {len(pool)} examples",
                          "ask for fewer shots or pass a larger --train file")
    rng = random.Random(seed)
    if not balanced:
        return rng.sample(list(pool), k)
    by_label: dict[str, list[dict]] = {}
    for example in pool:
        by_label.setdefault(template.label_of(example), []).append(example)
    groups = [rng.sample(g, len(g)) for _, g in sorted(by_label.items())]
    picked = [g[i] for i in range(max(map(len, groups))) for g in groups if i < len(g)][:k]
    rng.shuffle(picked)
    return picked


def accuracies(model, tokenizer, template: PromptTemplate, examples: Sequence[dict], shots: Sequence[dict]) -> dict:
    """Accuracy of label-likelihood classification of `examples` under `shots`, plain and calibrated."""
    labels = list(template.verbalizers)
    gold = [labels.index(template.label_of(e)) for e in examples]
    verbalizers = [template.verbalizers[label] for label in labels]
    prompts = [template.prompt(e, shots) for e in examples]
    _check_fits(model, tokenizer, prompts, len(shots))
    scores = label_logprobs(model, tokenizer, prompts, verbalizers, delimiter=template.target_delimiter)
    probs = label_probabilities(scores)
    content_free = [template.prompt({v: text for v in template.variables}, shots) for text in CONTENT_FREE]
    cf_probs = label_probabilities(label_logprobs(model, tokenizer, content_free, verbalizers,
                                                  delimiter=template.target_delimiter))
    plain = probs.argmax(-1).tolist()
    calibrated = calibrate(probs, cf_probs).argmax(-1).tolist()
    n = len(gold)
    return {"accuracy": sum(p == g for p, g in zip(plain, gold)) / n,
            "calibrated_accuracy": sum(p == g for p, g in zip(calibrated, gold)) / n}


def _check_fits(model, tokenizer, prompts: Sequence[str], k: int) -> None:
    longest = max(len(tokenizer.encode(p)) for p in prompts)
    if longest >= model.config.block_size:
        raise ConfigError(f"{k}-shot prompts reach {longest} tokens but the model's context holds "
                          f"{model.config.block_size}", "ask for fewer shots or use a model with a longer context")


def _summary(values: list[float]) -> dict:
    return {"mean": statistics.fmean(values), "std": statistics.stdev(values) if len(values) > 1 else 0.0,
            "runs": values}


def _read(path, template: PromptTemplate, what: str) -> list[dict]:
    examples = read_examples(path, task="classify")
    unknown = sorted({template.label_of(e) for e in examples} - set(template.verbalizers))
    if unknown:
        raise ConfigError(f"the {what} file has label {unknown[0]!r}, which template {template.name!r} has no "
                          "verbalizer for", f"add it under `verbalizers` (it has {', '.join(template.verbalizers)})")
    return examples


def prompt_eval(run_dir: str | Path, *, data: str | Path, train: str | Path, template: str | Path,
                shots: Sequence[int] = (0, 1, 4, 8), seeds: int = 5, balanced: bool = False,
                limit: int | None = None, out: str | Path, finetuned: str | Path | None = None,
                device: str = "cpu") -> dict:
    """Prompted accuracy per number of shots (mean ± std over `seeds` exemplar draws, plain and calibrated),
    beside a fine-tuned run's validation metric when `finetuned` is given; see the module docstring."""
    out = check_out(out)
    tpl = load_template(template)
    if seeds < 1 or any(k < 0 for k in shots) or not shots:
        raise ConfigError("need at least one seed and non-negative shot counts", "pass e.g. --shots 0,1,4 --seeds 5")
    examples = _read(data, tpl, "validation")
    examples = examples[:limit] if limit else examples
    pool = _read(train, tpl, "training")
    # Mistakes in the template or the shots are reported before the model loads.
    tpl.fill(examples[0])
    tpl.exemplar(pool[0])
    for k in shots:
        select_exemplars(pool, k, 0, tpl)
    model, tokenizer = load(run_dir, device=device)
    rows = []
    for k in shots:
        runs = [accuracies(model, tokenizer, tpl, examples,
                           select_exemplars(pool, k, seed, tpl, balanced=balanced) if k else [])
                for seed in (range(seeds) if k else [0])]
        rows.append({"shots": k, "accuracy": _summary([r["accuracy"] for r in runs]),
                     "calibrated_accuracy": _summary([r["calibrated_accuracy"] for r in runs])})
    result = {"model": str(run_dir), "template": tpl.name, "examples": len(examples), "seeds": seeds,
              "selection": "balanced" if balanced else "random", "rows": rows,
              "finetuned": _finetuned(finetuned)}
    write_json_atomic(out / "prompt_eval.json", result)
    write_text_atomic(out / "prompt_eval.md", markdown_table(result))
    return result


def _finetuned(run_dir: str | Path | None) -> dict | None:
    if run_dir is None:
        return None
    path = Path(run_dir) / "summary.json"
    if not path.is_file():
        raise ConfigError(f"{path} is missing", "pass the directory of a finished `lmforge finetune` run")
    summary = json.loads(path.read_text())
    metric = summary.get("main_metric")
    if metric is None or summary.get(metric) is None:
        raise ConfigError(f"{path} records no validation metric", "pass a fine-tuning run that had validation data")
    return {"run": str(run_dir), "metric": metric, "value": summary[metric]}


def markdown_table(result: dict) -> str:
    n = result["seeds"]
    lines = [f"Prompted classification with `{result['model']}`, template `{result['template']}`, "
             f"{result['examples']} validation examples, exemplars drawn {result['selection']}ly "
             f"({n} seeds; zero shots needs none).", "",
             "| shots | accuracy (mean ± std) | calibrated (mean ± std) |", "|---|---|---|"]
    for row in result["rows"]:
        a, c = row["accuracy"], row["calibrated_accuracy"]
        lines.append(f"| {row['shots']} | {a['mean']:.4f} ± {a['std']:.4f} | {c['mean']:.4f} ± {c['std']:.4f} |")
    if result["finetuned"]:
        f = result["finetuned"]
        lines.append(f"| fine-tuned `{f['run']}` | {f['metric']} {f['value']:.4f} | |")
    return "\n".join(lines) + "\n"
