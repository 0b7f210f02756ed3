"""Shared by the harness tests: a randomly initialised GPT-2 built and saved by `transformers` (the reference
for lm-eval's own `hf` backend) and the same weights imported into lmforge by `lmforge convert`."""
from __future__ import annotations

import json
from pathlib import Path

import torch

from lmforge.data.tokenizers import train_tokenizer
from lmforge.interop.hf import convert

ROOT = Path(__file__).resolve().parents[2]
TASKS = ROOT / "tests" / "harness" / "tasks"  # the YAMLs name their data relative to the repository root
MC_TASK, GEN_TASK = "lmforge_sentiment_mc", "lmforge_arithmetic_gen"
CONTEXT = 128


def task_texts() -> list[str]:
    rows = [json.loads(line) for f in ("sentiment.jsonl", "arithmetic.jsonl")
            for line in (TASKS / f).read_text().splitlines()]
    return [" ".join(str(v) for v in r.values()) for r in rows] + ["Review: Sentiment: positive negative Q: A:"]


def build_reference(root: Path) -> tuple[Path, Path]:
    """(Hugging Face folder, lmforge model folder) holding one random GPT-2."""
    from transformers import GPT2Config, GPT2LMHeadModel, PreTrainedTokenizerFast

    hf_dir, run_dir = root / "hf-gpt2", root / "lmforge-gpt2"
    tok = train_tokenizer("bpe", task_texts() * 4, vocab_size=400)
    tok.save(hf_dir)
    eos = tok.id_to_token(tok.eos_id)
    PreTrainedTokenizerFast(tokenizer_file=str(hf_dir / "tokenizer.json"), eos_token=eos, bos_token=eos,
                            pad_token=eos, model_max_length=CONTEXT,
                            clean_up_tokenization_spaces=False).save_pretrained(hf_dir)
    # A wider initialisation than GPT-2's 0.02 makes the random model's choices clear-cut rather than near-ties.
    config = GPT2Config(vocab_size=tok.vocab_size, n_positions=CONTEXT, n_embd=64, n_layer=2, n_head=4,
                        resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0, initializer_range=0.3,
                        bos_token_id=tok.eos_id, eos_token_id=tok.eos_id, pad_token_id=tok.eos_id)
    torch.manual_seed(0)
    GPT2LMHeadModel(config).save_pretrained(hf_dir)
    convert(hf_dir, run_dir, to="lmforge")
    return hf_dir, run_dir
