"""`lmforge <verb> [--config recipe.yaml] [--section.key value ...]`: parsing only, the work is in lmforge.api.

Errors a user can fix print `error: <what> — <how to fix>` on one line and exit with status 2
(pass --debug for the traceback).
"""
from __future__ import annotations

import json
import os
import sys
from argparse import ArgumentError
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Callable

from jsonargparse import ArgumentParser

import lmforge.api as api
from lmforge.cli import parsers, prompt_parsers
from lmforge.cli.hints import check_config_paths, option_hint
from lmforge.config import field_names
from lmforge.errors import ConfigError, LmforgeError
from lmforge.infer.sampling import SamplingParams
from lmforge.runs.federate import FederateConfig
from lmforge.train.plan import describe_plan

# A bare `--data X` / `--model X` names the section's main field (`--data.path X`, `--model.preset X`).
SECTION_SHORTHANDS = {"pretrain": {"--data": "--data.path", "--model": "--model.preset"},
                      "finetune": {"--data": "--data.train", "--model": "--model.init"},
                      "federate": {"--data": "--data.train", "--model": "--model.init"}}




def build_parser() -> ArgumentParser:
    root = ArgumentParser(prog="lmforge", description=__doc__.splitlines()[0], exit_on_error=False,
                          allow_abbrev=False)
    root.add_argument("--debug", action="store_true", help="show tracebacks for errors")
    verbs = root.add_subcommands(dest="verb", required=True)
    for name, verb in VERBS.items():
        p = verb.parser()
        verbs.add_subcommand(name, p, help=verb.help)
        if verb.subcommands is not None:
            verb.subcommands(p)
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


def _prepare(args, sections) -> None:
    meta = api.prepare(args.data, args.out, tokenizer=args.tokenizer, vocab_size=args.vocab_size,
                       val_fraction=args.val_fraction, seed=args.seed, text_field=args.text_field,
                       column=args.column, clean=args.clean, overwrite=args.overwrite, extra_ids=args.extra_ids)
    print(f"wrote {args.out}: {meta['train_tokens']:,} train / {meta['val_tokens']:,} val tokens, "
          f"vocab {meta['vocab_size']:,} ({meta['tokenizer']})")


def _pretrain(args, sections) -> None:
    summary = api.pretrain(sections.data, sections.model, out=args.out, train=sections.train,
                           objective=args.objective, resume=args.resume, init_from=args.init_from,
                           privacy=sections.privacy)
    if summary.get("val_loss") is not None:
        ppl = f", val ppl {summary['val_ppl']:.2f}" if summary.get("val_ppl") is not None else ""
        print(f"done: {summary['steps']} steps, val loss {summary['val_loss']:.4f}{ppl} -> {args.out}")


def _finetune(args, sections) -> None:
    summary = api.finetune(args.task, data=sections.data, model=sections.model, method=sections.method,
                           train=sections.train, balance=sections.balance, augment=sections.augment,
                           decode=sections.decode, out=args.out, resume=args.resume, privacy=sections.privacy)
    metric = summary.get("main_metric")
    shown = f", {metric} {summary[metric]:.4f}" if summary.get(metric) is not None else ""
    print(f"done: {summary['steps']} steps, val loss {summary.get('val_loss') or float('nan'):.4f}{shown} "
          f"-> {args.out}")


def _federate(args, sections) -> None:
    federation = FederateConfig(**{name: args[name] for name in field_names(FederateConfig)})
    summary = api.federate(args.task, data=sections.data, model=sections.model, federation=federation,
                           method=sections.method, train=sections.train, balance=sections.balance,
                           augment=sections.augment, decode=sections.decode, out=args.out,
                           privacy=sections.privacy)
    metric = summary.get("main_metric")
    shown = f", {metric} {summary[metric]:.4f}" if summary.get(metric) is not None else ""
    failed = f", clients lost: {', '.join(map(str, summary['failed_clients']))}" if summary["failed_clients"] else ""
    private = f", epsilon {summary['epsilon']:.2f} (largest over the clients)" if "epsilon" in summary else ""
    print(f"done: {summary['rounds_completed']} rounds{shown}{private}{failed} -> {args.out}")


def _predict(args, sections) -> None:
    count = api.predict(args.model, args.input, output=args.output, format=args.format,
                        batch_size=args.batch_size, device=args.device)
    if args.output != "-":
        print(f"wrote {count} predictions to {args.output}", file=sys.stderr)


def _generate(args, sections) -> None:
    sampling = _sampling_from(args)
    prompts = [args.prompt] if isinstance(args.prompt, str) else list(args.prompt)
    model, tokenizer = api.load(args.model, device=args.device)
    if not (args.no_stream or args.json):
        api.stream(model, tokenizer, prompts, compile=args.compile, **sampling)
        return
    results = api.generate(model, prompts, tokenizer=tokenizer, compile=args.compile, **sampling)
    if args.json:
        for prompt, samples in zip(prompts, results):
            print(json.dumps({"prompt": prompt, "samples": samples}, ensure_ascii=False))
        return
    texts = [prompt + text for prompt, samples in zip(prompts, results) for text in samples]
    for i, text in enumerate(texts, 1):
        print(f"[{i}/{len(texts)}] {text}" if len(texts) > 1 else text)


def _chat(args, sections) -> None:
    api.chat(args.model, system=args.system, device=args.device, **_sampling_from(args))


def _serve(args, sections) -> None:
    keys = args.api_key or [k for k in os.environ.get("LMFORGE_API_KEYS", "").split(",") if k.strip()]
    api.serve(args.model, host=args.host, port=args.port, api_keys=[k.strip() for k in keys],
              task_models=_task_models(args.task_model), max_slots=args.max_slots, log_level=args.log_level,
              max_num_batched_tokens=args.max_num_batched_tokens, max_prompt_tokens=args.max_prompt_tokens,
              max_tokens_limit=args.max_tokens_limit, max_body_bytes=args.max_body_bytes,
              max_concurrent=args.max_concurrent, request_timeout=args.request_timeout,
              model_name=args.model_name, dtype=args.dtype, device=args.device, max_logprobs=args.max_logprobs)


def _demo(args, sections) -> None:
    api.demo(args.out, max_seconds=args.max_seconds)


def _compare(args, sections) -> None:
    api.compare(args.data, args.budget_seconds, args.out, models=args.models, tokenizer=args.tokenizer,
                vocab_size=args.vocab_size, clean=args.clean, dropout=args.dropout, device=args.device,
                overwrite=args.overwrite)
    print((Path(args.out) / "compare.md").read_text())


def _convert(args, sections) -> None:
    print(api.describe_conversion(api.convert(args.src, args.dst, to=args.to, overwrite=args.overwrite)))


def _quantize(args, sections) -> None:
    summary = api.quantize(args.run, args.out, method=args.method, overwrite=args.overwrite,
                           group_size=args.group_size, calibration=args.calibration)
    before, after = summary["weight_bytes_before"] / 1e6, summary["weight_bytes_after"] / 1e6
    print(f"quantized {summary['quantized_layers']} linear layers to {args.method}: weights {before:,.1f} MB -> "
          f"{after:,.1f} MB -> {args.out}")


def _prune(args, sections) -> None:
    summary = api.prune(args.run, args.out, method=args.method, sparsity=args.sparsity, importance=args.importance,
                        recover_steps=args.recover_steps, overwrite=args.overwrite, whiten=args.whiten,
                        calibration=args.calibration)
    before, after = summary["before"]["parameters"], summary["after"]["parameters"]
    recovered = summary.get("recovered")
    tail = f", {recovered['main_metric']} {recovered['value']:.4f} after {summary['recover_steps']} recovery steps" \
        if recovered and recovered.get("value") is not None else ""
    print(f"pruned ({args.method}): {before:,} -> {after:,} parameters "
          f"({summary['removed_fraction']['block_parameters']:.0%} of the blocks'){tail} -> {args.out}")


def _distill(args, sections) -> None:
    data = sections.data if sections.data.train else None  # without a recipe: the teacher's own data
    summary = api.distill(args.teacher, args.out, student=args.student, distill=sections.distill, data=data,
                          train=sections.train, method=sections.method, overwrite=args.overwrite)
    metric, record = summary.get("main_metric"), summary["distillation"]
    teacher = f" (teacher {record['teacher_metric']:.4f})" if record.get("teacher_metric") is not None else ""
    shown = f"{metric} {summary[metric]:.4f}{teacher}, " if summary.get(metric) is not None else ""
    print(f"distilled: {shown}{record['student_parameters']:,} parameters "
          f"(teacher {record['teacher_parameters']:,}) -> {args.out}")


def _compress(args, sections) -> None:
    q = args.report
    report = api.compress_report(q.runs, q.out, data=q.data, seq_len=q.seq_len, repeats=q.repeats,
                                 overwrite=q.overwrite)
    print(report["markdown"])
    print(f"-> {Path(q.out) / 'report.md'}, report.json, report.png")


def _export(args, sections) -> None:
    record = api.export(args.run, args.out, format=args.format, overwrite=args.overwrite)
    print(f"exported {record['kind']} graph (ONNX opset {record['opset']}) -> {Path(args.out) / 'model.onnx'}")


def _presets(args, sections) -> None:
    for name, n in api.presets().items():
        print(f"{name:14s} {n / 1e6:10.1f}M parameters")


def _plan(args, sections) -> None:
    options = {name: args[name] for name in ("gpus", "gpu", "gpu_memory", "seq_len", "micro_batch",
                                             "global_batch_tokens", "tokens", "precision", "parallel",
                                             "activation_checkpointing", "reshard_after_forward", "mfu",
                                             "peak_tflops")}
    result = api.plan(args.model, **options)
    print(json.dumps(result) if args.json else describe_plan(result))


def _eval(args, sections) -> None:
    if args.metric == "harness":
        _eval_harness(args.harness)
        return
    q = args.perplexity
    result = api.evaluate_perplexity(q.model, q.data, stride=q.stride, batch_size=q.batch_size, device=q.device)
    print(json.dumps(result))


def _eval_harness(h) -> None:
    results = api.evaluate_harness(h.model, h.tasks, include_path=h.include_path, num_fewshot=h.num_fewshot,
                                   limit=h.limit, batch_size=h.batch_size, device=h.device)
    from lm_eval.utils import make_table  # lm-eval's own table (the evaluation above needed lm-eval too)

    print(make_table(results))
    print(f"wrote {results['results_path']}")


def _prompt(args, sections) -> None:
    p = args[args.command]
    if args.command == "report":
        api.prompt_report([r for r in str(p.runs).split(",") if r.strip()], out=p.out)
        print((Path(p.out) / "prompt_vs_finetune.md").read_text())
        return
    shots = [int(k) for k in str(p.shots).split(",") if k.strip()]
    common = dict(data=p.data, train=p.train, template=p.template, val_fraction=p.val_fraction, shots=shots,
                  seeds=p.seeds, selection=p.selection, order=p.order, encoder=p.encoder, limit=p.limit,
                  reasoning_tokens=p.reasoning_tokens, out=p.out, finetuned=p.finetuned, device=p.device)
    if args.command == "generate":
        api.prompt_generate(p.model, task=p.task, train_target=p.train_target, data_target=p.data_target,
                            max_new_tokens=p.max_new_tokens, **common)
        print((Path(p.out) / "prompt_generate.md").read_text())
        return
    api.prompt_eval(p.model, **common)
    print((Path(p.out) / "prompt_eval.md").read_text())


def _explain(args, sections) -> None:
    if args.get("action") == "eval":
        e = args.eval
        report = api.explain_eval(e.model, e.data, methods=e.method, limit=e.limit, fraction=e.fraction,
                                  steps=e.steps, seed=e.seed, output=e.output, device=e.device)
        print(json.dumps(report, indent=2))
        return
    if not args.model or not args.out:
        raise ConfigError("explain needs --model and --out", "e.g. lmforge explain --model RUN --text '...' --out DIR")
    records = api.explain(args.model, text=args.text, input=args.input, method=args.method, target=args.target,
                          out=args.out, steps=args.steps, overwrite=args.overwrite, device=args.device)
    for r in records:
        target = r["target"].get("label", r["target"].get("token"))
        print(f"{r['method']}: {target!r} p={r['probability']:.4f}  {r['text'][:60]}")
    print(f"wrote {args.out}: explanations.json, attention.json, viewer.html, plots/")


@dataclass(frozen=True)
class Verb:
    parser: Callable[[], ArgumentParser]
    run: Callable      # (the verb's parsed arguments, its instantiated config sections) -> None
    help: str
    subcommands: Callable[[ArgumentParser], None] | None = None


VERBS: dict[str, Verb] = {
    "prepare": Verb(parsers.prepare_parser, _prepare, "prepare a dataset"),
    "pretrain": Verb(parsers.pretrain_parser, _pretrain, "pretrain a model"),
    "finetune": Verb(parsers.finetune_parser, _finetune, "fine-tune for an application"),
    "federate": Verb(parsers.federate_parser, _federate, "fine-tune across clients that keep their data (Flower)"),
    "predict": Verb(parsers.predict_parser, _predict, "predict with a fine-tuned model"),
    "generate": Verb(parsers.generate_parser, _generate, "sample continuations of prompts"),
    "chat": Verb(parsers.chat_parser, _chat, "interactive chat loop"),
    "serve": Verb(parsers.serve_parser, _serve, "serve a model over HTTP (OpenAI-compatible API and playground)"),
    "demo": Verb(parsers.demo_parser, _demo, "prepare -> pretrain -> perplexity -> samples"),
    "compare": Verb(parsers.compare_parser, _compare, "compare model families at equal training time"),
    "convert": Verb(parsers.convert_parser, _convert, "convert to or from Hugging Face transformers"),
    "quantize": Verb(parsers.quantize_parser, _quantize, "quantize a run's weights (int8, int4) into a new run"),
    "prune": Verb(parsers.prune_parser, _prune, "prune a run's heads and neurons (or smallest weights) into a new run"),
    "distill": Verb(parsers.distill_parser, _distill, "train a smaller student from a fine-tuned teacher"),
    "compress": Verb(parsers.compress_parser, _compress, "compare compressed runs with their original",
                     parsers.compress_reports),
    "export": Verb(parsers.export_parser, _export, "export a run's model to ONNX for onnxruntime"),
    "presets": Verb(parsers.presets_parser, _presets, "list model presets"),
    "eval": Verb(parsers.eval_parser, _eval, "evaluate a model", parsers.eval_metrics),
    "prompt": Verb(prompt_parsers.prompt_parser, _prompt, "classify and generate by prompting a decoder",
                   prompt_parsers.prompt_commands),
    "explain": Verb(parsers.explain_parser, _explain, "explain a run's outputs: attributions, attention, viewer",
                    parsers.explain_actions),
    "plan": Verb(parsers.plan_parser, _plan, "plan a training run: memory per GPU, throughput, GPU-hours"),
}


def run(argv: list[str]) -> int:
    check_config_paths(argv)
    parser = build_parser()
    ns = parser.parse_args(normalize_argv(argv))
    sections = parser.instantiate(ns)[ns.verb] if ns.verb in ("pretrain", "finetune", "distill", "federate") else None
    VERBS[ns.verb].run(ns[ns.verb], sections)
    return 0


def _task_models(pairs: list[str]) -> dict[str, str]:
    out = {}
    for pair in pairs or []:
        name, eq, run_dir = pair.partition("=")
        if not eq or not name.strip() or not run_dir.strip():
            raise ConfigError(f"--task_model {pair!r} is not NAME=RUN",
                              "pass e.g. --task_model classify=runs/sentiment")
        out[name.strip()] = run_dir.strip()
    return out


def _sampling_from(args) -> dict:
    """The sampling options of a verb, checked now: a bad value is reported before a model is loaded."""
    sampling = {f.name: args[f.name] for f in fields(SamplingParams)}
    SamplingParams(**sampling)
    return sampling


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
        if isinstance(e, ArgumentError) or type(e).__name__ in ("ArgumentError", "ParserError"):
            message = " ".join(str(e).split())
            hint = option_hint(message, _verb_parser(argv))
            print(f"error: {message}{hint} — see `lmforge {_verb(argv)}--help`", file=sys.stderr)
            code = 2
        else:
            raise
    sys.exit(code)


def _verb_parser(argv: list[str]):
    words = [a for a in argv if not a.startswith("-")][:1]
    return VERBS[words[0]].parser() if words and words[0] in VERBS else None


def _verb(argv: list[str]) -> str:
    words = [a for a in argv if not a.startswith("-")][:1]
    return f"{words[0]} " if words else ""
