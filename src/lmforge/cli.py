"""`lmforge <verb> [--config recipe.yaml] [--section.key value ...]`: parsing only, the work is in lmforge.api.

Errors a user can fix print `error: <what> — <how to fix>` on one line and exit with status 2
(pass --debug for the traceback).
"""
from __future__ import annotations

import os
import sys
from dataclasses import fields

from jsonargparse import ActionConfigFile, ArgumentParser

from lmforge.config import DataConfig, ModelSpec, TrainConfig
from lmforge.errors import LmforgeError

# A bare `--data X` / `--model X` names the section's main field (`--data.path X`, `--model.preset X`).
SECTION_SHORTHANDS = {"pretrain": {"--data": "--data.path", "--model": "--model.preset"},
                      "finetune": {"--data": "--data.train", "--model": "--model.init"}}


def _parser(description: str) -> ArgumentParser:
    return ArgumentParser(description=description, exit_on_error=False, env_prefix="LMFORGE", default_env=False)


def _sampling_arguments(p: ArgumentParser) -> None:
    from typing import get_type_hints

    from lmforge.infer.sampling import SamplingParams

    hints, defaults = get_type_hints(SamplingParams), SamplingParams()
    for f in fields(SamplingParams):
        p.add_argument(f"--{f.name}", type=hints[f.name], default=getattr(defaults, f.name))


def build_parser() -> ArgumentParser:
    root = ArgumentParser(prog="lmforge", description=__doc__.splitlines()[0], exit_on_error=False)
    root.add_argument("--debug", action="store_true", help="show tracebacks for errors")
    verbs = root.add_subcommands(dest="verb", required=True)

    p = _parser("Clean a corpus, train a tokenizer and write memmap token shards.")
    p.add_argument("--data", required=True, help="file, folder, glob, or built-in corpus (python-docs, tinyshakespeare)")
    p.add_argument("--tokenizer", default="bpe", choices=["bpe", "wordpiece", "unigram", "char"])
    p.add_argument("--vocab_size", type=int, default=8192)
    p.add_argument("--val_fraction", type=float, default=0.1)
    p.add_argument("--seed", type=int, default=1337)
    p.add_argument("--text_field", default="text", help="JSON field holding the text")
    p.add_argument("--column", type=str | None, default=None, help="CSV/TSV/Parquet column holding the text")
    p.add_argument("--clean", type=bool, default=True, help="normalise Unicode/HTML/whitespace and drop duplicates")
    p.add_argument("--extra_ids", type=int, default=0,
                   help="sentinel tokens <extra_id_N> to add (100 for T5 span-corruption pretraining)")
    p.add_argument("--overwrite", action="store_true")
    p.add_argument("--out", required=True)
    verbs.add_subcommand("prepare", p, help="prepare a dataset")

    p = _parser("Train a language model from scratch; writes a run directory.")
    p.add_argument("--config", action=ActionConfigFile, help="YAML recipe (see configs/)")
    p.add_class_arguments(DataConfig, "data")
    p.add_class_arguments(ModelSpec, "model")
    p.add_class_arguments(TrainConfig, "train")
    p.add_argument("--objective", type=str | None, default=None,
                   help="training objective (default: the model family's own: clm for GPT, mlm for BERT; "
                        "BERT also takes mlm+nsp and mlm+sop)")
    p.add_argument("--out", required=True, help="run directory to create")
    p.add_argument("--resume", action="store_true", help="continue the run in --out from its latest checkpoint")
    p.add_argument("--init_from", type=str | None, default=None,
                   help="start from this run's (or Hugging Face folder's) weights, config and tokenizer instead "
                        "of a fresh --model preset (continued / domain-adaptive pretraining)")
    verbs.add_subcommand("pretrain", p, help="pretrain a model")

    from lmforge.config import (AugmentConfig, BalanceConfig, DecodeConfig, MethodConfig, StartConfig,
                                TaskDataConfig)

    p = _parser("Fine-tune a model for an application task (classify, ner, qa, translate, summarize, chat); "
                "writes a run directory whose summary.json holds the validation metrics.")
    p.add_argument("--config", action=ActionConfigFile, help="YAML recipe (see configs/finetune/)")
    p.add_argument("--task", required=True, help="classify, ner, qa, translate, summarize or chat")
    p.add_class_arguments(TaskDataConfig, "data")
    p.add_class_arguments(StartConfig, "model")
    p.add_class_arguments(MethodConfig, "method")
    p.add_class_arguments(TrainConfig, "train")
    p.add_class_arguments(BalanceConfig, "balance")
    p.add_class_arguments(AugmentConfig, "augment")
    p.add_class_arguments(DecodeConfig, "decode")
    p.add_argument("--out", required=True, help="run directory to create")
    p.add_argument("--resume", action="store_true", help="continue the run in --out from its latest checkpoint")
    verbs.add_subcommand("finetune", p, help="fine-tune for an application")

    p = _parser("Apply a fine-tuned run to examples; writes one JSON object per example, in input order.")
    p.add_argument("--model", required=True, help="run directory written by `lmforge finetune`")
    p.add_argument("--input", required=True, help="file in any format the task reads, or - for standard input")
    p.add_argument("--format", default=None, help="input format (default: the one the run was trained on, "
                                                  "else detected)")
    p.add_argument("--target", default=None, help="parallel text: ignored target file (accepted for symmetry)")
    p.add_argument("--output", default="-", help="JSONL file to write (- for standard output)")
    p.add_argument("--batch_size", type=int, default=32)
    p.add_argument("--device", default="auto", help="cpu, cuda, cuda:N, or auto (a GPU when present)")
    verbs.add_subcommand("predict", p, help="predict with a fine-tuned model")

    p = _parser("Generate text from a trained run.")
    p.add_argument("--model", required=True, help="run directory")
    p.add_argument("--prompt", type=list[str] | str, default=[""], help="a prompt, or a JSON list of prompts")
    p.add_argument("--no_stream", action="store_true", help="print whole samples instead of streaming tokens")
    p.add_argument("--device", default="auto", help="cpu, cuda, cuda:N, or auto (a GPU when present)")
    p.add_argument("--compile", action="store_true",
                   help="CPU, GPT family: compile the decode step into one graph first (tens of seconds), "
                        "then decode about 2.5x faster; pays off for long or many generations")
    _sampling_arguments(p)
    verbs.add_subcommand("generate", p, help="sample continuations of prompts")

    p = _parser("Chat interactively with a trained run.")
    p.add_argument("--model", required=True, help="run directory")
    p.add_argument("--system", type=str | None, default=None)
    p.add_argument("--device", default="auto", help="cpu, cuda, cuda:N, or auto (a GPU when present)")
    _sampling_arguments(p)
    verbs.add_subcommand("chat", p, help="interactive chat loop")

    p = _parser("Serve a trained run over HTTP: OpenAI-compatible /v1/completions and /v1/chat/completions, "
                "task routes for fine-tuned runs, /health, /metrics and a web playground at /.")
    p.add_argument("--model", required=True, help="run directory of the decoder (GPT-family) model to serve")
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default: this machine only)")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--api_key", action="append", default=None,
                   help="accept only requests with Authorization: Bearer KEY (repeat for several keys; "
                        "default: the comma-separated keys in $LMFORGE_API_KEYS, else none)")
    p.add_argument("--task_model", action="append", default=[],
                   help="NAME=RUN: also serve a fine-tuned run at /v1/NAME (classify, ner, qa, translate, "
                        "summarize); repeat for several")
    p.add_argument("--max_slots", type=int, default=16, help="requests generated at once")
    p.add_argument("--device", default="auto", help="cpu, cuda, cuda:N, or auto (a GPU when present)")
    p.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"],
                   help="weights and KV cache precision of the generation model (bfloat16: about half the memory "
                        "traffic per token, fast on CPUs with native bf16 and on GPUs)")
    p.add_argument("--max_num_batched_tokens", type=int | None, default=None,
                   help="tokens computed per engine step (default: max(512, max_slots))")
    p.add_argument("--max_prompt_tokens", type=int | None, default=None,
                   help="longest prompt accepted, in tokens (default: the context length less one)")
    p.add_argument("--max_tokens_limit", type=int, default=512, help="largest max_tokens a request may ask for")
    p.add_argument("--max_body_bytes", type=int, default=1 << 20, help="largest request body (413 beyond)")
    p.add_argument("--max_concurrent", type=int, default=64, help="requests in progress at once (429 beyond)")
    p.add_argument("--request_timeout", type=float, default=300.0, help="seconds per request (504 beyond)")
    p.add_argument("--model_name", type=str | None, default=None,
                   help="model id clients pass (default: the run directory's name)")
    p.add_argument("--log_level", default="info", choices=["critical", "error", "warning", "info", "debug"])
    verbs.add_subcommand("serve", p, help="serve a model over HTTP (OpenAI-compatible API and playground)")

    p = _parser("Run the built-in end-to-end demo (no network, CPU, a few minutes).")
    p.add_argument("--out", default="runs/demo")
    p.add_argument("--max_seconds", type=float, default=150.0, help="training time budget")
    verbs.add_subcommand("demo", p, help="prepare -> pretrain -> perplexity -> samples")

    p = _parser("Train several models for the same wall-clock time on one dataset; compare validation bits per "
                "character (writes OUT/compare.md, .json, .png).")
    p.add_argument("--data", required=True, help="file, folder, built-in corpus, or prepared dataset directory")
    p.add_argument("--budget_seconds", type=float, required=True, help="training time per model")
    p.add_argument("--out", required=True)
    from lmforge.eval.compare import DEFAULT_MODELS

    p.add_argument("--models", default=",".join(DEFAULT_MODELS), help="comma-separated model presets")
    p.add_argument("--tokenizer", default="char", choices=["bpe", "wordpiece", "unigram", "char"])
    p.add_argument("--vocab_size", type=int, default=8192, help="for bpe/wordpiece/unigram tokenizers")
    p.add_argument("--clean", type=bool, default=False, help="normalise the text first (default: keep it as is)")
    p.add_argument("--dropout", type=float, default=0.0, help="dropout for every neural model alike")
    p.add_argument("--device", default="auto")
    p.add_argument("--overwrite", action="store_true", help="replace earlier runs in --out")
    verbs.add_subcommand("compare", p, help="compare model families at equal training time")

    p = _parser("Convert a model between an lmforge run/model directory and a Hugging Face transformers folder "
                "(GPT-2, Llama, BERT, T5).")
    p.add_argument("src", help="lmforge run directory (--to hf) or Hugging Face model folder (--to lmforge)")
    p.add_argument("dst", help="folder to create; written whole or not at all")
    p.add_argument("--to", default="hf", choices=["hf", "lmforge"], help="layout to write")
    p.add_argument("--overwrite", action="store_true", help="replace a non-empty destination")
    verbs.add_subcommand("convert", p, help="convert to or from Hugging Face transformers")

    p = _parser("List the model presets.")
    verbs.add_subcommand("presets", p, help="list model presets")

    p = _parser("Evaluate a trained run.")
    verbs.add_subcommand("eval", p, help="evaluate a model")
    kinds = p.add_subcommands(dest="metric", required=True)
    q = _parser("Perplexity and bits per byte on a text file or a prepared dataset's validation split.")
    q.add_argument("--model", required=True, help="run directory")
    q.add_argument("--data", required=True, help="text file or prepared dataset directory")
    q.add_argument("--stride", type=int | None, default=None, help="sliding-window stride (default: half the context)")
    q.add_argument("--batch_size", type=int, default=8)
    q.add_argument("--device", default="auto", help="cpu, cuda, cuda:N, or auto (a GPU when present)")
    kinds.add_subcommand("perplexity", q, help="perplexity / bits per byte")
    return root


def normalize_argv(argv: list[str]) -> list[str]:
    """Accept dashes in option names (`--max-new-tokens`) and the bare section shorthands."""
    out, verb = [], next((a for a in argv if not a.startswith("-")), None)
    shorthands = SECTION_SHORTHANDS.get(verb, {})
    for i, arg in enumerate(argv):
        if arg.startswith("--"):
            name, eq, value = arg.partition("=")
            name = "--" + name[2:].replace("-", "_")
            if name in shorthands and (eq or (i + 1 < len(argv) and not argv[i + 1].startswith("--"))):
                name = shorthands[name]
            arg = name + eq + value
        out.append(arg)
    return out


def run(argv: list[str]) -> int:
    import lmforge.api as api

    parser = build_parser()
    ns = parser.parse_args(normalize_argv(argv))
    verb = ns.verb
    args = ns[verb]
    if verb == "prepare":
        meta = api.prepare(args.data, args.out, tokenizer=args.tokenizer, vocab_size=args.vocab_size,
                           val_fraction=args.val_fraction, seed=args.seed, text_field=args.text_field,
                           column=args.column, clean=args.clean, overwrite=args.overwrite,
                           extra_ids=args.extra_ids)
        print(f"wrote {args.out}: {meta['train_tokens']:,} train / {meta['val_tokens']:,} val tokens, "
              f"vocab {meta['vocab_size']:,} ({meta['tokenizer']})")
    elif verb == "pretrain":
        sections = parser.instantiate(ns)[verb]
        summary = api.pretrain(sections.data, sections.model, out=args.out, train=sections.train,
                               objective=args.objective, resume=args.resume, init_from=args.init_from)
        if summary.get("val_loss") is not None:
            ppl = f", val ppl {summary['val_ppl']:.2f}" if summary.get("val_ppl") is not None else ""
            print(f"done: {summary['steps']} steps, val loss {summary['val_loss']:.4f}{ppl} -> {args.out}")
    elif verb == "finetune":
        sections = parser.instantiate(ns)[verb]
        summary = api.finetune(args.task, data=sections.data, model=sections.model, method=sections.method,
                               train=sections.train, balance=sections.balance, augment=sections.augment,
                               decode=sections.decode, out=args.out, resume=args.resume)
        metric = summary.get("main_metric")
        shown = f", {metric} {summary[metric]:.4f}" if summary.get(metric) is not None else ""
        print(f"done: {summary['steps']} steps, val loss {summary.get('val_loss') or float('nan'):.4f}{shown} "
              f"-> {args.out}")
    elif verb == "predict":
        count = api.predict(args.model, args.input, output=args.output, format=args.format,
                            batch_size=args.batch_size, device=args.device)
        if args.output != "-":
            print(f"wrote {count} predictions to {args.output}", file=sys.stderr)
    elif verb == "generate":
        from dataclasses import replace

        from lmforge.infer.generate import stream_text

        params = _params(_sampling_from(args))
        prompts = [args.prompt] if isinstance(args.prompt, str) else list(args.prompt)
        model, tokenizer = api.load(args.model, device=args.device)
        if args.compile:
            from lmforge.infer.compiled import check_compilable

            check_compilable(model)  # before anything is printed
        if args.no_stream:
            for prompt, samples in zip(prompts, api.generate(model, prompts, tokenizer=tokenizer, compile=args.compile,
                                                             **params.__dict__)):
                for text in samples:
                    print(prompt + text)
        else:
            # One sample at a time, each with its own seed, so every sample streams as it is produced.
            for prompt in prompts:
                for i in range(params.num_samples):
                    seed = None if params.seed is None else params.seed + i
                    sys.stdout.write(prompt)
                    stream_text(model, tokenizer, prompt, replace(params, num_samples=1, seed=seed),
                                compile=args.compile)
                    sys.stdout.write("\n")
    elif verb == "chat":
        from lmforge.infer.chat import chat_loop

        model, tokenizer = api.load(args.model, device=args.device)
        chat_loop(model, tokenizer, _params(_sampling_from(args)), system=args.system)
    elif verb == "serve":
        keys = args.api_key or [k for k in os.environ.get("LMFORGE_API_KEYS", "").split(",") if k.strip()]
        api.serve(args.model, host=args.host, port=args.port, api_keys=[k.strip() for k in keys],
                  task_models=_task_models(args.task_model), max_slots=args.max_slots, log_level=args.log_level,
                  max_num_batched_tokens=args.max_num_batched_tokens, max_prompt_tokens=args.max_prompt_tokens,
                  max_tokens_limit=args.max_tokens_limit, max_body_bytes=args.max_body_bytes,
                  max_concurrent=args.max_concurrent, request_timeout=args.request_timeout,
                  model_name=args.model_name, dtype=args.dtype, device=args.device)
    elif verb == "demo":
        api.demo(args.out, max_seconds=args.max_seconds)
    elif verb == "compare":
        from pathlib import Path

        api.compare(args.data, args.budget_seconds, args.out, models=args.models, tokenizer=args.tokenizer,
                    vocab_size=args.vocab_size, clean=args.clean, dropout=args.dropout, device=args.device,
                    overwrite=args.overwrite)
        print((Path(args.out) / "compare.md").read_text())
    elif verb == "convert":
        from lmforge.interop.hf import describe

        print(describe(api.convert(args.src, args.dst, to=args.to, overwrite=args.overwrite)))
    elif verb == "presets":
        from lmforge.models.gpt import count_parameters
        from lmforge.models.registry import PRESETS, build_model

        for name in sorted(PRESETS):
            n = count_parameters(build_model(name, device="meta"))
            print(f"{name:14s} {n / 1e6:10.1f}M parameters")
    elif verb == "eval":
        import json

        q = args.perplexity
        result = api.evaluate_perplexity(q.model, q.data, stride=q.stride, batch_size=q.batch_size, device=q.device)
        print(json.dumps(result))
    return 0


def _task_models(pairs: list[str]) -> dict[str, str]:
    from lmforge.errors import ConfigError

    out = {}
    for pair in pairs or []:
        name, eq, run_dir = pair.partition("=")
        if not eq or not name.strip() or not run_dir.strip():
            raise ConfigError(f"--task_model {pair!r} is not NAME=RUN",
                              "pass e.g. --task_model classify=runs/sentiment")
        out[name.strip()] = run_dir.strip()
    return out


def _sampling_from(args) -> dict:
    from lmforge.infer.sampling import SamplingParams

    return {f.name: args[f.name] for f in fields(SamplingParams)}


def _params(sampling: dict):
    from lmforge.infer.sampling import SamplingParams

    return SamplingParams(**sampling)


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    debug = "--debug" in argv or os.environ.get("LMFORGE_DEBUG") == "1"
    try:
        code = run(argv)
    except LmforgeError as e:
        if debug:
            raise
        print(f"error: {e}", file=sys.stderr)
        code = 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        code = 130
    except Exception as e:
        if debug:
            raise
        from argparse import ArgumentError

        if isinstance(e, ArgumentError) or type(e).__name__ in ("ArgumentError", "ParserError"):
            message = " ".join(str(e).split())
            print(f"error: {message} — see `lmforge {_verb(argv)}--help`", file=sys.stderr)
            code = 2
        else:
            raise
    sys.exit(code)


def _verb(argv: list[str]) -> str:
    words = [a for a in argv if not a.startswith("-")][:1]
    return f"{words[0]} " if words else ""


if __name__ == "__main__":
    main()
