"""Pictures and exports of explanations: PNG heatmaps (matplotlib, Agg) and bertviz's attention layout.

Attention maps are {kind: (L, H, T_query, T_key)} as `methods.attention_maps` returns them.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from lmforge.atomic import atomic_path

# bertviz's names for the attention of each stack of an encoder-decoder (its model_view / head_view filters).
BERTVIZ_NAMES = {"self": None, "encoder.self": "Encoder", "decoder.self": "Decoder", "decoder.cross": "Cross"}


def bertviz_params(tokens: list[str], maps: dict[str, torch.Tensor], decoder_tokens: list[str] | None = None) -> dict:
    """The `params` bertviz's head_view script reads: {"attention": [{"name", "attn" (L, H, T, S) nested lists,
    "left_text", "right_text"}], "default_filter", "include_layers"}. An encoder-decoder's decoder rows are
    labelled by position unless `decoder_tokens` names them."""
    entries = []
    for kind, probs in maps.items():
        queries, keys = probs.shape[-2], probs.shape[-1]
        rows = tokens if queries == len(tokens) else (decoder_tokens or [f"<{i}>" for i in range(queries)])
        cols = tokens if keys == len(tokens) else rows
        entries.append({"name": BERTVIZ_NAMES.get(kind, kind), "attn": np.round(probs.numpy(), 5).tolist(),
                        "left_text": rows, "right_text": cols})
    layers = max(p.shape[0] for p in maps.values())
    return {"attention": entries, "default_filter": "0", "include_layers": list(range(layers))}


def _figure(width: float, height: float):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt, plt.figure(figsize=(width, height))


def plot_scores(record: dict, path: Path) -> None:
    """One row of coloured cells, one per token, from the method's scores (diverging around zero)."""
    scores = record.get("scores")
    if scores is None:
        return
    values = np.array(scores, dtype=float)
    bound = float(np.abs(values).max()) or 1.0
    plt, fig = _figure(max(4.0, 0.45 * len(values)), 1.6)
    ax = fig.add_subplot()
    ax.imshow(values[None], cmap="RdBu_r", vmin=-bound, vmax=bound, aspect="auto")
    ax.set_xticks(range(len(values)), record["tokens"], rotation=60, ha="right", fontsize=8)
    ax.set_yticks([])
    ax.set_title(f"{record['method']}: {_target_text(record['target'])} (p={record['probability']:.3f})", fontsize=9)
    _save(plt, fig, path)


def plot_attention(record: dict, maps: dict[str, torch.Tensor], path: Path) -> None:
    """Every layer's head-averaged attention, one panel per layer, a row of panels per attention kind."""
    kinds = list(maps)
    layers = max(p.shape[0] for p in maps.values())
    plt, fig = _figure(2.6 * layers, 2.6 * len(kinds) + 0.4)
    for row, kind in enumerate(kinds):
        for layer in range(maps[kind].shape[0]):
            ax = fig.add_subplot(len(kinds), layers, row * layers + layer + 1)
            ax.imshow(maps[kind][layer].mean(0).numpy(), cmap="viridis", vmin=0.0)
            ax.set_title(f"{kind} layer {layer}", fontsize=8)
            ax.set_xticks([])
            ax.set_yticks([])
    fig.suptitle(f"attention (head mean): {record['text'][:60]}", fontsize=9)
    _save(plt, fig, path)


def _target_text(target: dict) -> str:
    return str(target.get("label", target.get("token", "")))


def _save(plt, fig, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=110, format="png")
    plt.close(fig)
