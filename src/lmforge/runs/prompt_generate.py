"""`lmforge prompt generate`: summarization, translation and question answering by prompting a decoder, scored
with the metrics fine-tuning reports for the same task.

    prompt_generate("runs/gpt", task="summarize", train="dialogsum/dialogsum.train.jsonl",
                    data="dialogsum/dialogsum.dev.jsonl", template="summarize/instruction", shots=(0, 1),
                    seeds=3, limit=50, out="runs/gpt-summaries")

For each number of shots and each seed, exemplars are chosen from the training file as `prompt eval`
chooses them, the model writes each validation example's answer greedily until the template's stop string
(after its own reasoning, with a chain-of-thought template), and the answers are scored: ROUGE-1/2/L for
summarize (main: rougeL), BLEU and chrF for translate (main: bleu), SQuAD exact match and F1 for qa
(main: f1), the functions of `lmforge.eval.generation` that fine-tuning's evaluation calls. Written to
OUT/prompt_generate.json (with every prediction) and OUT/prompt_generate.md.
"""
from __future__ import annotations

from pathlib import Path
from typing import Sequence

from lmforge.atomic import write_json_atomic, write_text_atomic
from lmforge.data.formats.reading import read_examples
from lmforge.data.prompts import GenerationTemplate, load_template
from lmforge.errors import ConfigError
from lmforge.eval.generation import bleu, rouge, squad_scores
from lmforge.runs.prompt_eval import checked_setup, read_splits
from lmforge.runs.prompting import check_fits, greedy, reason, summary
from lmforge.runs.rundir import check_out, load

MAIN_METRIC = {"summarize": "rougeL", "translate": "bleu", "qa": "f1"}


def score_answers(task: str, predictions: Sequence[str], examples: Sequence[dict]) -> dict:
    """The task's metrics of `predictions` against the examples' references, as fine-tuning computes them."""
    if task == "summarize":
        return rouge(list(predictions), [e["target"] for e in examples], lang="auto")
    if task == "translate":
        s = bleu(list(predictions), [e["target"] for e in examples], lang="auto")
        return {"bleu": s["bleu"], "chrf": s["chrf"], "brevity_penalty": s["brevity_penalty"]}
    s = squad_scores({e["id"]: p for e, p in zip(examples, predictions)}, list(examples), lang="auto")
    return {"exact_match": s["exact_match"], "f1": s["f1"]}


def _reader(task: str, train_target: str | Path | None, data_target: str | Path | None):
    def read(path, template: GenerationTemplate, what: str) -> list[dict]:
        if task == "qa":
            # The first gold answer is what an exemplar shows; scoring takes the best of them all.
            return [{**e, "answer": (e["answers"] or [{"text": ""}])[0]["text"]}
                    for e in read_examples(path, task="qa")]
        target = train_target if what == "training" else data_target
        return read_examples(path, task="seq2seq", target_path=target)
    return read


def prompt_generate(run_dir: str | Path, *, task: str, train: str | Path, template: str | Path,
                    data: str | Path | None = None, train_target: str | Path | None = None,
                    data_target: str | Path | None = None, val_fraction: float | None = None,
                    shots: Sequence[int] = (0, 1), seeds: int = 3, selection: str = "random", order: str = "random",
                    encoder: str | None = None, limit: int | None = None, max_new_tokens: int = 64,
                    reasoning_tokens: int = 48, out: str | Path, finetuned: str | Path | None = None,
                    device: str = "cpu") -> dict:
    """Prompted generation scored per number of shots (mean ± std over `seeds`); see the module docstring."""
    if task not in MAIN_METRIC:
        raise ConfigError(f"unknown generation task {task!r}", f"use one of: {', '.join(MAIN_METRIC)}")
    out = check_out(out)
    tpl = load_template(template, kind="generate")
    if seeds < 1 or any(k < 0 for k in shots) or not shots:
        raise ConfigError("need at least one seed and non-negative shot counts", "pass e.g. --shots 0,1 --seeds 3")
    pool, examples = read_splits(tpl, train, data, val_fraction, _reader(task, train_target, data_target))
    examples, fine, picker = checked_setup(tpl, pool, examples[:limit] if limit else examples, shots, finetuned,
                                          selection=selection, order=order, encoder=encoder)
    model, tokenizer = load(run_dir, device=device)
    rows, samples = [], {}
    for k in shots:
        runs = []
        for seed in (range(seeds) if k and picker.depends_on_seed else [0]):
            prompts = [tpl.prompt(e, picker.shots(k, seed, i)) for i, e in enumerate(examples)]
            check_fits(model, tokenizer, prompts, k, max_new_tokens + (reasoning_tokens if tpl.reasons else 0))
            prompts = reason(model, tokenizer, tpl, prompts, reasoning_tokens)
            answers = [a.strip() for a in greedy(model, tokenizer, prompts, max_new_tokens, tpl.stop)]
            runs.append(score_answers(task, answers, examples))
            samples.setdefault(str(k), []).append(answers)
        rows.append({"shots": k, **{m: summary([r[m] for r in runs]) for m in runs[0]}})
    result = {"model": str(run_dir), "task": task, "template": tpl.name, "examples": len(examples), "seeds": seeds,
              "selection": selection, "order": order, "encoder": encoder, "main_metric": MAIN_METRIC[task],
              "rows": rows, "finetuned": fine, "predictions": samples}
    write_json_atomic(out / "prompt_generate.json", result)
    write_text_atomic(out / "prompt_generate.md", generation_table(result))
    return result


def generation_table(result: dict) -> str:
    metrics = [m for m in result["rows"][0] if m != "shots"]
    lines = [f"Prompted {result['task']} with `{result['model']}`, template `{result['template']}`, "
             f"{result['examples']} validation examples; exemplars: {result['selection']}, order {result['order']}.",
             "", "| shots | " + " | ".join(f"{m} (mean ± std)" for m in metrics) + " |",
             "|---|" + "---|" * len(metrics)]
    for row in result["rows"]:
        lines.append(f"| {row['shots']} | " + " | ".join(f"{row[m]['mean']:.4f} ± {row[m]['std']:.4f}"
                                                           for m in metrics) + " |")
    if result["finetuned"]:
        f = result["finetuned"]
        lines.append(f"| fine-tuned `{f['run']}` | {f['metric']} {f['value']:.4f} |" + " |" * (len(metrics) - 1))
    return "\n".join(lines) + "\n"
