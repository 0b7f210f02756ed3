"""Knowledge distillation as an objective: a student trained on a task's hard labels and on a
frozen teacher's temperature-softened predictions (Hinton et al. 2015).

    loss = (1 - alpha) * hard + alpha * T^2 * KL(softmax(teacher / T) || softmax(student / T))

The T^2 keeps the soft term's gradients on the scale of the hard term's as T grows. With
`hidden_weight` > 0 a third term pulls the student's block outputs towards the teacher's (as in
TinyBERT and PKD): student block i is matched with teacher block round((i + 1) L_t / L_s) - 1, so a
student of every other layer learns what each pair of teacher layers computes; the mean squared error
per token (over the attention mask) is summed over the matched blocks. A student narrower (or wider) than
its teacher has its states mapped to the teacher's width by one learned linear projection shared by the
blocks (TinyBERT's W_h), which trains with the student and is not part of the saved model. With
`attention_weight` > 0 each matched student block's self-attention distributions are pulled towards the
teacher block's: KL(teacher || student) per query row over the keys, averaged over heads (per head when
both have the same head count, else between the head-averaged maps), per token over the attention mask and
summed over the blocks (TinyBERT, MiniLM). Attention maps do not depend on the width, so this term also
teaches a narrower student. Both models then compute attention explicitly instead of through the fused
kernel, which costs time.

The objective wraps the task's own (a classifier's or a tagger's, or next-token prediction for a language
model): it runs that objective, reads the student's logits as they leave the model's forward, and calls the
teacher with the very same inputs. Positions without a label (padding, a word's later pieces) carry no soft
term either. Both terms are sums over labelled positions, so the trainer normalises them by the task's own
count, as for the task alone.
"""
from __future__ import annotations

import contextlib

import torch
import torch.nn as nn
import torch.nn.functional as F

from lmforge.errors import ConfigError
from lmforge.models.common.attention_record import record_attention
from lmforge.models.heads import block_lists

IGNORE_INDEX = -100


def soft_target_kl(student_logits: torch.Tensor, teacher_logits: torch.Tensor, temperature: float) -> torch.Tensor:
    """T^2 * KL(p_teacher || p_student) at temperature T, summed over rows; logits (N, classes)."""
    student = F.log_softmax(student_logits.float() / temperature, dim=-1)
    teacher = F.log_softmax(teacher_logits.float() / temperature, dim=-1)
    return temperature ** 2 * F.kl_div(student, teacher, log_target=True, reduction="sum")


class DistillationObjective:
    """`objective` (a task with `label_key`, whose model returns logits) plus the teacher's soft targets."""

    def __init__(self, objective, teacher: nn.Module, *, temperature: float = 2.0, alpha: float = 0.5,
                 hidden_weight: float = 0.0, attention_weight: float = 0.0):
        if temperature <= 0:
            raise ConfigError(f"distill.temperature must be positive, got {temperature}", "pass e.g. 2.0")
        if not 0.0 <= alpha <= 1.0:
            raise ConfigError(f"distill.alpha must be in [0, 1], got {alpha}",
                              "pass the weight of the teacher's soft targets, e.g. 0.5")
        if not hasattr(objective, "label_key"):
            raise ConfigError(f"distillation is not available for the {getattr(objective, 'name', '?')} task",
                              "distill a classification or tagging run")
        self.objective, self.teacher = objective, teacher.eval().requires_grad_(False)
        # A decoder that sums its loss itself never returns the logits the soft term needs.
        for module in teacher.modules():
            if getattr(module, "sums_loss_from_labels", False):
                module.sums_loss_from_labels = False
        if hidden_weight < 0:
            raise ConfigError(f"distill.hidden_weight must be 0 or more, got {hidden_weight}", "pass e.g. 1.0")
        if attention_weight < 0:
            raise ConfigError(f"distill.attention_weight must be 0 or more, got {attention_weight}", "pass e.g. 1.0")
        self.temperature, self.alpha, self.hidden_weight = temperature, alpha, hidden_weight
        self.attention_weight = attention_weight
        self.projection: nn.Linear | None = None

    def trainable(self, model: nn.Module) -> nn.Module | None:
        """The learned projection of hidden states to the teacher's width, when the widths differ (see
        lmforge.train.objective_params); None otherwise."""
        for module in model.modules():  # called once before training: the soft term needs the student's logits
            if getattr(module, "sums_loss_from_labels", False):
                module.sums_loss_from_labels = False
        if not self.hidden_weight:
            return None
        ours, theirs = _width(model), _width(self.teacher)
        if ours is None or theirs is None or ours == theirs:
            return None
        self.projection = nn.Linear(ours, theirs, bias=False)
        return self.projection

    def __getattr__(self, name):  # everything else (evaluation, collation, labels) is the task's
        objective = self.__dict__.get("objective")
        if objective is None:
            raise AttributeError(name)
        return getattr(objective, name)

    def counts(self, batch: dict) -> dict[str, torch.Tensor]:
        counts = self.objective.counts(batch)
        units = next(iter(counts.values()))
        return {**counts, "kd": units, **({"hidden": units} if self.hidden_weight else {}),
                **({"attention": units} if self.attention_weight else {})}

    def __call__(self, model: nn.Module, batch: dict) -> dict[str, torch.Tensor]:
        seen: dict = {}

        def capture(module, args, kwargs, output):
            seen.update(args=args, kwargs=kwargs, logits=output)

        handles = [model.register_forward_hook(capture, with_kwargs=True)]
        student_states, teacher_states = [], []
        if self.hidden_weight:
            handles += _record_block_outputs(model, student_states)
            handles += _record_block_outputs(self.teacher, teacher_states)
        recording = lambda m, **kw: record_attention(m, **kw) if self.attention_weight \
            else contextlib.nullcontext()  # noqa: E731
        try:
            with recording(model, keep_grad=True) as student_attention:
                hard = self.objective(model, batch)
            labels = batch[self.objective.label_key]
            if next(self.teacher.parameters()).device != labels.device:
                self.teacher.to(labels.device)
            with torch.no_grad(), recording(self.teacher) as teacher_attention:
                teacher_logits = self.teacher(*seen["args"], **seen["kwargs"])
        finally:
            for handle in handles:
                handle.remove()
        labelled = labels != IGNORE_INDEX  # (B,) or (B, T)
        kd = soft_target_kl(seen["logits"][labelled], teacher_logits[labelled], self.temperature)
        terms = {**{t: (1.0 - self.alpha) * v for t, v in hard.items()}, "kd": self.alpha * kd}
        if self.hidden_weight:
            units = labelled.sum()
            if self.projection is not None:
                student_states = [self.projection(h) for h in student_states]  # (B, T, C_teacher)
            terms["hidden"] = self.hidden_weight * hidden_state_loss(student_states, teacher_states,
                                                                     batch.get("attention_mask"), units)
        if self.attention_weight:
            terms["attention"] = self.attention_weight * attention_kl(
                _self_attention(student_attention), _self_attention(teacher_attention), batch.get("attention_mask"),
                labelled.sum())
        return terms


def matched_blocks(student_layers: int, teacher_layers: int) -> list[int]:
    """The teacher block each student block's output is compared with."""
    return [round((i + 1) * teacher_layers / student_layers) - 1 for i in range(student_layers)]


def hidden_state_loss(student: list[torch.Tensor], teacher: list[torch.Tensor], mask: torch.Tensor | None,
                      units: torch.Tensor) -> torch.Tensor:
    """Sum over matched blocks of the mean squared error per token over `mask` (B, T), as a sum over `units`
    (the task's labelled units, which the trainer divides by): hidden states (B, T, C) per block."""
    if student[0].shape[-1] != teacher[0].shape[-1]:
        raise ConfigError(f"hidden-state distillation needs the student's width ({student[0].shape[-1]}) to equal "
                          f"the teacher's ({teacher[0].shape[-1]})",
                          "leave --distill.hidden_weight at 0, or train the student with lmforge distill, which "
                          "learns a projection between the widths")
    keep = torch.ones(student[0].shape[:2], dtype=torch.bool, device=student[0].device) if mask is None \
        else mask.bool()
    total = student[0].new_zeros(())
    for s, j in zip(student, matched_blocks(len(student), len(teacher))):
        total = total + (s.float() - teacher[j].float()).pow(2).mean(-1)[keep].sum()
    return total * units / keep.sum().clamp(min=1)


def attention_kl(student: torch.Tensor, teacher: torch.Tensor, mask: torch.Tensor | None,
                 units: torch.Tensor) -> torch.Tensor:
    """Sum over matched blocks of KL(teacher || student) between attention distributions, averaged over heads,
    per query token over `mask` (B, T), as a sum over `units` (see hidden_state_loss). Maps (L, B, nh, T, S)
    of probabilities; a head count that differs compares the head-averaged maps."""
    if student.shape[2] != teacher.shape[2]:
        student, teacher = student.mean(2, keepdim=True), teacher.mean(2, keepdim=True)
    keep = torch.ones(student.shape[1], student.shape[3], dtype=torch.bool, device=student.device) if mask is None \
        else mask.bool()  # (B, T): the queries that count
    total = student.new_zeros(())
    for i, j in enumerate(matched_blocks(student.shape[0], teacher.shape[0])):
        p, q = teacher[j].float(), student[i].float()  # (B, nh, T, S)
        # Keys the mask hides have probability 0 under both: they add nothing (0 log 0 = 0).
        kl = torch.where(p > 0, p * (p.clamp_min(1e-30).log() - q.clamp_min(1e-30).log()), 0.0).sum(-1)
        total = total + kl.mean(1)[keep].sum()  # (B, T) averaged over heads, summed over kept queries
    return total * units / keep.sum().clamp(min=1)


def _width(model: nn.Module) -> int | None:
    bare = getattr(model, "module", model)
    return getattr(getattr(getattr(bare, "backbone", bare), "config", None), "n_embd", None)


def _self_attention(record) -> torch.Tensor:
    """Every layer's self-attention probabilities of the recorded forward pass: (L, B, nh, T, S)."""
    if "self" not in record.kinds:
        raise ConfigError("attention distillation needs a model with one stack of self-attention layers",
                          "leave --distill.attention_weight at 0")
    return record.layers("self")


def _record_block_outputs(model: nn.Module, into: list) -> list:
    bare = getattr(model, "module", model)  # under DDP, the model it wraps
    blocks = [b for stack in block_lists(getattr(bare, "backbone", bare)) for b in stack]
    if not blocks:
        raise ConfigError(f"{type(model).__name__} has no transformer blocks to match hidden states of",
                          "leave --distill.hidden_weight at 0")

    def record(module, args, output):
        into.append(output[0] if isinstance(output, tuple) else output)

    return [b.register_forward_hook(record) for b in blocks]
