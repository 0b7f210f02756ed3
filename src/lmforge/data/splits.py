"""Deterministic validation splits carved from a list of task examples."""
from __future__ import annotations

import hashlib
from collections.abc import Callable, Sequence
from typing import Any

from lmforge.errors import ConfigError, DataError

Example = dict[str, Any]


def carve_split(
    examples: Sequence[Example],
    *,
    fraction: float = 0.1,
    how: str = "tail",
    key: Callable[[Example], Any] | None = None,
) -> tuple[list[Example], list[Example]]:
    """Split ``examples`` into ``(train, valid)`` the same way on every run and machine.

    * ``how="tail"``: the last ``round(len * fraction)`` examples are validation (at least
      1 and at most ``len - 1``). Right when the file's order is unbiased, e.g. TNEWS,
      whose README recommends its last 10%.
    * ``how="hash"``: an example is validation when
      ``int(md5(str(key(example)).encode("utf-8")).hexdigest(), 16) % 10_000 < round(fraction * 10_000)``.
      Examples with equal keys always land together, so grouping by passage keeps a
      context out of both splits. The default key is the example's ``context`` (qa),
      ``text`` (classify), ``source`` (seq2seq), ``instruction`` + ``"\\n"`` + ``input``
      (chat) or the space-joined ``tokens`` (ner). Suits CMRC2018, DRCD and TREC.

    Both splits keep the input order. A split that comes out empty raises DataError.
    """
    if not 0.0 < fraction < 1.0:
        raise ConfigError(f"fraction={fraction} must be between 0 and 1", "pass e.g. fraction=0.1")
    examples = list(examples)
    if how == "tail":
        if len(examples) < 2:
            raise DataError(f"cannot carve a validation split from {len(examples)} example(s)", "use more data")
        n_valid = min(max(round(len(examples) * fraction), 1), len(examples) - 1)
        return examples[: len(examples) - n_valid], examples[len(examples) - n_valid:]
    if how != "hash":
        raise ConfigError(f"unknown split rule how={how!r}", "use how='tail' or how='hash'")
    key = key or _default_key
    threshold = round(fraction * 10_000)
    train, valid = [], []
    for example in examples:
        digest = hashlib.md5(str(key(example)).encode("utf-8"), usedforsecurity=False).hexdigest()
        (valid if int(digest, 16) % 10_000 < threshold else train).append(example)
    if not train or not valid:
        raise DataError(
            f"hash split of {len(examples)} examples left the {'train' if not train else 'validation'} split empty",
            "use more data, another fraction, or how='tail'",
        )
    return train, valid


def _default_key(example: Example) -> str:
    for name in ("context", "text", "source"):
        if name in example:
            return example[name]
    if "instruction" in example:
        return example["instruction"] + "\n" + example.get("input", "")
    if "tokens" in example:
        return " ".join(example["tokens"])
    raise ConfigError(
        f"no default split key for an example with keys {', '.join(example)}", "pass key=lambda ex: ..."
    )
