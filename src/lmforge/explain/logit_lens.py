"""The logit lens (nostalgebraist 2020): each layer's residual stream read through the decoder's final norm
and output layer, to see which next tokens it already points to. Shapes: L layers, T tokens, V vocabulary."""
from __future__ import annotations

import torch
import torch.nn as nn


def can_read_residuals(model: nn.Module) -> bool:
    """Whether `model` is a single stack of `blocks` ending in `ln_f` and `lm_head` (decoder language models)."""
    return all(isinstance(getattr(model, name, None), nn.Module) for name in ("blocks", "ln_f", "lm_head"))


def layer_probabilities(model: nn.Module, input_ids: torch.Tensor) -> torch.Tensor:
    """(L, T, V) next-token probabilities from the residual stream after each block, for ids (1, T)."""
    residuals: list[torch.Tensor] = []
    hooks = [block.register_forward_hook(lambda _m, _a, out: residuals.append(out.detach()))
             for block in model.blocks]
    try:
        with torch.no_grad():
            model(input_ids)
            stream = torch.cat(residuals)  # (L, T, C)
            return torch.softmax(model.lm_head(model.ln_f(stream)).float(), dim=-1)
    finally:
        for hook in hooks:
            hook.remove()


def logit_lens(model: nn.Module, input_ids: torch.Tensor, decode, *, top_k: int = 5) -> list[dict]:
    """Per layer: the top `top_k` next tokens (text, probability) at every position. `decode` maps an id to
    its text."""
    probs = layer_probabilities(model, input_ids)
    top = probs.topk(top_k, dim=-1)
    return [{"layer": layer, "top": [[[decode(int(i)), round(float(p), 6)] for p, i in zip(ps, ids)]
                                     for ps, ids in zip(top.values[layer], top.indices[layer])]}
            for layer in range(probs.shape[0])]
