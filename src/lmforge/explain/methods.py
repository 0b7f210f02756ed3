"""Token attributions of a `Subject`: raw attention, attention rollout, integrated gradients, gradient x input.

Each returns per-token scores (T,) for the target, plus what the method itself produced (maps, deltas).
Shapes: L layers, H heads, T tokens.
"""
from __future__ import annotations

import torch

from lmforge.models.common.attention_record import record_attention
from lmforge.explain.subject import Subject

# Integrated gradients: Riemann/Gauss-Legendre steps tried in turn until the completeness error is small.
IG_STEPS = (32, 64, 128, 256, 512)
IG_TOLERANCE = 0.01  # |sum of attributions - (F(x) - F(baseline))| <= 1% of |F(x) - F(baseline)|


def attention_maps(subject: Subject) -> dict[str, torch.Tensor]:
    """{kind: probabilities (L, H, T_query, T_key)} of one forward pass over the subject's input."""
    with torch.no_grad(), record_attention(subject.model) as record:
        subject.score(subject.input_ids)
    return {kind: record.layers(kind)[:, 0].cpu() for kind in record.kinds}


def rollout(maps: torch.Tensor) -> torch.Tensor:
    """Attention rollout (Abnar & Zuidema 2020) of one stack's maps (L, H, T, T): each layer's head-averaged
    attention mixed half and half with the identity (the residual path), rows renormalised, and the layers
    multiplied from the first up. Row i of the (T, T) result is how much token i's top representation draws
    on each input token."""
    T = maps.shape[-1]
    eye = torch.eye(T, dtype=torch.float64)
    joint = eye
    for layer in maps.double():
        mixed = 0.5 * layer.mean(0) + 0.5 * eye
        mixed = mixed / mixed.sum(-1, keepdim=True)
        joint = mixed @ joint
    return joint.float()


def focus_row(matrix: torch.Tensor, subject: Subject) -> torch.Tensor:
    """(T,) the mean of `matrix`'s rows at the subject's focus positions, special tokens zeroed."""
    row = matrix[subject.focus].mean(0).clone()
    row[torch.tensor(subject.special)] = 0.0
    return row


def attention_scores(subject: Subject, maps: dict[str, torch.Tensor] | None = None) -> torch.Tensor:
    """(T,) raw attention: the last layer's head-averaged attention from the focus rows."""
    maps = maps or attention_maps(subject)
    return focus_row(maps[subject.stack][-1].mean(0), subject)


def rollout_scores(subject: Subject, maps: dict[str, torch.Tensor] | None = None) -> torch.Tensor:
    maps = maps or attention_maps(subject)
    return focus_row(rollout(maps[subject.stack]), subject)


def integrated_gradients(subject: Subject, steps: int | None = None, *,
                         tolerance: float = IG_TOLERANCE) -> dict:
    """Integrated gradients of F on the token embeddings (Captum's LayerIntegratedGradients) from the baseline
    (special tokens kept, the rest padding), summed over the embedding width: {"scores" (T,), "delta", "steps",
    "f_input", "f_baseline", "relative_error"}. With `steps` None, the steps in IG_STEPS are tried in turn until
    the completeness error |delta| is within `tolerance` of |F(x) - F(baseline)|."""
    from captum.attr import LayerIntegratedGradients  # slow to import (it loads matplotlib and scipy)

    ig = LayerIntegratedGradients(lambda ids: subject.score(ids), subject.embedding)
    with torch.no_grad():
        f_input, f_base = (float(v) for v in subject.score(torch.cat([subject.input_ids, subject.baseline_ids])))
    gap = abs(f_input - f_base)
    for n in ((steps,) if steps else IG_STEPS):
        attributions, delta = ig.attribute(subject.input_ids, baselines=subject.baseline_ids, n_steps=n,
                                           internal_batch_size=32, return_convergence_delta=True)
        relative = abs(float(delta)) / gap if gap > 0 else 0.0
        if relative <= tolerance:
            break
    scores = attributions[0].sum(-1).detach().float().cpu()  # (T,)
    return {"scores": scores, "delta": float(delta), "steps": n, "f_input": f_input, "f_baseline": f_base,
            "relative_error": relative}


def saliency(subject: Subject) -> torch.Tensor:
    """(T,) gradient x input on the token embeddings, summed over the embedding width."""
    from captum.attr import LayerGradientXActivation  # slow to import (it loads matplotlib and scipy)

    attributions = LayerGradientXActivation(lambda ids: subject.score(ids), subject.embedding).attribute(
        subject.input_ids)
    return attributions[0].sum(-1).detach().float().cpu()
