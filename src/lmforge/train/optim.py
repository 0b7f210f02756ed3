"""Optimizers with the usual parameter grouping, and learning-rate schedules as pure functions of the step."""
from __future__ import annotations

import math

import torch
import torch.nn as nn

from lmforge.config import TrainConfig


def parameter_groups(model: nn.Module, weight_decay: float) -> list[dict]:
    """Decay only matrices that are not embeddings: norms, biases and embedding tables are left alone,
    since shrinking them towards zero hurts rather than regularises.

    A model may scale the learning rate of some parameters (discriminative fine-tuning: lower rates
    for lower layers) with a method `lr_scale_for(parameter_name) -> float`; each group then carries
    its `lr_scale`, which `set_lr` applies on every step.
    """
    scale_of = getattr(model, "lr_scale_for", None)
    groups: dict[tuple[bool, float], list] = {}
    seen = set()
    embedding_params = {id(m.weight) for m in model.modules() if isinstance(m, nn.Embedding)}
    for name, p in model.named_parameters():
        if not p.requires_grad or id(p) in seen:
            continue
        seen.add(id(p))
        decays = p.dim() >= 2 and id(p) not in embedding_params
        scale = float(scale_of(name)) if scale_of is not None else 1.0
        groups.setdefault((decays, scale), []).append(p)
    ordered = sorted(groups.items(), key=lambda kv: (not kv[0][0], -kv[0][1]))
    return [{"params": params, "weight_decay": weight_decay if decays else 0.0, "lr_scale": scale}
            for (decays, scale), params in ordered]


def build_optimizer(model: nn.Module, cfg: TrainConfig, *, device_type: str = "cpu",
                    sharded: bool = False) -> torch.optim.Optimizer:
    """`sharded`: the parameters are FSDP's DTensors, which have no fused SGD kernel (fused Adam/AdamW they have)."""
    groups = parameter_groups(model, cfg.weight_decay)
    name = cfg.optimizer
    # The fused kernels exist for these optimizers on CPU and CUDA and save a pass over the parameters.
    fusable = device_type in ("cpu", "cuda") and not (sharded and name == "sgd")
    fused = {"fused": True} if fusable else {}
    if name == "adamw":
        return torch.optim.AdamW(groups, lr=cfg.lr, betas=cfg.betas, eps=cfg.eps, **fused)
    if name == "adam":
        # Plain Adam folds weight decay into the gradient (L2), unlike AdamW's decoupled decay.
        return torch.optim.Adam(groups, lr=cfg.lr, betas=cfg.betas, eps=cfg.eps, **fused)
    if name == "sgd":
        return torch.optim.SGD(groups, lr=cfg.lr, momentum=cfg.momentum, nesterov=cfg.nesterov and cfg.momentum > 0,
                               **fused)
    if name == "adagrad":
        return torch.optim.Adagrad(groups, lr=cfg.lr, eps=cfg.eps)
    if name == "rmsprop":
        return torch.optim.RMSprop(groups, lr=cfg.lr, eps=cfg.eps, momentum=cfg.momentum)
    raise ValueError(name)


def lr_multiplier(step: int, cfg: TrainConfig) -> float:
    """Learning-rate multiplier for optimizer step `step` (0-based): linear warmup, then the schedule.

    cosine/linear decay from 1 to `min_lr_ratio` over the remaining steps; exponential multiplies by
    `gamma` per step; wsd (warmup-stable-decay) holds 1 and decays linearly over the last
    `decay_fraction` of training.
    """
    warmup, total, floor = cfg.warmup_steps, cfg.max_steps, cfg.min_lr_ratio
    if step < warmup:
        return (step + 1) / warmup
    if cfg.schedule == "constant":
        return 1.0
    if cfg.schedule == "exponential":
        return cfg.gamma ** (step - warmup)
    if cfg.schedule == "wsd":
        decay_start = max(warmup, total - int(round(cfg.decay_fraction * total)))
        if step < decay_start:
            return 1.0
        progress = min(1.0, (step - decay_start) / max(1, total - decay_start))
        return 1.0 - (1.0 - floor) * progress
    progress = min(1.0, (step - warmup) / max(1, total - warmup))
    if cfg.schedule == "linear":
        return 1.0 - (1.0 - floor) * progress
    return floor + (1.0 - floor) * 0.5 * (1.0 + math.cos(math.pi * progress))


def set_lr(optimizer: torch.optim.Optimizer, lr: float) -> None:
    for group in optimizer.param_groups:
        group["lr"] = lr * group.get("lr_scale", 1.0)
