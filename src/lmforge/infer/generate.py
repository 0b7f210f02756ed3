"""Autoregressive generation: the reference path every faster engine is tested against.

Prompts are checked, repeated `num_samples` times and continued together by the batched decode
loop of `lmforge.infer.decoding`; each row's new ids are then cut at its end of text or stop
string and decoded to text. `TextStreamer` writes one row to a terminal as it is produced.
"""
from __future__ import annotations

import contextlib
import sys
from dataclasses import dataclass
from typing import Sequence, TextIO

import torch
import torch.nn as nn

from lmforge.errors import ConfigError
from lmforge.infer.compiled import CompiledDecoder
from lmforge.infer.decoding import StreamFn, decode_rows
from lmforge.infer.sampling import SamplingParams
from lmforge.infer.stops import cut_at_stop, held_back, ids_before


@dataclass
class Completion:
    """One generated row: new token ids (no prompt, no eos), its text when a tokenizer was given,
    and why it ended: "eos", "stop" (a stop string) or "length" (max_new_tokens or the context)."""

    ids: list[int]
    text: str | None
    finish_reason: str


def generate(model: nn.Module, prompt_ids: Sequence[Sequence[int]], params: SamplingParams, *,
             eos_id: int | None = None, tokenizer=None, stream: StreamFn | None = None,
             use_cache: bool = True, compile: bool = False) -> list[list[int]]:
    """New token ids for each prompt (prompt and eos excluded).

    With `params.num_samples` > 1 the result holds that many rows per prompt, prompt by prompt.
    Generation of a row ends at `eos_id`, at a stop string (needs `tokenizer`; the ids are cut
    just before it where token boundaries allow) or after `params.max_new_tokens`, clipped so
    that prompt + new tokens fit the model's context. `stream(row, token_id)` is called for
    every new token of a row still running. `use_cache=False` recomputes the whole sequence at
    every step; it is slow and exists as a reference for the cached path. `compile=True` runs each
    decode step as one compiled graph (CPU, GPT family; see `lmforge.infer.compiled`): the first
    call compiles for tens of seconds, later ones decode about 2.5x as fast at batch 1.
    """
    return [c.ids for c in generate_completions(model, prompt_ids, params, eos_id=eos_id, tokenizer=tokenizer,
                                                stream=stream, use_cache=use_cache, compile=compile)]


def generate_text(model: nn.Module, tokenizer, prompts: Sequence[str], params: SamplingParams, *,
                  stream: StreamFn | None = None, compile: bool = False) -> list[list[str]]:
    """`params.num_samples` completions (text only, prompt excluded) for each prompt string."""
    if isinstance(prompts, str):
        prompts = [prompts]
    ids = [encode_prompt(tokenizer, p) for p in prompts]
    done = generate_completions(model, ids, params, eos_id=getattr(tokenizer, "eos_id", None), tokenizer=tokenizer,
                                stream=stream, compile=compile)
    n = params.num_samples
    return [[c.text for c in done[i * n:(i + 1) * n]] for i in range(len(prompts))]


def encode_prompt(tokenizer, prompt: str) -> list[int]:
    """Token ids of `prompt`; an empty prompt starts from the end-of-text token, as GPT-2 does."""
    ids = list(tokenizer.encode(prompt)) if prompt else []
    if not ids:
        eos = getattr(tokenizer, "eos_id", None)
        if eos is None:
            raise ConfigError("the prompt is empty and the tokenizer has no end-of-text token to start from",
                              "pass a non-empty prompt")
        ids = [eos]
    return ids


def prepare_for_inference(model: nn.Module) -> nn.Module:
    """Put `model` in eval mode and store its CPU linear weights in the layout decoding reads fastest.

    Decoding multiplies one row per sequence by every weight matrix, and CPU BLAS kernels do
    that markedly faster when an (out, in) weight is stored column-major, i.e. as the
    contiguous (in, out) matrix it is multiplied by (GPT-2's original Conv1D layout). Values and
    shapes are unchanged, so saving, loading and generating behave exactly as before; only
    strides change. Use it on models loaded for inference, not on one being trained with an
    optimizer or a distributed wrapper, which expect the original strides. Returns `model`.
    """
    model.eval()
    with torch.no_grad():
        for module in model.modules():
            w = getattr(module, "weight", None)
            if isinstance(module, nn.Linear) and w is not None and w.device.type == "cpu" and w.is_contiguous() \
                    and w.dim() == 2 and w.shape[0] > 1 and w.shape[1] > 1:
                w.data = w.data.t().contiguous().t()
    return model


# ---------------------------------------------------------------- streaming to a terminal
class TextStreamer:
    """A `stream` callback that writes one row's text to `output` as it is produced.

    Text is written only once it decodes cleanly: a multi-byte character split across
    byte-level tokens decodes to U+FFFD until its last byte arrives. Text that could be
    the start of a stop string is held back until it is clear that it is not one.
    """

    def __init__(self, tokenizer, output: TextIO | None = None, *, stop: Sequence[str] = (), row: int = 0):
        self.tokenizer = tokenizer
        self.output = output if output is not None else sys.stdout
        self.stop = [s for s in stop if s]
        self.row = row
        self.ids: list[int] = []
        self.written = 0
        self.stopped = False

    def __call__(self, row: int, token_id: int) -> None:
        if row != self.row or self.stopped:
            return
        self.ids.append(token_id)
        text = self.tokenizer.decode(self.ids)
        if text.endswith("\ufffd"):
            return
        text, self.stopped = cut_at_stop(text, self.stop)
        if not self.stopped:
            text = text[:len(text) - held_back(text, self.stop)]
        self._write(text)

    def end(self) -> str:
        """Write whatever was held back (no stop string followed it); return the full text."""
        text, _ = cut_at_stop(self.tokenizer.decode(self.ids), self.stop)
        self._write(text)
        return text

    def _write(self, text: str) -> None:
        if len(text) > self.written:
            self.output.write(text[self.written:])
            self.output.flush()
            self.written = len(text)


def stream_text(model: nn.Module, tokenizer, prompt: str | Sequence[int], params: SamplingParams, *,
                output: TextIO | None = None, compile: bool = False) -> str:
    """Generate one completion of `prompt`, writing it to `output` (stdout) as it is produced; return it."""
    ids = encode_prompt(tokenizer, prompt) if isinstance(prompt, str) else list(prompt)
    if params.num_samples != 1:
        params = SamplingParams(**{**params.__dict__, "num_samples": 1})
    streamer = TextStreamer(tokenizer, output, stop=params.stop)
    [done] = generate_completions(model, [ids], params, eos_id=getattr(tokenizer, "eos_id", None),
                                  tokenizer=tokenizer, stream=streamer, compile=compile)
    streamer.end()
    return done.text



# ---------------------------------------------------------------- checking, decoding, cutting
def generate_completions(model: nn.Module, prompt_ids: Sequence[Sequence[int]], params: SamplingParams, *,
                         eos_id: int | None = None, tokenizer=None, stream: StreamFn | None = None,
                         use_cache: bool = True, compile: bool = False) -> list[Completion]:
    """Like `generate`, but each row also carries its text and finish reason."""
    if hasattr(model, "encode") and hasattr(model, "decode"):
        raise ConfigError(f"{model.family} models turn a source into a target instead of continuing a prompt",
                          "decode them with lmforge.infer.seq2seq.generate_seq2seq")
    if isinstance(prompt_ids, torch.Tensor):
        prompt_ids = prompt_ids.tolist()
    prompts = [list(map(int, p)) for p in prompt_ids]
    if not prompts:
        raise ConfigError("no prompts were given", "pass at least one prompt")
    block = model.config.block_size
    for i, p in enumerate(prompts):
        if not p:
            raise ConfigError(f"prompt {i} is empty", "pass at least one token per prompt (e.g. the eos id)")
        if len(p) >= block:
            raise ConfigError(f"prompt has {len(p)} tokens but the model's context length is {block}",
                              f"shorten the prompt to at most {block - 1} tokens or use a model with a longer context")
    if params.stop and tokenizer is None:
        raise ConfigError("stop strings need a tokenizer to decode the generated text", "pass tokenizer=...")
    vocab = model.config.vocab_size
    if any(t < 0 or t >= vocab for p in prompts for t in p):
        raise ConfigError(f"prompt token ids must be in [0, {vocab})", "encode the prompt with the model's tokenizer")
    decoder = None
    if compile:
        if not use_cache:
            raise ConfigError("compiled decoding needs the KV cache", "drop use_cache=False or compile=True")

        decoder = CompiledDecoder.for_model(model)

    rows = [p for p in prompts for _ in range(params.num_samples)]
    was_training = model.training
    model.eval()
    try:
        with torch.inference_mode(), (decoder.session() if decoder else contextlib.nullcontext()) as step:
            new_ids, lengths, reasons = decode_rows(model, rows, params, eos_id, tokenizer, stream, use_cache, step)
    finally:
        model.train(was_training)

    out = []
    for ids, n, reason in zip(new_ids, lengths, reasons):
        ids = ids[:n]
        text = None
        if tokenizer is not None:
            text, hit = cut_at_stop(tokenizer.decode(ids), params.stop)
            if hit:
                ids = ids_before(tokenizer, ids, text)
        out.append(Completion(ids, text, reason))
    return out
