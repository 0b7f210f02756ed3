"""Decoding with the one-token model step compiled into a single native graph (CPU).

At batch 1 a CPU decode step is a chain of matrix-vector products plus about two hundred small
operators, each dispatched from Python; in eager PyTorch that dispatching costs about as much as
the arithmetic. `CompiledDecoder` traces the whole step (embedding, every block, the output layer,
the KV-cache writes) once with `torch.compile` and inductor:

- the weights are frozen into the graph as constants, so inductor's GEMM templates can keep them
  prepacked for its matrix-vector kernels (`max_autotune` picks, per shape, the faster of those and
  the ATen kernel);
- the graph runs as generated C++ (`cpp_wrapper`), with no Python between its operators;
- the KV cache is a preallocated buffer whose length is rounded up to `CACHE_BUCKET` positions, so
  one compiled graph serves every generation of that batch size whose prompt plus new tokens fit
  the bucket. Keys beyond the current position are masked.

Compiling takes tens of seconds per (model, batch size, cache bucket), so it pays off for long
generations and repeated calls, not for one short reply. It needs a C++ compiler (inductor's
requirement). The graph holds a snapshot of the weights taken when it is built; when the model's
weights change in place afterwards, the next call builds a new snapshot and compiles again, so it
is meant for a trained model, not for sampling between training steps.
"""
from __future__ import annotations

import contextlib
import copy
import inspect
import weakref

import torch
import torch.nn as nn

from lmforge.errors import ConfigError
from lmforge.models.common.cache import AttentionCache, KVCache
from lmforge.models.registry import TRAITS

# Cache lengths are rounded up to a multiple of this, so that generations of different lengths
# share one compiled graph; masked positions cost a little attention work, not a recompilation.
CACHE_BUCKET = 128

# Inductor settings for the decode graph, applied only around its calls (not process-wide).
_INDUCTOR_OPTIONS = {"freezing": True, "cpp_wrapper": True, "max_autotune": True,
                     "max_autotune_gemm_backends": "CPP,ATEN"}


# torch >= 2.6 can skip the guard checks of calls known to match (see `CompiledDecoder.session`).
_CAN_SKIP_GUARDS = "skip_guard_eval_unsafe" in inspect.signature(
    getattr(torch.compiler, "set_stance", lambda *args, **kwargs: None)).parameters


def cache_length(total: int, block_size: int) -> int:
    """Positions to preallocate for `total` tokens: the next multiple of CACHE_BUCKET, within the context."""
    return min(block_size, -(-total // CACHE_BUCKET) * CACHE_BUCKET)


class LayerKVCache(KVCache):
    """A `KVCache` holding one (B, n_kv_head, max_len, head_dim) tensor per layer instead of one stacked tensor.

    The eager prompt pass uses it like any `KVCache`; the compiled step then writes into these tensors
    in place. Separate tensors matter there: the layers of one stacked tensor are views of a single
    graph input, and writing one view makes the compiled graph copy whole layers every step.
    """

    def __init__(self, n_layer: int, batch_size: int, n_kv_head: int, max_len: int, head_dim: int, *,
                 dtype: torch.dtype, device: torch.device):
        shape = (batch_size, n_kv_head, max_len, head_dim)
        self.k = [torch.zeros(shape, dtype=dtype, device=device) for _ in range(n_layer)]
        self.v = [torch.zeros(shape, dtype=dtype, device=device) for _ in range(n_layer)]
        self.max_len = max_len
        self.length = 0

    def reorder(self, index: torch.Tensor) -> None:
        self.k = [k[index] for k in self.k]
        self.v = [v[index] for v in self.v]


class _StepCache(AttentionCache):
    """The model's view of the KV cache during one compiled step.

    Every row's new key/value goes to column `write_col` of the per-layer (B, n_kv, L, hs) buffers
    and attention reads all L columns through `key_mask` (B, 1, 1, L): row i sees columns
    key_start[i]..write_col, which skips its left padding and the not yet written tail. `length`
    only serves the model's context check (L never exceeds the context); positions come in explicitly.
    """

    def __init__(self, k: list[torch.Tensor], v: list[torch.Tensor], write_col: torch.Tensor,
                 key_mask: torch.Tensor):
        self.k, self.v, self.write_col, self.key_mask = k, v, write_col, key_mask
        self.length = k[0].shape[2] - 1

    def update(self, layer: int, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        ck, cv = self.k[layer], self.v[layer]
        ck[:, :, self.write_col] = k.to(ck.dtype)
        cv[:, :, self.write_col] = v.to(cv.dtype)
        return ck, cv


class _DecodeStep(nn.Module):
    """One token per row through `model`: (B, 1) tokens and positions in, (B, vocab) logits out."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, tokens: torch.Tensor, positions: torch.Tensor, key_start: torch.Tensor,
                write_col: torch.Tensor, k: list[torch.Tensor], v: list[torch.Tensor]) -> torch.Tensor:
        col = torch.arange(k[0].shape[2], device=tokens.device)
        key_mask = ((col[None] >= key_start[:, None]) & (col[None] <= write_col))[:, None, None, :]
        cache = _StepCache(k, v, write_col, key_mask)
        return self.model(tokens, kv_cache=cache, position_ids=positions, last_only=True)[:, -1]


def _weight_versions(model: nn.Module) -> tuple:
    """Changes when a weight is replaced or edited in place (a tensor's `_version` counts its
    in-place operations; writes through `.data` bypass it and go unseen)."""
    return tuple((id(t), t.data_ptr(), t._version) for t in list(model.parameters()) + list(model.buffers()))


class CompiledDecoder:
    """A compiled decode step for one decoder model; get it with `CompiledDecoder.for_model(model)`."""

    _by_model: "weakref.WeakKeyDictionary[nn.Module, CompiledDecoder]" = weakref.WeakKeyDictionary()

    def __init__(self, model: nn.Module):
        check_compilable(model)
        self._versions = _weight_versions(model)
        # The graph freezes the weights it is traced with. Tracing a private copy gives every
        # snapshot parameters of its own, so a later snapshot can never match the earlier graph's
        # guards and reuse its stale constants.
        snapshot = copy.deepcopy(model).eval()
        for p in snapshot.parameters():
            p.requires_grad_(False)
            # Row-major weights: inductor's GEMM templates pack them faster than the column-major
            # layout `prepare_for_inference` gives eager decoding (measured 1.3x at bf16).
            p.data = p.data.contiguous()
        self._step = torch.compile(_DecodeStep(snapshot).forward, fullgraph=True, dynamic=False)

    @classmethod
    def for_model(cls, model: nn.Module) -> "CompiledDecoder":
        """The decoder built for `model` before, unless its weights changed since; else a new one."""
        decoder = cls._by_model.get(model)
        if decoder is None or decoder._versions != _weight_versions(model):
            decoder = cls(model)
            cls._by_model[model] = decoder
        return decoder

    @staticmethod
    def new_cache(model: nn.Module, batch_size: int, total: int) -> LayerKVCache:
        """A KV cache for `total` tokens per row, its length rounded up to a bucket."""
        cfg, ref = model.config, next(model.parameters())
        return LayerKVCache(cfg.n_layer, batch_size, cfg.n_kv_head, cache_length(total, cfg.block_size),
                            cfg.head_dim, dtype=ref.dtype, device=ref.device)

    def step(self, tokens: torch.Tensor, positions: torch.Tensor, key_start: torch.Tensor, write_col: int,
             cache: LayerKVCache) -> torch.Tensor:
        """Logits (B, vocab) for `tokens` (B, 1) at `positions` (B, 1), their keys/values written to
        column `write_col` of `cache`; row i attends to columns key_start[i] (B,) through write_col.
        Compiles on the first call for these shapes."""
        with torch._inductor.config.patch(_INDUCTOR_OPTIONS):
            try:
                return self._step(*_arguments(tokens, positions, key_start, write_col, cache))
            except Exception as exc:  # inductor reports a missing or failing C++ compiler many ways
                text = str(exc).strip()
                first = text.splitlines()[0][:200] if text else type(exc).__name__
                raise ConfigError(f"compiling the decode step failed ({first})",
                                  "install a C++ compiler (g++ or clang), or generate without --compile") from exc

    @contextlib.contextmanager
    def session(self):
        """Yields `step` for one generation, whose calls all have the same shapes.

        After the first call (which compiles if needed, with every guard checked), dynamo is told
        to check only the guards that tell its compiled graphs apart: these inputs match their
        graph by construction, and a full check costs about 0.2 ms a token. The setting is
        process-wide while the session lasts and costs about 1 ms to enter, hence once per call.
        """
        with contextlib.ExitStack() as stack:
            compiled = False

            def step(tokens, positions, key_start, write_col, cache):
                nonlocal compiled
                if compiled:
                    return self._step(*_arguments(tokens, positions, key_start, write_col, cache))
                out = self.step(tokens, positions, key_start, write_col, cache)
                if _CAN_SKIP_GUARDS:
                    stack.enter_context(torch.compiler.set_stance("default", skip_guard_eval_unsafe=True))
                compiled = True
                return out

            yield step


def _arguments(tokens, positions, key_start, write_col, cache) -> tuple:
    # Contiguous inputs: a slice's strides vary with the sequence length and would force a recompile.
    return (tokens.contiguous(), positions.contiguous(), key_start,
            torch.tensor([write_col], device=tokens.device), cache.k, cache.v)


def check_compilable(model: nn.Module) -> None:
    """Raise a ConfigError unless `model` is a decoder the compiled step supports."""
    family = getattr(model, "family", type(model).__name__)
    traits = TRAITS.get(family)
    if traits is None or not traits.kv_cache:  # the step writes a key/value cache slot per token
        raise ConfigError(f"compiled decoding supports GPT-family decoders, not {family} models",
                          "generate without --compile")
    device = next(model.parameters()).device
    if device.type != "cpu":
        raise ConfigError(f"compiled decoding runs on CPU, the model is on {device}",
                          "generate without --compile or load the model on CPU")
