"""An lmforge decoder as an lm-evaluation-harness model, evaluated in process without a server.

lm-evaluation-harness asks a model three things: `loglikelihood` (a continuation's summed log-probability
given a context, and whether greedy decoding would produce it), `loglikelihood_rolling` (a whole text's,
in windows of the context length) and `generate_until` (greedy text up to a stop string). The first two
go through `lmforge.infer.scoring` (one batched forward pass per batch, no generation), the third
through the continuous-batching engine (or the reference decoder for families without a key/value
cache), exactly as `lmforge serve` answers them; lm-eval's `TemplateLM` splits contexts and
continuations into tokens as it does for its own backends.

lm-eval is optional and slow to import, so the model class is assembled on first use (`harness_model`):
`HarnessMethods` holds the behaviour, and the class lm-eval checks for (`TemplateLM`) is added as a base
only then.
"""
from __future__ import annotations

import importlib.util
from typing import Sequence

import torch.nn as nn

from lmforge.errors import ConfigError
from lmforge.infer.engine import Engine
from lmforge.infer.generate import generate_completions
from lmforge.infer.sampling import SamplingParams
from lmforge.infer.scoring import score_sequences
from lmforge.interop.gpt2 import DECODER_BOS_TOKENS
from lmforge.models.registry import traits_of

DEFAULT_MAX_GEN_TOKS = 256  # lm-eval's default for generate_until


class HarnessMethods:
    """What an lm-eval `TemplateLM` must do, over an lmforge decoder and its tokenizer."""

    def __init__(self, model: nn.Module, tokenizer, *, batch_size: int = 16, max_batch_tokens: int = 4096):
        super().__init__()
        if traits_of(model).structure != "decoder":
            raise ConfigError(f"lm-evaluation-harness evaluates decoders here; {model.family} is not one",
                              "pass a GPT-family run")
        self.model, self.lmforge_tokenizer = model.eval(), tokenizer
        self.batch_size, self.max_batch_tokens = batch_size, max_batch_tokens
        self.context_len = model.config.block_size
        self.engine = Engine(model, tokenizer, max_slots=batch_size) if traits_of(model).kv_cache else None

    # ------------------------------------------------------------ tokens
    @property
    def eot_token_id(self) -> int:
        return self.lmforge_tokenizer.eos_id

    @property
    def prefix_token_id(self) -> int:
        """The token an empty context starts from: the start-of-text token where the tokenizer has one."""
        tok = self.lmforge_tokenizer
        start = next((tok.token_to_id(t) for t in DECODER_BOS_TOKENS if tok.token_to_id(t) is not None), None)
        return start if start is not None else tok.eos_id

    @property
    def max_length(self) -> int:
        return self.context_len

    def tok_encode(self, string: str, add_special_tokens: bool | None = None, **kwargs) -> list[int]:
        return self.lmforge_tokenizer.encode(string)

    def tok_decode(self, tokens: Sequence[int], **kwargs) -> str:
        return self.lmforge_tokenizer.decode(tokens)

    # ------------------------------------------------------------ scoring
    def _loglikelihood_tokens(self, requests, disable_tqdm: bool = False, **kwargs) -> list[tuple[float, bool]]:
        """(summed log-probability of the continuation, whether every one of its tokens is the most likely) for
        each (cache key, context ids, continuation ids); a pair longer than the context loses its oldest tokens."""
        sequences, continuation_lengths = [], []
        for _, context, continuation in requests:
            sequences.append((context + continuation)[-(self.context_len + 1):])
            continuation_lengths.append(len(continuation))
        results = []
        for start in range(0, len(sequences), self.batch_size):
            chunk = score_sequences(self.model, sequences[start:start + self.batch_size],
                                    max_batch_tokens=self.max_batch_tokens)
            for scored, n in zip(chunk, continuation_lengths[start:start + self.batch_size]):
                first = len(scored.token_ids) - n
                results.append((scored.total(first), scored.all_top(first)))
        for (key, _, _), answer in zip(requests, results):
            if key is not None:
                self.cache_hook.add_partial("loglikelihood", key, answer)
        return results

    def loglikelihood_rolling(self, requests, disable_tqdm: bool = False) -> list[float]:
        """Each text's log-probability, scored in disjoint windows of the context length (as lm-eval's own)."""
        from lm_eval.utils import get_rolling_token_windows, make_disjoint_window

        totals = []
        for (text,) in (r.args for r in requests):
            windows = [make_disjoint_window(w) for w in get_rolling_token_windows(
                token_list=self.tok_encode(text), prefix_token=self.prefix_token_id, max_seq_len=self.context_len,
                context_len=1)]
            scored = self._loglikelihood_tokens([(None, c, t) for c, t in windows])
            total = sum(s for s, _ in scored)
            self.cache_hook.add_partial("loglikelihood_rolling", (text,), total)
            totals.append(total)
        return totals

    # ------------------------------------------------------------ generation
    def generate_until(self, requests, disable_tqdm: bool = False) -> list[str]:
        """Greedy continuations, cut at the first of each request's `until` strings."""
        prompts, params = [], []
        for context, gen_kwargs in (r.args for r in requests):
            prompt, p = self._generation_request(context, dict(gen_kwargs))
            prompts.append(prompt)
            params.append(p)
        if self.engine is not None:
            done = self.engine.generate(prompts, params)
        else:
            done = [c for prompt, p in zip(prompts, params) for c in generate_completions(
                self.model, [prompt], p, eos_id=self.eot_token_id, tokenizer=self.lmforge_tokenizer)]
        texts = []
        for (context, gen_kwargs), completion, p in zip((r.args for r in requests), done, params):
            text = completion.text
            for stop in p.stop:
                text = text.split(stop)[0]
            self.cache_hook.add_partial("generate_until", (context, gen_kwargs), text)
            texts.append(text)
        return texts

    def _generation_request(self, context: str, gen_kwargs: dict) -> tuple[list[int], SamplingParams]:
        until = gen_kwargs.pop("until", None) or []
        until = [until] if isinstance(until, str) else list(until)
        max_new = int(gen_kwargs.pop("max_gen_toks", gen_kwargs.pop("max_tokens", DEFAULT_MAX_GEN_TOKS)))
        temperature = float(gen_kwargs.pop("temperature", 0.0))
        if gen_kwargs.pop("do_sample", False) or temperature > 0:
            raise ConfigError("lmforge evaluates generation tasks greedily (do_sample false, temperature 0)",
                              "set do_sample: false in the task's generation_kwargs")
        if max_new >= self.context_len:
            raise ConfigError(f"the task asks for {max_new} new tokens but the model's context holds "
                              f"{self.context_len}", "lower max_gen_toks in the task's generation_kwargs")
        # As lm-eval's own backends do, the context keeps its last tokens to leave room for the answer.
        prompt = self.tok_encode(context)[-(self.context_len - max_new):] or [self.prefix_token_id]
        return prompt, SamplingParams(temperature=0.0, max_new_tokens=max_new, stop=[s for s in until if s])


def require_lm_eval() -> None:
    if importlib.util.find_spec("lm_eval") is None:
        raise ConfigError("lm-evaluation-harness is not installed", "pip install 'lmforge[harness]'")


def harness_model(model: nn.Module, tokenizer, **settings):
    """An lm-eval `TemplateLM` instance over `model` (settings: batch_size, max_batch_tokens)."""
    require_lm_eval()
    from lm_eval.api.model import TemplateLM  # optional, and a few seconds to import

    cls = type("LmforgeLM", (HarnessMethods, TemplateLM), {"__module__": __name__})
    return cls(model, tokenizer, **settings)
