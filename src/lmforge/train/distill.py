"""Knowledge distillation as an objective: a student trained on a task's hard labels and on a
frozen teacher's temperature-softened predictions (Hinton et al. 2015).

    loss = (1 - alpha) * hard + alpha * T^2 * KL(softmax(teacher / T) || softmax(student / T))

The T^2 keeps the soft term's gradients on the scale of the hard term's as T grows. The objective
wraps the task's own (a classifier's or a tagger's): it runs that objective, reads the student's
logits as they leave the model's forward, and calls the teacher with the very same inputs. Positions
without a label (padding, a word's later pieces) carry no soft term either. Both terms are sums over
labelled positions, so the trainer normalises them by the task's own count, as for the task alone.
"""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from lmforge.errors import ConfigError

IGNORE_INDEX = -100


def soft_target_kl(student_logits: torch.Tensor, teacher_logits: torch.Tensor, temperature: float) -> torch.Tensor:
    """T^2 * KL(p_teacher || p_student) at temperature T, summed over rows; logits (N, classes)."""
    student = F.log_softmax(student_logits.float() / temperature, dim=-1)
    teacher = F.log_softmax(teacher_logits.float() / temperature, dim=-1)
    return temperature ** 2 * F.kl_div(student, teacher, log_target=True, reduction="sum")


class DistillationObjective:
    """`objective` (a task with `label_key`, whose model returns logits) plus the teacher's soft targets."""

    def __init__(self, objective, teacher: nn.Module, *, temperature: float = 2.0, alpha: float = 0.5):
        if temperature <= 0:
            raise ConfigError(f"distill.temperature must be positive, got {temperature}", "pass e.g. 2.0")
        if not 0.0 <= alpha <= 1.0:
            raise ConfigError(f"distill.alpha must be in [0, 1], got {alpha}",
                              "pass the weight of the teacher's soft targets, e.g. 0.5")
        if not hasattr(objective, "label_key"):
            raise ConfigError(f"distillation is not available for the {getattr(objective, 'name', '?')} task",
                              "distill a classification or tagging run")
        self.objective, self.teacher = objective, teacher.eval().requires_grad_(False)
        self.temperature, self.alpha = temperature, alpha

    def __getattr__(self, name):  # everything else (evaluation, collation, labels) is the task's
        objective = self.__dict__.get("objective")
        if objective is None:
            raise AttributeError(name)
        return getattr(objective, name)

    def counts(self, batch: dict) -> dict[str, torch.Tensor]:
        counts = self.objective.counts(batch)
        return {**counts, "kd": next(iter(counts.values()))}

    def __call__(self, model: nn.Module, batch: dict) -> dict[str, torch.Tensor]:
        seen: dict = {}

        def capture(module, args, kwargs, output):
            seen.update(args=args, kwargs=kwargs, logits=output)

        handle = model.register_forward_hook(capture, with_kwargs=True)
        try:
            hard = self.objective(model, batch)
        finally:
            handle.remove()
        labels = batch[self.objective.label_key]
        if next(self.teacher.parameters()).device != labels.device:
            self.teacher.to(labels.device)
        with torch.no_grad():
            teacher_logits = self.teacher(*seen["args"], **seen["kwargs"])
        labelled = labels != IGNORE_INDEX  # (B,) or (B, T)
        kd = soft_target_kl(seen["logits"][labelled], teacher_logits[labelled], self.temperature)
        return {**{t: (1.0 - self.alpha) * v for t, v in hard.items()}, "kd": self.alpha * kd}
