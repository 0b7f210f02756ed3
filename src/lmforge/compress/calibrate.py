"""Activation-aware scales for int4 weights: columns of a weight that multiply large activations are scaled up
before rounding (and the layer's input scaled down by the same factors), so they lose less precision.

For each linear layer, from its inputs on calibration text:
    input_scales = mean |x_k| ** alpha,  normalised so that max * min = 1,
with alpha picked from `ALPHAS` to minimise the mean squared error of the layer's output on a sample of those
inputs. alpha = 0 is plain rounding, so a calibrated layer is never worse than plain rounding on that sample.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn as nn

from lmforge.compress.int4 import dequantize_groups, quantize_groups

ALPHAS = tuple(i / 10 for i in range(11))
# Input rows kept per layer to measure output errors with (mean |x| uses every row).
SAMPLE_ROWS = 256
CALIBRATION_BATCH = 4


@dataclass
class InputStats:
    """Running mean |x| (K,) of a layer's inputs, and a sample of its input rows (R, K)."""
    abs_sum: torch.Tensor | None = None
    rows: int = 0
    sample: list[torch.Tensor] = field(default_factory=list)

    def add(self, x: torch.Tensor) -> None:
        x2d = x.detach().float().reshape(-1, x.shape[-1])  # (M, K)
        total = x2d.abs().sum(dim=0)
        self.abs_sum = total if self.abs_sum is None else self.abs_sum + total
        self.rows += x2d.shape[0]
        room = SAMPLE_ROWS - sum(s.shape[0] for s in self.sample)
        if room > 0:
            step = max(1, x2d.shape[0] // room)
            self.sample.append(x2d[::step][:room].clone())

    def mean_abs(self) -> torch.Tensor:
        return self.abs_sum / max(self.rows, 1)

    def sample_rows(self) -> torch.Tensor:
        return torch.cat(self.sample)


def collect_input_stats(model: nn.Module, windows: torch.Tensor,
                        layers: list[tuple[str, nn.Linear]]) -> dict[str, InputStats]:
    """Run `model` over `windows` (B, T) of token ids and record each of `layers`' inputs."""
    stats = {name: InputStats() for name, _ in layers}
    handles = [linear.register_forward_pre_hook(lambda module, args, s=stats[name]: s.add(args[0]))
               for name, linear in layers]
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            for batch in windows.split(CALIBRATION_BATCH):
                model(batch)
    finally:
        for handle in handles:
            handle.remove()
        model.train(was_training)
    return stats


def search_input_scales(weight: torch.Tensor, stats: InputStats, group_size: int) -> tuple[torch.Tensor, float]:
    """(input_scales (K,), alpha) minimising the output error of group-wise int4 rounding of `weight` (N, K)
    on the sampled inputs of `stats`."""
    w = weight.detach().float()
    x = stats.sample_rows().to(w.device)  # (R, K)
    exact = x @ w.T  # (R, N)
    activity = stats.mean_abs().to(w.device).clamp(min=1e-6)
    best = (float("inf"), torch.ones_like(activity), 0.0)
    for alpha in ALPHAS:
        scales = activity ** alpha
        scales = scales / (scales.max() * scales.min()).sqrt()
        approx = x @ (dequantize_groups(*quantize_groups(w * scales, group_size)) / scales).T
        error = (approx - exact).pow(2).mean().item()
        if error < best[0]:
            best = (error, scales, alpha)
    return best[1], best[2]
