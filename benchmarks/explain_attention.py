"""The fused attention path's speed with the attention recorder in the code base, and what recording costs.

For a GPT (gpt-mini shape), a BERT (all-MiniLM-L6-v2 shape) and a T5 (t5-small shape, 4 layers each side),
random weights, fp32, eval mode, no grad, batch `--batch_size` x `--seq_len` tokens with right padding on half
the rows, this times the best of `--repeats` forward passes:
  - fused, before any recording: each attention layer on its default function (`attend`: SDPA);
  - fused, after a `record_attention` block was entered and left: the same model, which must be as fast;
  - recording: inside `record_attention`, every layer's probabilities materialised and kept.
The three are interleaved round by round, so a busy machine slows them alike.

    python benchmarks/explain_attention.py [--threads 1 --seq_len 128 --batch_size 8 --repeats 7]

`--fused_only` times only the fused forward and imports nothing but the models, so the same command run with
PYTHONPATH pointing at another checkout (one without lmforge.explain) times the fused path before the change.
The last line printed is one JSON object; `ratio` is fused time before recording / after (1.0 = unchanged).
"""
from __future__ import annotations

import argparse
import importlib
import json
import time

import torch

from lmforge.models.registry import build_model

SHAPES = {
    "gpt": ("gpt-mini", {}),
    "bert": ("bert-base", dict(vocab_size=30522, n_layer=6, n_head=12, n_embd=384, intermediate_size=1536)),
    "t5": ("t5-small", dict(n_layer=4, dropout=0.0)),
}


def inputs(family: str, batch: int, seq: int, vocab: int) -> tuple:
    ids = torch.randint(5, vocab, (batch, seq))
    padding = torch.ones(batch, seq, dtype=torch.long)
    padding[batch // 2:, seq * 3 // 4:] = 0
    if family == "gpt":  # a decoder reads right-padded rows causally, as task heads feed it
        return (ids,), {}
    if family == "t5":
        return (ids,), {"attention_mask": padding, "decoder_input_ids": ids[:, : seq // 4]}
    return (ids,), {"attention_mask": padding}


def time_round(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def measure(family: str, args, recorder) -> dict:
    preset, overrides = SHAPES[family]
    torch.manual_seed(args.seed)
    model = build_model(preset, **overrides).eval()
    a, kw = inputs(family, args.batch_size, args.seq_len, model.config.vocab_size)
    fused = lambda: model(*a, **kw)  # noqa: E731

    def recording():
        with recorder(model):
            model(*a, **kw)

    best = {"before": float("inf"), "after": float("inf"), "recording": float("inf")}
    with torch.no_grad():
        fused()
        for _ in range(args.repeats):
            best["before"] = min(best["before"], time_round(fused))
            if recorder is not None:
                best["recording"] = min(best["recording"], time_round(recording))
                best["after"] = min(best["after"], time_round(fused))
    out = {f"{family}_fused_ms": round(best["before"] * 1e3, 2)}
    if recorder is not None:
        out.update({f"{family}_fused_after_recording_ms": round(best["after"] * 1e3, 2),
                    f"{family}_recording_ms": round(best["recording"] * 1e3, 2),
                    f"{family}_ratio": round(best["before"] / best["after"], 3)})
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--seq_len", type=int, default=128)
    ap.add_argument("--batch_size", type=int, default=8)
    ap.add_argument("--repeats", type=int, default=7)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--fused_only", action="store_true", help="time only the fused forward (any checkout)")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    recorder = None if args.fused_only else importlib.import_module("lmforge.models.common.attention_record").record_attention
    result = {"threads": args.threads, "seq_len": args.seq_len, "batch_size": args.batch_size, "torch": torch.__version__}
    for family in SHAPES:
        result.update(measure(family, args, recorder))
    if recorder is not None:
        result["ratio"] = round(min(result[f"{f}_ratio"] for f in SHAPES), 3)
    for key, value in result.items():
        print(f"{key:32s} {value}")
    print(json.dumps(result))


if __name__ == "__main__":
    main()
