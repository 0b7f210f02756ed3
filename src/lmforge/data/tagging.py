"""NER tag schemes: entity spans to tags and back (IOB1, IOB2/BIO, BIOES, BMES)."""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from lmforge.data.records import short_repr
from lmforge.errors import ConfigError, DataError

SCHEMES = ("IOB1", "IOB2", "BIO", "BMES", "BIOES")

Span = tuple[str, int, int]  # (entity type, start, end_exclusive)


@dataclass(frozen=True)
class _Scheme:
    """How a scheme writes entities."""

    name: str
    prefixes: str  # the prefixes it allows besides the bare "O"
    inside: str  # the prefix of tokens inside an entity
    marks_ends: bool  # single tokens are S-, longer entities close with E-
    begins_every_entity: bool  # B- starts every entity, not only one right after another of its type


_SCHEME_RULES = {
    "IOB1": _Scheme("IOB1", "BI", "I", marks_ends=False, begins_every_entity=False),
    "IOB2": _Scheme("IOB2", "BI", "I", marks_ends=False, begins_every_entity=True),
    "BIOES": _Scheme("BIOES", "BIES", "I", marks_ends=True, begins_every_entity=True),
    "BMES": _Scheme("BMES", "BMES", "M", marks_ends=True, begins_every_entity=True),
}
_ALIASES = {"BIO": "IOB2"}


def _scheme(name: str) -> _Scheme:
    canonical = str(name).upper()
    canonical = _ALIASES.get(canonical, canonical)
    if canonical not in _SCHEME_RULES:
        raise ConfigError(f"unknown tag scheme {name!r}", f"use one of {', '.join(SCHEMES)}")
    return _SCHEME_RULES[canonical]


def _parse_tag(tag: Any, position: int, scheme: _Scheme) -> tuple[str, str | None]:
    if tag == "O":
        return "O", None
    allowed = scheme.prefixes
    if not isinstance(tag, str) or len(tag) < 3 or tag[1] != "-" or tag[0] not in allowed:
        forms = ", ".join(f"{p}-TYPE" for p in allowed)
        raise DataError(
            f"malformed {scheme.name} tag {short_repr(tag)} at position {position}",
            f"{scheme.name} tags are O, {forms}",
        )
    return tag[0], tag[2:]


def tags_to_spans(tags: Sequence[str], scheme: str) -> list[Span]:
    """Entity spans ``(type, start, end_exclusive)`` in order of start.

    Decoding is lenient about sequences, as conlleval is: an I-/M-/E- tag that does not
    continue an entity of its type starts a new one, so model output always decodes.
    A tag that is not valid in ``scheme`` (``X-PER``, ``M-PER`` in IOB2) raises DataError.
    IOB1 and IOB2 decode alike (B- always starts an entity); they differ when encoding.
    """
    rules = _scheme(scheme)
    spans: list[Span] = []
    current: str | None = None
    start = 0
    for i, tag in enumerate(tags):
        prefix, kind = _parse_tag(tag, i, rules)
        if prefix == "O":
            if current is not None:
                spans.append((current, start, i))
            current = None
            continue
        continues = prefix in "IME" and kind == current
        if not continues:
            if current is not None:
                spans.append((current, start, i))
            current, start = kind, i
        if prefix in "ES":
            spans.append((current, start, i + 1))
            current = None
    if current is not None:
        spans.append((current, start, len(tags)))
    return spans


def spans_to_tags(spans: Sequence[Span], n: int, scheme: str) -> list[str]:
    """``n`` tags in ``scheme`` marking ``spans`` (``(type, start, end_exclusive)``).

    IOB1 writes B- only on an entity that directly follows one of the same type; IOB2/BIO
    starts every entity with B-; BIOES/BMES mark single tokens S- and close with E-
    (BMES writes M- inside, BIOES I-). Overlapping or out-of-range spans raise DataError.
    """
    rules = _scheme(scheme)
    tags = ["O"] * n
    previous: Span | None = None
    for span in sorted(spans, key=lambda s: (s[1], s[2])):
        kind, start, end = _check_span(span, n, previous)
        inside = f"{rules.inside}-{kind}"
        if rules.marks_ends and end - start == 1:
            tags[start] = f"S-{kind}"
        elif rules.marks_ends:
            tags[start:end] = [f"B-{kind}"] + [inside] * (end - start - 2) + [f"E-{kind}"]
        else:
            adjacent_same = previous is not None and previous[2] == start and previous[0] == kind
            first = "B" if rules.begins_every_entity or adjacent_same else "I"
            tags[start:end] = [f"{first}-{kind}"] + [inside] * (end - start - 1)
        previous = (kind, start, end)
    return tags


def _check_span(span: Any, n: int, previous: Span | None) -> Span:
    try:
        kind, start, end = span
    except (TypeError, ValueError):
        raise DataError(f"malformed span {short_repr(span)}", "spans are (type, start, end_exclusive)") from None
    if not isinstance(kind, str) or not kind or not isinstance(start, int) or not isinstance(end, int):
        raise DataError(f"malformed span {short_repr(span)}", "spans are (type: str, start: int, end_exclusive: int)")
    if not 0 <= start < end <= n:
        raise DataError(f"span {short_repr(span)} lies outside 0..{n}", "use 0 <= start < end <= number of tokens")
    if previous is not None and start < previous[2]:
        raise DataError(
            f"spans {previous} and {span} overlap", "tag schemes cannot express nested or overlapping entities"
        )
    return kind, start, end


def convert_tags(tags: Sequence[str], src: str, dst: str) -> list[str]:
    """Re-tag a sentence from scheme ``src`` to ``dst`` (through its entity spans)."""
    return spans_to_tags(tags_to_spans(tags, src), len(tags), dst)
