"""The vocabulary of key maps: one `Row` per lmforge tensor naming the Hugging Face tensor(s) it is made of."""
from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class Row:
    """One lmforge tensor and the HF tensor(s) it is made of.

    Several HF tensors are concatenated along dim 0 (q, k, v -> our fused qkv), with `split` giving
    each one's rows. `transpose` marks GPT-2's Conv1D, which stores (in, out) where nn.Linear has (out, in).
    `group` names an optional part that some checkpoints leave out (BERT's heads): it is taken whole or
    not at all, and when it is absent our freshly initialised tensors stay.
    """

    ours: str
    theirs: tuple[str, ...]
    split: tuple[int, ...] | None = None
    transpose: bool = False
    group: str | None = None


def same(ours: str, theirs: str, group: str | None = None) -> Row:
    return Row(ours, (theirs,), group=group)


def fused(ours: str, theirs: tuple[str, ...], split: tuple[int, ...]) -> Row:
    return Row(ours, theirs, split=split)


def conv1d(ours: str, theirs: str) -> Row:
    return Row(ours, (theirs,), transpose=True)


@dataclass
class KeyMap:
    rows: list[Row]
    # HF keys some checkpoints store although they duplicate another HF tensor (tied weights): key -> original.
    aliases: dict[str, str] = field(default_factory=dict)
    # HF keys that hold no weights (attention masks, rotary frequencies, position ids) and are dropped.
    buffers: set[str] = field(default_factory=set)


def hf_prefix(hf_keys: set[str] | None, prefix: str) -> str:
    """`prefix` ("transformer.", "bert.") unless the checkpoint was saved from the bare base model without it."""
    if hf_keys is None or any(k.startswith(prefix) for k in hf_keys):
        return prefix
    return ""


def output_layer(km: KeyMap, tied: bool, embedding: str) -> None:
    """Add the output layer to `km`: a tied one duplicates the HF embedding `embedding`, an untied one is its own."""
    if tied:
        km.aliases["lm_head.weight"] = embedding
    else:
        km.rows.append(same("lm_head.weight", "lm_head.weight"))
