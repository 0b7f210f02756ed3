"""Explaining a model's outputs: attention maps read from its own attention layers, attention rollout,
integrated gradients and gradient x input on the embeddings, the logit lens, faithfulness scores, and the
files people look at (JSON, PNG heatmaps, a self-contained HTML viewer, a bertviz export)."""
