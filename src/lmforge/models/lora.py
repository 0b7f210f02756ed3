"""LoRA: low-rank adaptation of a frozen model (Hu et al. 2021).

Fine-tuning every weight of a large model needs optimizer state and a full copy of the model per
task. LoRA freezes the pretrained weight W (out, in) and learns a low-rank update instead:
y = x W^T + b + (alpha / r) * dropout(x) A^T B^T, with A (r, in) and B (out, r). B starts at zero, so
training starts exactly from the pretrained model, and only r * (in + out) numbers per adapted layer
are trained and stored. For inference B A can be folded into W, which costs nothing at decode time.
"""
from __future__ import annotations

import math
from typing import Iterable, Iterator

import torch
import torch.nn as nn
import torch.nn.functional as F

from lmforge.errors import CheckpointError, ConfigError
from lmforge.models.common.state import state_mismatch

# The attention and feed-forward projections of the transformer blocks: self-attention `qkv`/`proj`,
# cross-attention `q`/`kv`/`proj`, MLP `up`/`down` and the gated MLPs' `gate`. Output heads, poolers
# and embeddings are left out: heads are usually trained in full or replaced per task.
DEFAULT_TARGETS: tuple[str, ...] = ("qkv", "proj", "q", "kv", "up", "down", "gate")

_LORA_PARAMS = ("lora_A", "lora_B")


class LoRALinear(nn.Module):
    """An `nn.Linear` plus a trainable low-rank update, scaled by alpha / r.

    The base `weight` and `bias` are the Linear's own Parameter objects, so the state-dict keys of
    the base weights are unchanged and `lora_A`/`lora_B` only add keys next to them.
    """

    def __init__(self, base: nn.Linear, *, r: int = 8, alpha: float = 16.0, dropout: float = 0.0):
        super().__init__()
        _check_hyperparameters(r, alpha, dropout)
        self.in_features, self.out_features = base.in_features, base.out_features
        self.r, self.alpha, self.dropout_p = int(r), float(alpha), float(dropout)
        self.scaling = self.alpha / self.r
        self.merged = False
        self.weight = base.weight
        self.bias = base.bias  # None registers "no bias", exactly as nn.Linear does
        w = base.weight
        self.lora_A = nn.Parameter(torch.empty(self.r, self.in_features, device=w.device, dtype=w.dtype))
        self.lora_B = nn.Parameter(torch.empty(self.out_features, self.r, device=w.device, dtype=w.dtype))
        self.lora_dropout = nn.Dropout(self.dropout_p) if self.dropout_p > 0 else nn.Identity()
        self.reset_lora_parameters()

    def reset_lora_parameters(self) -> None:
        """A as nn.Linear initialises its weight, B zero: the update B A starts at exactly zero."""
        nn.init.kaiming_uniform_(self.lora_A, a=math.sqrt(5))
        nn.init.zeros_(self.lora_B)

    def delta_weight(self) -> torch.Tensor:
        """scaling * B A (out, in) in fp32, whatever the parameters' dtype."""
        return (self.lora_B.float() @ self.lora_A.float()) * self.scaling

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = F.linear(x, self.weight, self.bias)
        if self.merged:
            return y
        # Two thin matmuls (x A^T, then B) rather than forming B A: r is much smaller than in and out.
        update = F.linear(F.linear(self.lora_dropout(x), self.lora_A), self.lora_B)
        return y + update * self.scaling

    @torch.no_grad()
    def merge(self) -> None:
        if not self.merged:
            self.weight.add_(self.delta_weight().to(self.weight.dtype))
            self.merged = True

    @torch.no_grad()
    def unmerge(self) -> None:
        if self.merged:
            self.weight.sub_(self.delta_weight().to(self.weight.dtype))
            self.merged = False

    def extra_repr(self) -> str:
        return (f"in_features={self.in_features}, out_features={self.out_features}, bias={self.bias is not None}, "
                f"r={self.r}, alpha={self.alpha}, dropout={self.dropout_p}, merged={self.merged}")


def _check_hyperparameters(r: int, alpha: float, dropout: float) -> None:
    if isinstance(r, bool) or not isinstance(r, int) or r <= 0:
        raise ConfigError(f"LoRA rank r must be a positive integer, got {r!r}", "pass e.g. r=8")
    if not alpha > 0:
        raise ConfigError(f"LoRA alpha must be positive, got {alpha!r}", "pass e.g. alpha=16 (twice r is common)")
    if not 0.0 <= dropout < 1.0:
        raise ConfigError(f"LoRA dropout must be in [0, 1), got {dropout!r}", "pass e.g. dropout=0.05")


def lora_modules(model: nn.Module) -> Iterator[tuple[str, LoRALinear]]:
    """(qualified name, module) of every LoRALinear in `model`."""
    for name, module in model.named_modules():
        if isinstance(module, LoRALinear):
            yield name, module


def _set_submodule(model: nn.Module, name: str, module: nn.Module) -> None:
    parent_name, _, child = name.rpartition(".")
    setattr(model.get_submodule(parent_name) if parent_name else model, child, module)


def apply_lora(model: nn.Module, *, r: int = 8, alpha: float = 16.0, dropout: float = 0.0,
               targets: Iterable[str] = DEFAULT_TARGETS, exclude: Iterable[str] = ()) -> list[str]:
    """Replace the targeted `nn.Linear`s of `model` by `LoRALinear`s and freeze everything else.

    A Linear is targeted when the last component of its qualified name (or the whole name, which is
    what `lora_config` records) is in `targets` and no component of its name is in `exclude`
    (e.g. exclude=("encoder",) adapts only a T5 decoder). Every parameter that is not a LoRA
    parameter gets requires_grad=False; re-enable afterwards whatever else should train (a task head).
    Returns the replaced module names, sorted.
    """
    _check_hyperparameters(r, alpha, dropout)
    targets, exclude = set(targets), set(exclude)
    if any(True for _ in lora_modules(model)):
        raise ConfigError("the model already has LoRA adapters",
                          "apply LoRA once with all targets, or call remove_lora first")
    linears = {name: m for name, m in model.named_modules() if isinstance(m, nn.Linear) and name}
    chosen = sorted(name for name in linears
                    if (name.rpartition(".")[2] in targets or name in targets)
                    and not exclude.intersection(name.split(".")))
    if not chosen:
        available = sorted({name.rpartition(".")[2] for name in linears})
        raise ConfigError(f"no Linear layer matches LoRA targets {sorted(targets)} (exclude {sorted(exclude)})",
                          f"choose targets among the model's Linear names: {', '.join(available) or 'none'}")
    # A tied weight (an output layer sharing the embedding matrix) would change the embedding as well
    # once merged, and its two users would no longer agree on what the weight is.
    users: dict[int, list[str]] = {}
    for pname, p in model.named_parameters(remove_duplicate=False):
        users.setdefault(id(p), []).append(pname)
    for name in chosen:
        shared = users[id(linears[name].weight)]
        if len(shared) > 1:
            others = ", ".join(n for n in shared if n != f"{name}.weight")
            raise ConfigError(f"{name}.weight is tied to {others}; LoRA cannot adapt a tied weight",
                              f"leave {name.rpartition('.')[2]!r} out of the targets or add it to exclude")
    for name in chosen:
        _set_submodule(model, name, LoRALinear(linears[name], r=r, alpha=alpha, dropout=dropout))
    for pname, p in model.named_parameters():
        p.requires_grad_(pname.rpartition(".")[2] in _LORA_PARAMS)
    return chosen


def merge_lora(model: nn.Module) -> None:
    """Fold scaling * B A into each adapted weight, in place; already merged layers are left alone.

    A merged model computes the same function with plain matmuls. Save adapters (`lora_state_dict`)
    unmerged or separately: a merged weight already contains the update.
    """
    for _, module in lora_modules(model):
        module.merge()


def unmerge_lora(model: nn.Module) -> None:
    """Subtract what `merge_lora` added (up to rounding), so the LoRA parameters can train again."""
    for _, module in lora_modules(model):
        module.unmerge()


def remove_lora(model: nn.Module) -> nn.Module:
    """Merge every adapter and put back plain `nn.Linear`s holding the merged weights (same keys).

    The base parameters keep their requires_grad flags. Returns `model`, changed in place.
    """
    for name, module in list(lora_modules(model)):
        module.merge()
        w = module.weight
        # Built on the meta device so nothing is allocated before the merged Parameters move in.
        linear = nn.Linear(module.in_features, module.out_features, bias=module.bias is not None,
                           device="meta", dtype=w.dtype)
        linear.weight = w
        linear.bias = module.bias
        linear.train(module.training)
        _set_submodule(model, name, linear)
    return model


def lora_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """The `lora_A`/`lora_B` tensors only, under their keys in `model.state_dict()`."""
    return {f"{name}.{p}": getattr(module, p).detach()
            for name, module in lora_modules(model) for p in _LORA_PARAMS}


def load_lora_state_dict(model: nn.Module, state: dict[str, torch.Tensor]) -> None:
    """Strictly load LoRA tensors saved by `lora_state_dict` into a model with the same adapters."""
    expected = lora_state_dict(model)
    if not expected:
        raise CheckpointError("the model has no LoRA adapters to load weights into",
                              "call apply_lora with the saved lora_config first")
    detail = state_mismatch(expected, state, detailed=True)
    if detail:
        raise CheckpointError(f"LoRA weights do not match the model's adapters ({detail})",
                              "apply LoRA with the r and targets they were saved with (see lora_config)")
    with torch.no_grad():
        for name, module in lora_modules(model):
            was_merged = module.merged
            module.unmerge()  # the merged weight holds the old update: take it out before replacing it
            for p in _LORA_PARAMS:
                getattr(module, p).copy_(state[f"{name}.{p}"])
            if was_merged:
                module.merge()


def lora_config(model: nn.Module) -> dict | None:
    """{"r", "alpha", "dropout", "targets": adapted module names} of the model's LoRA, None if it has none.

    Passing these back to `apply_lora` (targets=config["targets"]) rebuilds the same adapters.
    """
    found = list(lora_modules(model))
    if not found:
        return None
    first = found[0][1]
    return {"r": first.r, "alpha": first.alpha, "dropout": first.dropout_p,
            "targets": sorted(name for name, _ in found)}


def count_trainable(model: nn.Module) -> tuple[int, int]:
    """(trainable, total) parameter counts; a tied parameter counts once."""
    seen: set[int] = set()
    trainable = total = 0
    for p in model.parameters():
        if id(p) in seen:
            continue
        seen.add(id(p))
        total += p.numel()
        trainable += p.numel() if p.requires_grad else 0
    return trainable, total
