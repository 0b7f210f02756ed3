"""State dicts both ways through an architecture's key map.

Import is strict: every HF tensor must be used by a row, be a known duplicate of a tied weight, or be a
known non-weight buffer; every row must find its tensors with the shapes the config implies.
"""
from __future__ import annotations

import torch
import torch.nn as nn

from lmforge.errors import CheckpointError
from lmforge.interop.adapter import Architecture
from lmforge.interop.architectures import architecture, export_architecture
from lmforge.interop.keymap import KeyMap, Row
from lmforge.models.registry import build_model


def state_from_hf(hf_state: dict[str, torch.Tensor], arch: str | Architecture, cfg) -> dict[str, torch.Tensor]:
    """lmforge state dict (tied duplicates left out) from an HF state dict; strict, see the module docstring."""
    return convert_state_from_hf(hf_state, arch, cfg, source="the state dict")[0]


def convert_state_from_hf(hf_state: dict, arch: str | Architecture, cfg, *, source: str):
    """(our state dict, optional groups the checkpoint lacks); `source` names the weights in errors."""
    arch = architecture(arch) if isinstance(arch, str) else arch
    keys = set(hf_state)
    km = arch.key_map(cfg, keys)
    expected = _expected_shapes(cfg)
    absent = _absent_groups(km, keys)
    rows = [r for r in km.rows if r.group not in absent]

    missing = [k for r in rows for k in r.theirs if k not in keys]
    consumed = {k for r in rows for k in r.theirs} | (km.buffers & keys) | (set(km.aliases) & keys)
    unexpected = sorted(keys - consumed)
    state, shapes = {}, []
    if not missing:
        for row in rows:
            tensor = _assemble(row, hf_state, expected[row.ours], shapes)
            if tensor is not None:
                state[row.ours] = tensor
    _check_aliases(km, hf_state, source)
    if missing or unexpected or shapes:
        detail = "; ".join(f"{label} {_first_few(items)}" for label, items in
                           (("missing", missing), ("unexpected", unexpected), ("shape mismatch", shapes)) if items)
        raise CheckpointError(f"weights in {source} do not match the config ({detail})",
                              "use the config.json the weights were saved with")
    return state, absent


def _absent_groups(km: KeyMap, keys: set[str]) -> list[str]:
    """Optional groups (BERT's heads) of which the checkpoint holds no tensor at all."""
    groups: dict[str | None, list[Row]] = {}
    for row in km.rows:
        groups.setdefault(row.group, []).append(row)
    return [g for g, rows in groups.items() if g is not None and not any(k in keys for r in rows for k in r.theirs)]


def _check_aliases(km: KeyMap, hf_state: dict, source: str) -> None:
    for alias, original in km.aliases.items():
        if alias in hf_state and original in hf_state and not torch.equal(hf_state[alias], hf_state[original]):
            raise CheckpointError(f"{alias} in {source} differs from {original}, although the config ties them",
                                  "set tie_word_embeddings to false in config.json if the checkpoint is untied")


def _first_few(items: list[str], n: int = 3) -> str:
    return ", ".join(items[:n]) + (f" (+{len(items) - n} more)" if len(items) > n else "")


def _assemble(row: Row, hf_state: dict, want: torch.Size, problems: list[str]) -> torch.Tensor | None:
    """Our tensor for `row`, or None after recording each HF tensor whose shape does not fit the config."""
    whole = (want[1], want[0]) if row.transpose else tuple(want)  # our tensor in HF's layout
    fits = True
    for key, size in zip(row.theirs, row.split or (whole[0],)):
        shape, target = tuple(hf_state[key].shape), (size, *whole[1:])
        if shape != target:
            problems.append(f"{key} is {shape}, the config implies {target}")
            fits = False
    if not fits:
        return None
    parts = [hf_state[key] for key in row.theirs]
    tensor = torch.cat(parts, dim=0) if len(parts) > 1 else parts[0]
    tensor = tensor.t() if row.transpose else tensor
    return tensor.detach().to(torch.float32).contiguous()


def _expected_shapes(cfg) -> dict[str, torch.Size]:
    return {k: v.shape for k, v in build_model(cfg, device="meta").state_dict().items()}


def state_to_hf(model: nn.Module) -> dict[str, torch.Tensor]:
    """HF state dict (tied duplicates left out, as `save_pretrained` writes it) of an lmforge model."""
    arch = export_architecture(model)
    ours = model.state_dict()
    out = {}
    for row in arch.key_map(model.config, None).rows:
        t = ours[row.ours].detach()
        t = t.t() if row.transpose else t
        parts = t.split(list(row.split), dim=0) if row.split else (t,)
        for key, part in zip(row.theirs, parts):
            out[key] = part.contiguous().clone()  # safetensors refuses views that share storage
    return out
