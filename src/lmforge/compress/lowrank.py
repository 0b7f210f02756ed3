"""Low-rank factorisation: each Linear layer of the transformer blocks replaced by two thinner ones.

    W (N, K)  ~  up (N, r) @ down (r, K),   r(N + K) < N K

Plain truncated SVD keeps the directions of W with the largest singular values, which ignores what the
layer is fed: on real models a few input directions carry most of the activation energy and plain SVD
loses them (the output error grows fast as r falls). Whitening (SVD-LLM, Wang et al. 2024) weights the
error by the inputs instead. With X (M, K) the layer's calibration inputs and S the Cholesky factor of
X^T X (S S^T = X^T X), ||(W - W') X^T|| = ||(W - W') S||, so the truncated SVD of W S, mapped back by
S^-1, is the rank-r matrix with the least output error on those inputs:

    W S = U diag(s) V^T   ->   up = U_r diag(s_r),  down = V_r^T S^-1

Every layer keeps the same share of its weights, so `fraction` of the blocks' linear parameters go.
The model records each layer's rank in config.json ("low_rank"), so a factorised run loads, trains,
quantizes and exports like any other.
"""
from __future__ import annotations

from typing import Callable

import torch
import torch.nn as nn

from lmforge.errors import CheckpointError, ConfigError
from lmforge.models.registry import applied_transforms, register_structure_transform

LOW_RANK_KEY = "low_rank"
# Added to the Gram matrix's diagonal, relative to its mean, so that the Cholesky factor exists when some
# input directions never occur in the calibration text.
DAMPING = 1e-4


class LowRankLinear(nn.Module):
    """x (..., K) -> up(down(x)) (..., N): a rank-r stand-in for an nn.Linear(K, N)."""

    def __init__(self, in_features: int, out_features: int, rank: int, bias: bool = True, *, device=None,
                 dtype: torch.dtype = torch.float32):
        super().__init__()
        self.in_features, self.out_features, self.rank = in_features, out_features, rank
        self.down = nn.Linear(in_features, rank, bias=False, device=device, dtype=dtype)
        self.up = nn.Linear(rank, out_features, bias=bias, device=device, dtype=dtype)

    @property
    def weight(self) -> torch.Tensor:
        """The (N, K) product, for code that reads a linear layer's weight directly."""
        return self.up.weight @ self.down.weight

    @property
    def bias(self) -> torch.Tensor | None:
        return self.up.bias

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.up(self.down(x))

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, rank={self.rank}"


def rank_for(linear: nn.Linear, keep: float) -> int | None:
    """The rank that keeps `keep` of the layer's weights, or None when factorising would not shrink it."""
    n, k = linear.out_features, linear.in_features
    rank = round(keep * n * k / (n + k))
    return rank if 0 < rank < min(n, k) and rank * (n + k) < n * k else None


def input_gram(layers: dict[str, nn.Linear], run_model: Callable[[], None]) -> dict[str, torch.Tensor]:
    """{name: X^T X (K, K) in float64} of each layer's inputs while `run_model()` runs the model on calibration
    data (without gradients)."""
    grams = {name: torch.zeros(m.in_features, m.in_features, dtype=torch.float64) for name, m in layers.items()}

    def record(name: str):
        def hook(module, args):
            x = args[0].detach().reshape(-1, module.in_features).to(torch.float64)  # (M, K)
            grams[name] += (x.T @ x).cpu()
        return hook

    handles = [m.register_forward_pre_hook(record(name)) for name, m in layers.items()]
    try:
        with torch.no_grad():
            run_model()
    finally:
        for handle in handles:
            handle.remove()
    return grams


def factorise(linear: nn.Linear, rank: int, gram: torch.Tensor | None = None) -> LowRankLinear:
    """`linear` as a LowRankLinear of `rank`: whitened by the input Gram matrix (K, K) when given, else plain
    truncated SVD."""
    w = linear.weight.detach().to(torch.float64)  # (N, K)
    if gram is None:
        u, s, vh = torch.linalg.svd(w, full_matrices=False)
        up, down = u[:, :rank] * s[:rank], vh[:rank]
    else:
        damped = gram + DAMPING * gram.diagonal().mean().clamp(min=1e-12) * torch.eye(len(gram), dtype=gram.dtype)
        chol = torch.linalg.cholesky(damped)  # (K, K) lower: chol @ chol.T = X^T X
        u, s, vh = torch.linalg.svd(w @ chol, full_matrices=False)
        up = u[:, :rank] * s[:rank]  # (N, r)
        down = torch.linalg.solve_triangular(chol, vh[:rank], upper=False, left=False)  # V_r^T chol^-1 (r, K)
    module = LowRankLinear(linear.in_features, linear.out_features, rank, bias=linear.bias is not None,
                           device=linear.weight.device, dtype=linear.weight.dtype)
    with torch.no_grad():
        module.up.weight.copy_(up)
        module.down.weight.copy_(down)
        if linear.bias is not None:
            module.up.bias.copy_(linear.bias)
    return module.train(linear.training)


def apply_low_rank(model: nn.Module, layers: dict[str, nn.Linear], fraction: float,
                   grams: dict[str, torch.Tensor] | None = None) -> dict:
    """Factorise `layers` ({name in model: nn.Linear}) so that about `fraction` of their weights go, in place;
    whitened where `grams` has the layer's input Gram matrix. Returns the record config.json keeps."""
    if applied_transforms(model).get(LOW_RANK_KEY):
        raise ConfigError("the model is already factorised", "factorise the run it was made from")
    ranks = {name: rank_for(linear, 1 - fraction) for name, linear in layers.items()}
    ranks = {name: r for name, r in ranks.items() if r is not None}
    if not ranks:
        raise ConfigError(f"at sparsity {fraction:g} no layer gets smaller by factorising",
                          "raise --sparsity (a rank-r factorisation pays once r(N + K) < N K)")
    for name, rank in ranks.items():
        model.set_submodule(name, factorise(layers[name], rank, None if grams is None else grams[name]))
    record = {"method": "lowrank", "whitened": grams is not None, "ranks": ranks}
    model.applied_transforms = {**applied_transforms(model), LOW_RANK_KEY: record}
    return record


def carry_low_rank(source: nn.Module, target: nn.Module, source_prefix: str, target_prefix: str) -> None:
    """Record on `target` the factorised layers of `source` it now holds: a fine-tuned model's backbone taken
    out of it (prefix "backbone." -> ""), or a backbone put into a new task model ("" -> "backbone.")."""
    record = applied_transforms(source).get(LOW_RANK_KEY)
    if not record:
        return
    ranks = {target_prefix + name[len(source_prefix):]: rank for name, rank in record["ranks"].items()
             if name.startswith(source_prefix)}
    target.applied_transforms = {**applied_transforms(target), LOW_RANK_KEY: {**record, "ranks": ranks}}


def rebuild_low_rank(model: nn.Module, record: dict) -> None:
    """Swap in empty LowRankLinear layers of the recorded ranks on a freshly built `model`."""
    modules = dict(model.named_modules())
    for name, rank in (record.get("ranks") or {}).items():
        linear = modules.get(name)
        if not isinstance(linear, nn.Linear):
            raise CheckpointError(f"config.json factorises {name!r}, which is not a linear layer of this model",
                                  "restore the run's config.json")
        model.set_submodule(name, LowRankLinear(linear.in_features, linear.out_features, int(rank),
                                                bias=linear.bias is not None, dtype=linear.weight.dtype))
    model.applied_transforms = {**applied_transforms(model), LOW_RANK_KEY: record}


register_structure_transform(LOW_RANK_KEY, rebuild_low_rank)
