"""`lmforge demo`: built-in corpus -> BPE tokenizer -> small GPT -> perplexity before/after -> samples, on CPU."""
from __future__ import annotations

import math
import shutil
import time
from pathlib import Path

from lmforge.atomic import write_json_atomic
from lmforge.config import DataConfig, ModelSpec, TrainConfig
from lmforge.infer.generate import generate_text
from lmforge.infer.sampling import SamplingParams
from lmforge.runs.pretrain import pretrain
from lmforge.runs.rundir import check_out, load
from lmforge.train.budget import TimeBudget
from lmforge.train.precision import cpu_has_native_bf16

DEMO_PROMPTS = ("The function", "This module provides", "If the value is")


def demo(out: str | Path = "runs/demo", *, max_seconds: float = 150.0, overwrite: bool = True) -> dict:
    """Prepare the built-in corpus, pretrain a small GPT for `max_seconds`, print perplexity before and
    after and a few samples; returns the run's summary (samples included)."""
    out = check_out(out)
    if out.exists() and overwrite:
        shutil.rmtree(out)
    t0 = time.perf_counter()
    print(f"lmforge demo: preparing the built-in 'python-docs' corpus into {out}/data ...", flush=True)
    spec = ModelSpec(preset="gpt-mini", block_size=128, n_layer=4, n_head=4, n_embd=192)
    # bf16 where the CPU computes it natively (about twice the steps in the same time); the cosine
    # schedule is stretched to the steps that fit in the budget on this machine, however fast it is.
    precision = "bf16" if cpu_has_native_bf16() else "fp32"
    train = TrainConfig(batch_size=16, seq_len=128, max_steps=1200, max_seconds=max_seconds, lr=2e-3,
                        warmup_steps=30, weight_decay=0.1, eval_interval=200, eval_batches=16,
                        checkpoint_interval=400, min_lr_ratio=0.1, precision=precision, device="cpu",
                        threads="auto")
    # threads="auto": on a machine other processes keep busy, fewer threads can be several times faster,
    # so counts are timed during training instead of guessed (see lmforge.train.threads).
    summary = pretrain(DataConfig(path="python-docs", tokenizer="bpe", vocab_size=4096), spec, out=out, train=train,
                       on_step=TimeBudget(max_seconds))
    print(f"trained on {summary['threads']}")
    before, after = summary["initial_val_loss"], summary["val_loss"]
    print(f"\nvalidation perplexity: {math.exp(before):,.1f} (untrained) -> {math.exp(after):,.1f} "
          f"after {summary['steps']} steps ({math.exp(before - after):.0f}x lower)")
    model, tokenizer = load(out)
    params = SamplingParams(max_new_tokens=48, temperature=0.8, top_k=40, seed=0)
    samples = generate_text(model, tokenizer, list(DEMO_PROMPTS), params)
    print("\nsamples:")
    for prompt, (text,) in zip(DEMO_PROMPTS, samples):
        print(f"  {prompt!r} -> {prompt}{text}")
    print(f"\nrun directory: {out}  (total {time.perf_counter() - t0:.0f}s)")
    summary["samples"] = {p: s[0] for p, s in zip(DEMO_PROMPTS, samples)}
    write_json_atomic(out / "summary.json", summary)
    return summary
