"""Config sections that change what a run optimises: differential privacy (DP-SGD) and distillation."""
from __future__ import annotations

import math
from dataclasses import dataclass

from lmforge.config.checks import check as _check

ACCOUNTANTS = ("prv", "rdp")


@dataclass
class PrivacyConfig:
    """Differentially private training (DP-SGD): each example's gradient is clipped to `max_grad_norm` and
    Gaussian noise is added to every step's sum. Off unless `epsilon` (a target budget the noise is chosen
    for) or `noise_multiplier` (the noise itself) is set; exactly one of the two."""

    epsilon: float | None = None         # privacy budget to spend over train.max_steps
    delta: float | None = None           # None: 1 / (10 N) for N training examples; must stay below 1 / N
    noise_multiplier: float | None = None  # noise std / max_grad_norm (instead of epsilon)
    max_grad_norm: float = 1.0           # per-example gradient clipping norm
    accountant: str = "prv"              # prv (tighter) or rdp

    @property
    def enabled(self) -> bool:
        return self.epsilon is not None or self.noise_multiplier is not None

    def __post_init__(self):
        _check(self.epsilon is None or self.noise_multiplier is None,
               "privacy.epsilon and privacy.noise_multiplier are both set",
               "pass one: --privacy.epsilon for a budget, or --privacy.noise_multiplier for a noise level")
        _check(self.epsilon is None or (math.isfinite(self.epsilon) and self.epsilon > 0),
               f"privacy.epsilon must be a positive number, got {self.epsilon}", "pass e.g. --privacy.epsilon 8")
        _check(self.noise_multiplier is None or self.noise_multiplier > 0,
               f"privacy.noise_multiplier must be > 0, got {self.noise_multiplier}",
               "pass e.g. --privacy.noise_multiplier 1.0")
        _check(self.delta is None or 0.0 < self.delta < 1.0, f"privacy.delta must be in (0, 1), got {self.delta}",
               "pass a delta below 1 / (training examples), e.g. --privacy.delta 1e-5")
        _check(self.max_grad_norm > 0, f"privacy.max_grad_norm must be > 0, got {self.max_grad_norm}",
               "pass e.g. --privacy.max_grad_norm 1.0")
        _check(self.accountant in ACCOUNTANTS, f"privacy.accountant must be prv or rdp, got {self.accountant!r}",
               "pass --privacy.accountant prv")


@dataclass
class DistillConfig:
    """Distillation: the weight of the teacher's soft targets against the hard labels, and their temperature."""

    temperature: float = 2.0             # softens both distributions; the soft term is scaled by its square
    alpha: float = 0.5                   # loss = (1 - alpha) * hard labels + alpha * soft targets
    hidden_weight: float = 0.0           # > 0: also match block outputs to the teacher's (equal widths)
    attention_weight: float = 0.0        # > 0: also match self-attention distributions (KL), any width

    def __post_init__(self):
        _check(self.temperature > 0, f"distill.temperature must be positive, got {self.temperature}",
               "pass e.g. --distill.temperature 2")
        _check(0.0 <= self.alpha <= 1.0, f"distill.alpha must be in [0, 1], got {self.alpha}",
               "pass e.g. --distill.alpha 0.5")
        _check(self.hidden_weight >= 0, f"distill.hidden_weight must be 0 or more, got {self.hidden_weight}",
               "pass e.g. --distill.hidden_weight 1.0")
        _check(self.attention_weight >= 0, f"distill.attention_weight must be 0 or more, got {self.attention_weight}",
               "pass e.g. --distill.attention_weight 1.0")
