"""The argument parser of each `lmforge` verb: one function per verb, options in the order `--help` lists them."""
from __future__ import annotations

from dataclasses import fields
from typing import get_type_hints

from jsonargparse import ActionConfigFile, ArgumentParser

from lmforge.compress import METHODS as QUANTIZATION_METHODS
from lmforge.compress.prune import IMPORTANCE as PRUNE_IMPORTANCE, PRUNE_METHODS
from lmforge.config import (AugmentConfig, BalanceConfig, DataConfig, DecodeConfig, DistillConfig, MethodConfig,
                            ModelSpec, PrivacyConfig, StartConfig, TaskDataConfig, TrainConfig)
from lmforge.infer.sampling import SamplingParams
from lmforge.runs.compare import DEFAULT_MODELS
from lmforge.runs.federate import FederateConfig


def verb_parser(description: str) -> ArgumentParser:
    # No abbreviations: `--max_new_token` must not quietly mean `--max_new_tokens`, which a later option could
    # change; a typo gets the closest real option instead (see lmforge.cli.hints).
    return ArgumentParser(description=description, exit_on_error=False, env_prefix="LMFORGE", default_env=False,
                          allow_abbrev=False)


def dataclass_arguments(p: ArgumentParser, cls) -> None:
    hints, defaults = get_type_hints(cls), cls()
    for f in fields(cls):
        p.add_argument(f"--{f.name}", type=hints[f.name], default=getattr(defaults, f.name))


def fine_tuning_sections(p: ArgumentParser) -> None:
    for cls, name in ((TaskDataConfig, "data"), (StartConfig, "model"), (MethodConfig, "method"), (TrainConfig, "train"),
                      (BalanceConfig, "balance"), (AugmentConfig, "augment"), (DecodeConfig, "decode")):
        p.add_class_arguments(cls, name)
    p.add_argument("--out", required=True, help="run directory to create")


def prepare_parser() -> ArgumentParser:
    p = verb_parser("Clean a corpus, train a tokenizer and write memmap token shards.")
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
    return p


def pretrain_parser() -> ArgumentParser:
    p = verb_parser("Train a language model from scratch; writes a run directory.")
    p.add_argument("--config", action=ActionConfigFile, help="YAML recipe (see configs/)")
    p.add_class_arguments(DataConfig, "data")
    p.add_class_arguments(ModelSpec, "model")
    p.add_class_arguments(TrainConfig, "train")
    p.add_class_arguments(PrivacyConfig, "privacy")
    p.add_argument("--objective", type=str | None, default=None,
                   help="training objective (default: the model family's own: clm for GPT, mlm for BERT; "
                        "BERT also takes mlm+nsp and mlm+sop)")
    p.add_argument("--out", required=True, help="run directory to create")
    p.add_argument("--resume", action="store_true", help="continue the run in --out from its latest checkpoint")
    p.add_argument("--init_from", type=str | None, default=None,
                   help="start from this run's (or Hugging Face folder's) weights, config and tokenizer instead "
                        "of a fresh --model preset (continued / domain-adaptive pretraining)")
    return p


def finetune_parser() -> ArgumentParser:
    p = verb_parser("Fine-tune a model for an application task (classify, ner, qa, translate, summarize, chat); "
                "writes a run directory whose summary.json holds the validation metrics.")
    p.add_argument("--config", action=ActionConfigFile, help="YAML recipe (see configs/finetune/)")
    p.add_argument("--task", required=True, help="classify, ner, qa, translate, summarize or chat")
    p.add_class_arguments(PrivacyConfig, "privacy")
    fine_tuning_sections(p)
    p.add_argument("--resume", action="store_true", help="continue the run in --out from its latest checkpoint")
    return p


def distill_parser() -> ArgumentParser:
    p = verb_parser("Distill a fine-tuned classifier or tagger, or a language model (the teacher), into a smaller "
                    "student: the student learns from the hard labels (next tokens) and from the teacher's "
                    "temperature-softened predictions.")
    p.add_argument("--config", action=ActionConfigFile, help="YAML recipe, e.g. the teacher's (configs/finetune/)")
    p.add_argument("--teacher", required=True, help="fine-tuned run directory to learn from")
    p.add_argument("--student", default="half",
                   help="half (the teacher's every other layer), layer numbers such as 0,2,4, a run directory with "
                        "the teacher's tokenizer, or a preset name (a fresh model)")
    p.add_argument("--task", default=None, help="ignored: the teacher's task (accepted so recipes can be reused)")
    p.add_class_arguments(DistillConfig, "distill")
    fine_tuning_sections(p)
    p.add_argument("--overwrite", action="store_true", help="replace a non-empty --out")
    return p


def federate_parser() -> ArgumentParser:
    p = verb_parser("Fine-tune across clients that keep their data (federated learning with Flower, see FederateConfig).")
    p.add_argument("--config", action=ActionConfigFile, help="YAML fine-tuning recipe (see configs/finetune/)")
    p.add_argument("--task", required=True, help="classify, ner, qa, translate, summarize or chat")
    dataclass_arguments(p, FederateConfig)
    p.add_class_arguments(PrivacyConfig, "privacy")
    fine_tuning_sections(p)
    return p


def predict_parser() -> ArgumentParser:
    p = verb_parser("Apply a fine-tuned run to examples; writes one JSON object per example, in input order.")
    p.add_argument("--model", required=True, help="run directory written by `lmforge finetune`")
    p.add_argument("--input", required=True, help="file in any format the task reads, or - for standard input")
    p.add_argument("--format", default=None, help="input format (default: the run's own, else detected)")
    p.add_argument("--target", default=None, help="parallel text: ignored target file (accepted for symmetry)")
    p.add_argument("--output", default="-", help="JSONL file to write (- for standard output)")
    p.add_argument("--batch_size", type=int, default=32)
    p.add_argument("--device", default="auto", help="cpu, cuda, cuda:N, or auto (a GPU when present)")
    return p


def generate_parser() -> ArgumentParser:
    p = verb_parser("Generate text from a trained run.")
    p.add_argument("--model", required=True, help="run directory")
    p.add_argument("--prompt", type=list[str] | str, default=[""], help="a prompt, or a JSON list of prompts")
    p.add_argument("--no_stream", action="store_true",
                   help="print whole samples instead of streaming tokens, numbered [i/n] when there are several")
    p.add_argument("--json", action="store_true",
                   help='print one JSON object per prompt: {"prompt": ..., "samples": [...]}')
    p.add_argument("--device", default="auto", help="cpu, cuda, cuda:N, or auto (a GPU when present)")
    p.add_argument("--compile", action="store_true",
                   help="CPU, GPT family: compile the decode step into one graph first (tens of seconds), "
                        "then decode about 2.5x faster; pays off for long or many generations")
    dataclass_arguments(p, SamplingParams)
    return p


def chat_parser() -> ArgumentParser:
    p = verb_parser("Chat interactively with a trained run.")
    p.add_argument("--model", required=True, help="run directory")
    p.add_argument("--system", type=str | None, default=None)
    p.add_argument("--device", default="auto", help="cpu, cuda, cuda:N, or auto (a GPU when present)")
    dataclass_arguments(p, SamplingParams)
    return p


def serve_parser() -> ArgumentParser:
    p = verb_parser("Serve a trained run over HTTP: OpenAI-compatible /v1/completions and /v1/chat/completions, "
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
    p.add_argument("--max_logprobs", type=int, default=20,
                   help="most alternatives per scored token a request may ask for (logprobs, top_logprobs)")
    p.add_argument("--model_name", type=str | None, default=None,
                   help="model id clients pass (default: the run directory's name)")
    p.add_argument("--log_level", default="info", choices=["critical", "error", "warning", "info", "debug"])
    return p


def demo_parser() -> ArgumentParser:
    p = verb_parser("Run the built-in end-to-end demo (no network, CPU, a few minutes).")
    p.add_argument("--out", default="runs/demo")
    p.add_argument("--max_seconds", type=float, default=150.0, help="training time budget")
    return p


def compare_parser() -> ArgumentParser:
    p = verb_parser("Train several models for the same wall-clock time on one dataset; compare validation bits per "
                "character (writes OUT/compare.md, .json, .png).")
    p.add_argument("--data", required=True, help="file, folder, built-in corpus, or prepared dataset directory")
    p.add_argument("--budget_seconds", type=float, required=True, help="training time per model")
    p.add_argument("--out", required=True)
    p.add_argument("--models", default=",".join(DEFAULT_MODELS), help="comma-separated model presets")
    p.add_argument("--tokenizer", default="char", choices=["bpe", "wordpiece", "unigram", "char"])
    p.add_argument("--vocab_size", type=int, default=8192, help="for bpe/wordpiece/unigram tokenizers")
    p.add_argument("--clean", type=bool, default=False, help="normalise the text first (default: keep it as is)")
    p.add_argument("--dropout", type=float, default=0.0, help="dropout for every neural model alike")
    p.add_argument("--device", default="auto")
    p.add_argument("--overwrite", action="store_true", help="replace earlier runs in --out")
    return p


def convert_parser() -> ArgumentParser:
    p = verb_parser("Convert a model between an lmforge run/model directory and a Hugging Face transformers folder "
                "(GPT-2, Llama, BERT, T5).")
    p.add_argument("src", help="lmforge run directory (--to hf) or Hugging Face model folder (--to lmforge)")
    p.add_argument("dst", help="folder to create; written whole or not at all")
    p.add_argument("--to", default="hf", choices=["hf", "lmforge"], help="layout to write")
    p.add_argument("--overwrite", action="store_true", help="replace a non-empty destination")
    return p


def presets_parser() -> ArgumentParser:
    p = verb_parser("List the model presets.")
    return p


def quantize_parser() -> ArgumentParser:
    p = verb_parser("Quantize a run's linear layers (int8: one scale per output channel; dynamic-int8: the same "
                    "weights times activations quantized to int8 as it runs, fastest for encoders on x86; int4: a "
                    "scale and zero point per group of input columns) into a new run directory that generate, chat, "
                    "predict, serve and eval read like any run.")
    p.add_argument("run", help="run directory to quantize")
    p.add_argument("--method", default="int8", choices=list(QUANTIZATION_METHODS), help="quantization method")
    p.add_argument("--group_size", type=int | None, default=None,
                   help="int4: input columns sharing a scale, 32, 64, 128 or 256 (default 128)")
    p.add_argument("--calibration", default=None,
                   help="int4: a text file to calibrate on (activation-aware scales; language-model runs)")
    p.add_argument("--out", required=True, help="run directory to create; written whole or not at all")
    p.add_argument("--overwrite", action="store_true", help="replace a non-empty --out")
    return p


def prune_parser() -> ArgumentParser:
    p = verb_parser("Prune a run into a new run directory: structured pruning removes attention heads and MLP "
                    "neurons (smaller tensors, a smaller and faster model); lowrank factorises the blocks' linear "
                    "layers (whitened by their inputs, or plain SVD); magnitude pruning zeroes the smallest "
                    "weights (for comparison: no faster on dense kernels).")
    p.add_argument("run", help="run directory to prune (a fine-tuned or pretrained BERT, GPT or Llama run)")
    p.add_argument("--method", default="structured", choices=list(PRUNE_METHODS), help="pruning method")
    p.add_argument("--sparsity", type=float, default=0.3,
                   help="fraction of each layer's heads and MLP neurons (structured) or of the blocks' weights "
                        "(magnitude, lowrank) to remove, between 0 and 1")
    p.add_argument("--importance", default="magnitude", choices=list(PRUNE_IMPORTANCE),
                   help="structured: rank units by their weights' magnitude, or by a first-order (Taylor) estimate "
                        "of the loss change on the run's training data (fine-tuned runs)")
    p.add_argument("--whiten", type=bool, default=True,
                   help="lowrank: weight the factorisation by the layers' inputs on calibration data (false: plain "
                        "SVD)")
    p.add_argument("--calibration", type=str | None, default=None,
                   help="lowrank on a language model: a text file to whiten with (fine-tuned runs use their own "
                        "training examples)")
    p.add_argument("--recover_steps", type=int, default=0,
                   help="fine-tune the pruned model this many steps on the run's own recipe (fine-tuned runs)")
    p.add_argument("--out", required=True, help="run directory to create; written whole or not at all")
    p.add_argument("--overwrite", action="store_true", help="replace a non-empty --out")
    return p


def export_parser() -> ArgumentParser:
    p = verb_parser("Export a run's model to ONNX, to run in onnxruntime.")
    p.add_argument("run", help="run directory to export: a fine-tuned encoder classifier, or a GPT/Llama language "
                               "model (one decoding step, its key/value cache as graph inputs and outputs)")
    p.add_argument("--format", default="onnx", choices=["onnx"],
                   help="format to write: onnx (model.onnx, the run's tokenizer and configs, export.json)")
    p.add_argument("--out", required=True, help="folder to create; written whole or not at all")
    p.add_argument("--overwrite", action="store_true", help="replace a non-empty --out")
    return p


def compress_parser() -> ArgumentParser:
    return verb_parser("Reports on compressed runs.")


def compress_reports(p: ArgumentParser) -> None:
    kinds = p.add_subcommands(dest="report_kind", required=True)
    q = verb_parser("Compressed variants beside their original: size, parameters, CPU latency at batch 1 and 8, "
                    "throughput, and quality (task metric, or perplexity) with agreement against the original.")
    q.add_argument("runs", nargs="+", help="the original run directory first, then its variants")
    q.add_argument("--out", required=True, help="folder for report.md, report.json and report.png")
    q.add_argument("--data", default=None, help="language models: a text file to score")
    q.add_argument("--seq_len", type=int, default=128, help="tokens per sequence in the latency runs")
    q.add_argument("--repeats", type=int, default=20, help="timed calls per figure (the median is reported)")
    q.add_argument("--overwrite", action="store_true", help="replace a non-empty --out")
    kinds.add_subcommand("report", q, help="size, latency and quality of compressed runs")


def eval_parser() -> ArgumentParser:
    return verb_parser("Evaluate a trained run.")


def eval_metrics(p: ArgumentParser) -> None:
    # jsonargparse takes a verb's own subcommands only once the verb is attached to the root parser.
    kinds = p.add_subcommands(dest="metric", required=True)
    q = verb_parser("Perplexity and bits per byte on a text file or a prepared dataset's validation split.")
    q.add_argument("--model", required=True, help="run directory")
    q.add_argument("--data", required=True, help="text file or prepared dataset directory")
    q.add_argument("--stride", type=int | None, default=None, help="sliding-window stride (default: half the context)")
    q.add_argument("--batch_size", type=int, default=8)
    q.add_argument("--device", default="auto", help="cpu, cuda, cuda:N, or auto (a GPU when present)")
    kinds.add_subcommand("perplexity", q, help="perplexity / bits per byte")
    kinds.add_subcommand("harness", harness_parser(), help="lm-evaluation-harness tasks, in process")


def harness_parser() -> ArgumentParser:
    h = verb_parser("lm-evaluation-harness tasks on a run's decoder, in process; writes lm-eval's results JSON "
                    "into RUN/lm_eval/.")
    h.add_argument("--model", required=True, help="run directory of a decoder (GPT-family) model")
    h.add_argument("--tasks", required=True, help="comma-separated lm-eval task names")
    h.add_argument("--include_path", type=str | None, default=None, help="folder of extra task YAMLs")
    h.add_argument("--num_fewshot", type=int | None, default=None, help="examples in each prompt (default: the "
                                                                          "task's own)")
    h.add_argument("--limit", type=float | None, default=None,
                   help="examples per task: a count, or a fraction below 1")
    h.add_argument("--batch_size", type=int, default=16)
    h.add_argument("--device", default="auto", help="cpu, cuda, cuda:N, or auto (a GPU when present)")
    return h


def explain_parser() -> ArgumentParser:
    p = verb_parser("Explain a run's output for a text: token attributions (attention, rollout, integrated gradients, "
                    "gradient x input) or the logit lens, written as JSON, PNG heatmaps, an HTML viewer and a bertviz "
                    "export. `lmforge explain eval` scores how faithful the attributions are on a dataset.")
    p.add_argument("--model", default=None, help="run directory: a fine-tuned classifier or tagger, or a language model")
    p.add_argument("--text", default=None, help="the text to explain")
    p.add_argument("--input", default=None, help="a file of texts to explain, one per line")
    p.add_argument("--method", default="attention", choices=["attention", "rollout", "ig", "saliency", "logit-lens"])
    p.add_argument("--target", default=None,
                   help="classifier: a LABEL (default: the predicted one); tagger: TAG or TAG@WORD_INDEX; language "
                        "model: the next TOKEN (default: the most probable)")
    p.add_argument("--steps", type=int | None, default=None,
                   help="integrated-gradients steps (default: 32, 64, ... until the completeness error is <= 1%)")
    p.add_argument("--out", default=None, help="folder to write (whole or not at all)")
    p.add_argument("--overwrite", action="store_true", help="replace a non-empty --out")
    p.add_argument("--device", default="cpu", help="cpu, cuda, cuda:N, or auto")
    return p


def explain_actions(p: ArgumentParser) -> None:
    actions = p.add_subcommands(dest="action", required=False)
    e = verb_parser("ERASER comprehensiveness and sufficiency of the top-k% tokens by each method against random "
                    "tokens, integrated gradients' completeness error, and rank correlation between methods, over a "
                    "classifier's labelled data.")
    e.add_argument("--model", required=True, help="run directory of a fine-tuned classifier")
    e.add_argument("--data", required=True, help="labelled file in the run's format (e.g. a validation split)")
    e.add_argument("--method", default="ig,rollout,attention", help="comma-separated: ig, rollout, attention")
    e.add_argument("--limit", type=int | None, default=None, help="the first N examples only")
    e.add_argument("--fraction", type=float, default=0.2, help="share of the tokens deleted or kept (k)")
    e.add_argument("--steps", type=int | None, default=None, help="integrated-gradients steps (default: adaptive)")
    e.add_argument("--seed", type=int, default=0, help="seed of the random-token comparison")
    e.add_argument("--output", default=None, help="JSON file for the report and every example's figures")
    e.add_argument("--device", default="cpu")
    actions.add_subcommand("eval", e, help="faithfulness of the attributions on a dataset")


def plan_parser() -> ArgumentParser:
    p = verb_parser("Plan a pretraining run before starting it: memory per GPU, the largest micro-batch that fits, "
                    "throughput and GPU-hours, from a decoder preset's shape.")
    p.add_argument("--model", required=True, help="GPT or Llama preset (see `lmforge presets`)")
    p.add_argument("--gpus", type=int, default=1, help="GPUs (ranks) in the run")
    p.add_argument("--gpu", default="h100", choices=["h100", "h200", "a100", "cpu"],
                   help="accelerator: its memory and peak TFLOPS (cpu: pass --gpu_memory; no throughput)")
    p.add_argument("--gpu_memory", type=float | None, default=None, help="GB per GPU (default: the accelerator's)")
    p.add_argument("--seq_len", type=int | None, default=None, help="tokens per sequence (default: the context)")
    p.add_argument("--micro_batch", type=int, default=1, help="sequences per GPU per forward pass")
    p.add_argument("--global_batch_tokens", type=int | None, default=None,
                   help="tokens per optimizer step over all GPUs (default: one micro-batch per GPU)")
    p.add_argument("--tokens", type=float | None, default=None,
                   help="training tokens in total (default: 20 per parameter)")
    p.add_argument("--precision", default=None, choices=[None, "bf16", "fp32"],
                   help="default: bf16 on GPUs, fp32 on CPU")
    p.add_argument("--parallel", default="ddp", choices=["ddp", "fsdp"])
    p.add_argument("--activation_checkpointing", default="none", choices=["none", "full", "selective"])
    p.add_argument("--reshard_after_forward", type=bool, default=True, help="FSDP: free gathered blocks after forward")
    p.add_argument("--mfu", type=float, default=0.4, help="model FLOPs utilisation to expect")
    p.add_argument("--peak_tflops", type=float | None, default=None,
                   help="peak TFLOPS per device (default: the accelerator's dense bf16 / fp32 peak)")
    p.add_argument("--json", action="store_true", help="print one JSON object instead of the table")
    return p
