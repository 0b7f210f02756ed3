"""Time to a target validation loss on character-level Tiny Shakespeare, against nanoGPT.

    python benchmarks/shakespeare_char.py [--config configs/shakespeare-char.yaml] [--budget_seconds 105]

The text is `$LMFORGE_DATA_DIR/tinyshakespeare/input.txt`, split into the first 90% for
training and the last 10% for validation, one token per character (1,003,854 / 111,540
tokens). The recipe is trained through `lmforge.api.pretrain` with a wall-clock budget;
validation loss is measured every `train.eval_interval` steps on a fixed set of
`train.eval_batches * train.batch_size` context-length windows spread evenly over the
whole validation split.

The clock starts when `pretrain` is called on the prepared data, so model construction,
compilation and every evaluation count towards the reported seconds; data preparation is
timed separately.

Reference: nanoGPT's documented CPU configuration for this data set (4 layers, 4 heads,
width 128, context 64, batch 12, 2000 iterations, AdamW 1e-3 cosine to 1e-4, dropout 0)
reaches validation loss 1.886 in about 105 seconds on the 2-core machine these numbers
were taken on.

The last line printed is one JSON object (see the benchmark contract in the README).
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from dataclasses import asdict, replace
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from lmforge.api import DataConfig, ModelSpec, TrainConfig, prepare, pretrain  # noqa: E402

BASELINE_SECONDS = 105.0
TARGET = 1.886
SECOND_TARGET = 1.70


def load_recipe(path: Path, overrides: list[str]) -> tuple[DataConfig, ModelSpec, TrainConfig]:
    recipe = yaml.safe_load(path.read_text()) or {}
    for item in overrides:
        key, _, value = item.partition("=")
        section, _, name = key.partition(".")
        if section not in ("data", "model", "train") or not name or not _:
            raise SystemExit(f"error: --set expects section.key=value, got {item!r}")
        recipe.setdefault(section, {})[name] = _scalar(value)
    return (DataConfig(**recipe.get("data", {})), ModelSpec(**recipe.get("model", {})),
            TrainConfig(**recipe.get("train", {})))


def _scalar(text: str):
    """YAML value, also reading `3e-3` as a number (YAML 1.1 wants `3.0e-3`)."""
    value = yaml.safe_load(text)
    if isinstance(value, str):
        try:
            return float(value)
        except ValueError:
            pass
    return value


def input_file(arg: str | None) -> Path:
    if arg:
        return Path(arg)
    root = os.environ.get("LMFORGE_DATA_DIR")
    if not root:
        raise SystemExit("error: LMFORGE_DATA_DIR is not set — export it (the folder holding "
                         "tinyshakespeare/input.txt) or pass --input PATH")
    path = Path(root) / "tinyshakespeare" / "input.txt"
    if not path.is_file():
        raise SystemExit(f"error: {path} does not exist — point LMFORGE_DATA_DIR at the shared data folder")
    return path


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--config", default=str(ROOT / "configs" / "shakespeare-char.yaml"), help="YAML recipe")
    p.add_argument("--budget_seconds", type=float, default=BASELINE_SECONDS,
                   help="training wall-clock budget (train.max_seconds)")
    p.add_argument("--target", type=float, default=TARGET, help="validation loss to time")
    p.add_argument("--input", default=None, help="input.txt (default: $LMFORGE_DATA_DIR/tinyshakespeare/input.txt)")
    p.add_argument("--set", action="append", default=[], metavar="SECTION.KEY=VALUE",
                   help="override a recipe value, e.g. --set train.lr=2e-3 (repeatable)")
    p.add_argument("--out", default=None, help="keep the run directory here (default: a temporary folder)")
    p.add_argument("--verbose", action="store_true", help="print every evaluation")
    args = p.parse_args()

    data, spec, train = load_recipe(Path(args.config), args.set)
    train = replace(train, max_seconds=args.budget_seconds, progress=False)
    scratch = None if args.out else tempfile.TemporaryDirectory(prefix="lmforge-shakespeare-")
    work = Path(args.out or scratch.name)
    work.mkdir(parents=True, exist_ok=True)
    try:
        result = run(args, data, spec, train, work)
    finally:
        if scratch is not None:
            scratch.cleanup()
    print(json.dumps(result))


def run(args, data: DataConfig, spec: ModelSpec, train: TrainConfig, work: Path) -> dict:
    t = time.perf_counter()
    meta = prepare(str(input_file(args.input)), work / "data", tokenizer=data.tokenizer, vocab_size=data.vocab_size,
                   val_fraction=data.val_fraction, clean=data.clean, seed=train.seed, overwrite=True, progress=False)
    prep_seconds = time.perf_counter() - t

    evals: list[tuple[float, int, float]] = []  # (seconds since start, step, val loss)
    seen = {"val": None}

    def on_step(trainer) -> None:
        val = trainer.state.last_val
        if val is not seen["val"] and "val_loss" in val:
            seen["val"] = val
            evals.append((time.perf_counter() - start, trainer.state.step, float(val["val_loss"])))
            if args.verbose:
                print(f"  {evals[-1][0]:7.1f}s  step {trainer.state.step:6d}  val {val['val_loss']:.4f}", flush=True)

    start = time.perf_counter()
    summary = pretrain(str(work / "data"), spec, out=work / "run", train=train, on_step=on_step)
    total_seconds = time.perf_counter() - start

    def first_time_below(level: float) -> float | None:
        return next((round(s, 2) for s, _, v in evals if v <= level), None)

    seconds_to_target = first_time_below(args.target)
    within_budget = [v for s, _, v in evals if s <= BASELINE_SECONDS + 5.0]
    resolved = yaml.safe_load((work / "run" / "config.yaml").read_text())
    seq_len = resolved["train"]["seq_len"] or resolved["model"]["block_size"]
    n_windows = min(train.eval_batches * train.batch_size, (meta["val_tokens"] - 1) // seq_len)
    result = {
        "benchmark": "shakespeare_char",
        "device": "cuda" if str(train.device).startswith("cuda") else "cpu",
        "ours": seconds_to_target,
        "baseline_name": "nanoGPT shakespeare_char CPU config (measured on this machine)",
        "baseline": BASELINE_SECONDS,
        "unit": f"seconds to val loss {args.target}",
        "ratio": round(BASELINE_SECONDS / seconds_to_target, 3) if seconds_to_target else None,
        "seconds_to_target": seconds_to_target,
        f"seconds_to_{SECOND_TARGET}": first_time_below(SECOND_TARGET),
        "val_loss_at_budget": round(within_budget[-1], 4) if within_budget else None,
        "final_val_loss": round(summary["val_loss"], 4),
        "best_val_loss": round(min(v for _, _, v in evals), 4) if evals else None,
        "prep_seconds": round(prep_seconds, 2),
        "train_seconds": round(total_seconds, 2),
        "budget_seconds": args.budget_seconds,
        "steps": summary["steps"],
        "tokens_per_second": round(summary["tokens_per_second"] or 0.0),
        "train_tokens": meta["train_tokens"],
        "val_tokens": meta["val_tokens"],
        "val_windows": n_windows,
        "val_tokens_evaluated": n_windows * seq_len,
        "evaluations": len(evals),
        "clock": "from the pretrain call on prepared data; includes model setup, compilation and evaluations",
        "load_average": [round(x, 2) for x in os.getloadavg()],
        "config": {"recipe": str(Path(args.config).relative_to(ROOT)) if Path(args.config).resolve().is_relative_to(ROOT)
                   else args.config, "overrides": args.set, "data": asdict(data),
                   "model": {k: v for k, v in asdict(spec).items() if v is not None},
                   "train": {k: (list(v) if isinstance(v, tuple) else v) for k, v in asdict(train).items()}},
    }
    return result


if __name__ == "__main__":
    main()
