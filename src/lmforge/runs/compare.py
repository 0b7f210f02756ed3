"""Same data, same wall-clock budget, different model families: which predicts text best?

`compare(data, budget_seconds, out, models=...)` prepares one tokenization of `data` into
`out/data`, trains every model for `budget_seconds` of wall-clock time into `out/<model>/`
with `lmforge.api.pretrain`, and scores each on the whole validation split in bits per
character: the total negative log-likelihood of the validation tokens in nats / ln 2 / the
number of validation characters. Every model is scored on the same characters whatever its
tokenizer, and every token after the first is scored exactly once (sliding windows of the
model's context advancing by half a context, `evaluate_perplexity`).

Time as the budget: a short throughput probe (a few optimizer steps on a throwaway copy of
the model, not counted) estimates seconds per step; `max_steps` is set from it, with a 10%
warmup, and is re-estimated after every step from the measured rate, so the cosine learning
rate schedule reaches its end as the budget runs out. `max_seconds` is the hard stop. Count-
based n-gram models are fitted in one pass and are reported with their fitting time.

`dropout` applies to every neural model alike (embeddings, between layers, residual branches;
not to attention probabilities, see `_train_and_score`). At budgets of minutes these models see
a small text many times over and their training loss falls well below the validation loss.

Writes `out/compare.md` (table), `out/compare.json` and `out/compare.png` (bits per character per
model, and training loss in bits per character against seconds).
"""
from __future__ import annotations

import math
import os
import shutil
import time
from dataclasses import asdict
from pathlib import Path

import numpy as np
import torch

from lmforge.atomic import atomic_path, write_json_atomic, write_text_atomic
from lmforge.config import ModelSpec, TrainConfig
from lmforge.data.loaders import LMWindowLoader
from lmforge.data.shards import load_dataset_meta, prepare_dataset
from lmforge.device import resolve_device
from lmforge.errors import ConfigError, DataError
from lmforge.eval.perplexity import evaluate_perplexity
from lmforge.models.registry import build_model, load_model, preset_config, traits_of
from lmforge.runs.pretrain import model_config, pretrain
from lmforge.train.budget import TimeBudget
from lmforge.train.objectives import token_cross_entropy_sum
from lmforge.train.optim import build_optimizer
from lmforge.train.precision import autocast, cpu_has_native_bf16, resolve_precision
from lmforge.train.metrics_log import read_metrics

DEFAULT_MODELS = ("ngram-5", "rnn-small", "lstm-small", "gru-small", "gpt-char-small")

# Settings that train each family well in a budget of minutes on a CPU, where a run is a few hundred
# steps: gated RNNs take Adam at a high rate with tight gradient clipping (5e-3 beat 2e-3 at 30 s on
# tinyshakespeare), a plain tanh RNN a smaller rate, small transformers AdamW with weight decay.
_TRAIN = {
    # The tinyshakespeare recipe (configs/shakespeare-char.yaml): a high rate is stable with warmup and clipping.
    "gpt": dict(optimizer="adamw", lr=6e-3, betas=(0.9, 0.95), weight_decay=0.1, grad_clip=1.0, batch_size=32),
    "lstm": dict(optimizer="adam", lr=5e-3, betas=(0.9, 0.999), weight_decay=0.0, grad_clip=0.5),
    "gru": dict(optimizer="adam", lr=5e-3, betas=(0.9, 0.999), weight_decay=0.0, grad_clip=0.5),
    "rnn": dict(optimizer="adam", lr=2e-3, betas=(0.9, 0.999), weight_decay=0.0, grad_clip=0.5),
}
BATCH_SIZE = 16
# Widths of the small presets those rates were tuned on (gpt-char-small, rnn/lstm/gru-small).
_TUNED_WIDTH = {"gpt": 128, "rnn": 512, "lstm": 256, "gru": 320}
# Kinds that train in bf16 on CPUs that compute it natively: twice the steps in the budget.
_BF16_ON_CPU = {"gpt"}
_NEVER = 10**9  # an interval that is never reached: evaluate and checkpoint only at the end


def model_kind(cfg) -> str:
    """The row label and tuning key of a model: its family, or its cell for recurrent models."""
    return cfg.variant


def parse_models(models) -> list[str]:
    """Model preset names from a list or a comma-separated string; unknown names raise ConfigError."""
    names = [m.strip() for m in (models.split(",") if isinstance(models, str) else models) if m and m.strip()]
    if not names:
        raise ConfigError("no models to compare", f"pass e.g. --models {','.join(DEFAULT_MODELS)}")
    seen = []
    for name in names:
        preset_config(name)  # unknown names fail here, with a did-you-mean hint
        if name not in seen:
            seen.append(name)
    return seen


def compare(data: str, budget_seconds: float, out: str | Path, *, models=DEFAULT_MODELS, tokenizer: str = "char",
            vocab_size: int = 8192, val_fraction: float = 0.1, clean: bool = False, device: str = "auto",
            seed: int = 1337, dropout: float = 0.0, overwrite: bool = False, progress: bool = True) -> dict:
    """Train each of `models` for `budget_seconds` on `data` and compare their validation bits per character.

    `data` is anything `lmforge prepare` reads, or a prepared dataset directory. `clean=False`
    keeps the text byte for byte, so a single file splits into its first 90% / last 10%.
    Returns the JSON written to `out/compare.json`.
    """
    if not isinstance(budget_seconds, (int, float)) or not math.isfinite(budget_seconds) or budget_seconds <= 0:
        raise ConfigError(f"budget_seconds must be a positive number of seconds, got {budget_seconds}",
                          "pass e.g. --budget_seconds 60")
    if not isinstance(dropout, (int, float)) or not 0.0 <= dropout < 1.0:
        raise ConfigError(f"dropout must be in [0, 1), got {dropout}", "pass e.g. --dropout 0.2")
    names = parse_models(models)
    for name in names:
        family = preset_config(name).to_dict()["family"]
        if traits_of(family).structure != "decoder":
            raise ConfigError(f"model {name!r} is a {family} model, not a causal language model",
                              "compare n-gram, RNN/LSTM/GRU or GPT presets")
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise ConfigError(f"output path {out} is a file", "choose another --out")
    taken = [n for n in names if (out / n).exists() and any((out / n).iterdir())]
    if taken and not overwrite:
        raise ConfigError(f"{out} already holds runs of {', '.join(taken)}", "pass --overwrite or choose another --out")

    data_dir = Path(data) if (Path(data) / "meta.json").is_file() else out / "data"
    if data_dir == out / "data" and not (data_dir / "meta.json").is_file():
        prepare_dataset(data, data_dir, tokenizer=tokenizer, vocab_size=vocab_size, val_fraction=val_fraction, seed=seed,
                clean=clean, overwrite=overwrite, progress=progress)
    meta = load_dataset_meta(data_dir)
    if not meta.get("val_chars"):
        raise DataError(f"{data_dir / 'meta.json'} does not record the number of validation characters",
                        "prepare the data again with this version of lmforge")

    rows = []
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else None
    for name in names:
        run_dir = out / name
        if run_dir.exists():
            shutil.rmtree(run_dir)
        _say(progress, f"[compare] {name}: training for {budget_seconds:g} s ...")
        rows.append(_train_and_score(name, data_dir, run_dir, meta, budget_seconds, device=device, seed=seed,
                                     dropout=dropout))
        r = rows[-1]
        _say(progress, f"[compare] {name}: {r['val_bpc']:.4f} bits/char after {r['steps']} steps, "
                       f"{r['train_seconds']:.1f} s")

    result = {
        "data": str(data), "data_dir": str(data_dir), "tokenizer": meta.get("tokenizer"),
        "budget_seconds": budget_seconds, "dropout": dropout, "val_chars": meta["val_chars"],
        "val_tokens": meta["val_tokens"],
        "load_average_at_start": load, "torch_threads": torch.get_num_threads(), "models": rows,
    }
    write_json_atomic(out / "compare.json", result)
    write_text_atomic(out / "compare.md", _markdown(result))
    _plot(result, out, meta)
    return result


def _say(enabled: bool, text: str) -> None:
    if enabled:
        print(text, flush=True)


def _train_and_score(name: str, data_dir: Path, run_dir: Path, meta: dict, budget: float, *, device: str,
                     seed: int, dropout: float) -> dict:
    spec = ModelSpec(preset=name)
    preset = preset_config(name)
    counted = traits_of(preset).fitted_by_counting
    if not counted and dropout:
        # Not on a transformer's attention probabilities: that forces SDPA off its fused kernels
        # and costs ~50% more time per step, which a fixed budget pays for in fewer steps.
        attention = 0.0 if "attention_dropout" in preset.to_dict() else None
        spec = ModelSpec(preset=name, dropout=dropout, attention_dropout=attention)
    cfg = model_config(spec, meta)
    if counted:
        train = TrainConfig(progress=False, device=device, seed=seed)
        on_step = None
    else:
        settings = training_settings(cfg)
        if model_kind(cfg) in _BF16_ON_CPU and _device(device).type == "cpu" and cpu_has_native_bf16():
            settings["precision"] = "bf16"
        base = TrainConfig(schedule="cosine", min_lr_ratio=0.1, device=device, seed=seed, progress=False, **settings)
        per_step = _seconds_per_step(cfg, data_dir, meta, base)
        steps = max(10, int(budget / per_step))
        train = TrainConfig(**{**asdict(base), "max_steps": steps, "warmup_steps": min(100, max(5, steps // 10)),
                               "max_seconds": budget, "log_interval": max(1, min(10, steps // 50)),
                               "eval_interval": _NEVER, "checkpoint_interval": _NEVER, "eval_batches": 8,
                               "keep_last": 1})
        on_step = TimeBudget(budget)
    summary = pretrain(str(data_dir), spec, out=run_dir, train=train, on_step=on_step)

    model = load_model(run_dir, device=_device(device))
    val = np.memmap(data_dir / "val.bin", dtype=np.dtype(meta["dtype"]), mode="r")
    block = model.config.block_size
    scored = evaluate_perplexity(model, val, block_size=block, stride=max(1, block // 2), batch_size=16)
    nats = scored["loss"] * scored["tokens"]
    ngrams = summary.get("ngrams")
    return {
        "model": name, "family": model_kind(cfg),
        "parameters": int(summary.get("parameters") or 0), "ngrams": ngrams,
        "steps": summary["steps"], "tokens_seen": summary["tokens"],
        "train_seconds": summary.get("fit_seconds", summary["wall_seconds"]),
        "dropout": getattr(cfg, "dropout", None), "val_loss": scored["loss"],
        "val_bpc": nats / math.log(2) / meta["val_chars"],
        "stop_reason": summary.get("stop_reason"), "lr": None if counted else train.lr,
        "run_dir": str(run_dir),
    }


def training_settings(cfg) -> dict:
    """Optimizer settings for a GPT or recurrent model config: its family's (`_TRAIN`), with the rate
    scaled down for models wider than the small presets it was tuned on."""
    kind = model_kind(cfg)
    width = getattr(cfg, traits_of(cfg).width_field)
    settings = {"batch_size": BATCH_SIZE, **_TRAIN[kind]}
    settings["lr"] *= min(1.0, _TUNED_WIDTH[kind] / width)
    return settings


def _device(name: str) -> torch.device:
    return resolve_device(name)


def _seconds_per_step(cfg, data_dir: Path, meta: dict, train) -> float:
    """Seconds per optimizer step of a throwaway copy of the model, measured over a few steps."""
    device = _device(train.device)
    model = build_model(cfg).to(device)
    optimizer = build_optimizer(model, train, device_type=device.type)
    tokens = np.memmap(data_dir / "train.bin", dtype=np.dtype(meta["dtype"]), mode="r")
    loader = LMWindowLoader(tokens, cfg.block_size, train.batch_size, seed=train.seed)
    times = []
    while len(times) < 8 and sum(times[1:]) < 2.0:
        start = time.perf_counter()
        x, y = (t.to(device) for t in loader.next_batch())
        with autocast(resolve_precision(train.precision, device), device):
            loss = token_cross_entropy_sum(model(x), y) / y.numel()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), train.grad_clip or math.inf)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        if device.type == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    return float(np.median(times[1:]))  # the first step pays for allocation and kernel selection


# ---------------------------------------------------------------- reports
def _markdown(result: dict) -> str:
    drop = result.get("dropout") or 0.0
    lines = [f"# Model comparison: {result['budget_seconds']:g} s per model"
             + (f", dropout {drop:g}" if drop else ""),
             "",
             f"Data: `{result['data']}` ({result['tokenizer']} tokens; {result['val_chars']:,} validation characters). "
             "Bits per character = total validation NLL in nats / ln 2 / validation characters.",
             "",
             "| model | family | parameters | steps | train seconds | tokens seen | val bits/char |",
             "|---|---|---:|---:|---:|---:|---:|"]
    for r in sorted(result["models"], key=lambda r: r["val_bpc"]):
        params = f"{r['ngrams']:,} n-grams" if r.get("ngrams") else f"{r['parameters']:,}"
        lines.append(f"| {r['model']} | {r['family']} | {params} | {r['steps']:,} | {r['train_seconds']:.1f} | "
                     f"{r['tokens_seen']:,} | {r['val_bpc']:.4f} |")
    lines += ["", "n-gram models are fitted by counting in one pass; their time is the fitting time.", ""]
    return "\n".join(lines)


def _plot(result: dict, out: Path, meta: dict) -> None:
    import matplotlib  # imported when a plot is drawn: it takes a second to load

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = sorted(result["models"], key=lambda r: r["val_bpc"])
    # Training loss is in nats per token; this turns it into bits per character of training text.
    per_char = (meta["train_tokens"] / max(1, meta.get("train_chars") or meta["train_tokens"])) / math.log(2)
    fig, (bars, curves) = plt.subplots(1, 2, figsize=(12, 4.5))
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    color = {r["model"]: colors[i % len(colors)] for i, r in enumerate(rows)}
    bars.bar([r["model"] for r in rows], [r["val_bpc"] for r in rows], color=[color[r["model"]] for r in rows])
    for i, r in enumerate(rows):
        bars.text(i, r["val_bpc"], f"{r['val_bpc']:.3f}", ha="center", va="bottom", fontsize=9)
    bars.set_ylabel("validation bits per character")
    bars.set_title(f"{result['budget_seconds']:g} s per model")
    bars.tick_params(axis="x", rotation=30)
    for r in rows:
        if r.get("ngrams"):
            curves.axhline(r["val_bpc"], ls="--", color=color[r["model"]], label=f"{r['model']} (validation)")
            continue
        points = [(m["elapsed"], m["train_loss"] * per_char) for m in read_metrics(r["run_dir"])
                  if "train_loss" in m and "elapsed" in m]
        if points:
            curves.plot(*zip(*points), color=color[r["model"]], lw=1.2, label=r["model"],
                        marker="." if len(points) < 20 else None)
    curves.set_xlabel("training seconds")
    curves.set_ylabel("training loss (bits per character)")
    curves.grid(alpha=0.3)
    curves.legend(fontsize=8)
    fig.tight_layout()
    with atomic_path(out / "compare.png") as tmp:
        fig.savefig(tmp, format="png", dpi=110)
    plt.close(fig)
