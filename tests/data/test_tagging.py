import random

import pytest

from lmforge.data.tagging import SCHEMES, convert_tags, spans_to_tags, tags_to_spans
from lmforge.errors import ConfigError, DataError


@pytest.mark.parametrize(
    "scheme, tags",
    [
        ("IOB1", ["I-PER", "I-PER", "B-PER", "O", "I-LOC"]),
        ("IOB2", ["B-PER", "I-PER", "B-PER", "O", "B-LOC"]),
        ("BIO", ["B-PER", "I-PER", "B-PER", "O", "B-LOC"]),
        ("BIOES", ["B-PER", "E-PER", "S-PER", "O", "S-LOC"]),
        ("BMES", ["B-PER", "E-PER", "S-PER", "O", "S-LOC"]),
    ],
)
def test_spans_and_tags_per_scheme(scheme, tags):
    spans = [("PER", 0, 2), ("PER", 2, 3), ("LOC", 4, 5)]
    assert tags_to_spans(tags, scheme) == spans
    assert spans_to_tags(spans, 5, scheme) == tags


def test_inside_tags_per_scheme():
    spans = [("ORG", 1, 5)]
    assert spans_to_tags(spans, 6, "BMES") == ["O", "B-ORG", "M-ORG", "M-ORG", "E-ORG", "O"]
    assert spans_to_tags(spans, 6, "BIOES") == ["O", "B-ORG", "I-ORG", "I-ORG", "E-ORG", "O"]
    assert spans_to_tags(spans, 6, "IOB1") == ["O", "I-ORG", "I-ORG", "I-ORG", "I-ORG", "O"]
    assert convert_tags(["O", "B-ORG", "M-ORG", "M-ORG", "E-ORG", "O"], "BMES", "bio") == [
        "O", "B-ORG", "I-ORG", "I-ORG", "I-ORG", "O"
    ]


def test_lenient_sequences_decode_like_conlleval():
    assert tags_to_spans(["O", "I-PER", "I-LOC", "O"], "IOB2") == [("PER", 1, 2), ("LOC", 2, 3)]
    assert tags_to_spans(["M-ORG", "E-ORG", "B-ORG", "M-ORG"], "BMES") == [("ORG", 0, 2), ("ORG", 2, 4)]


def test_round_trip_across_all_schemes():
    rng = random.Random(0)
    for _ in range(300):
        n = rng.randint(0, 12)
        spans, i = [], 0
        while i < n:
            if rng.random() < 0.4:
                end = rng.randint(i + 1, n)
                spans.append((rng.choice(["PER", "LOC", "B-X"]), i, end))  # a type may contain "-"
                i = end
            else:
                i += 1
        for scheme in SCHEMES:
            tags = spans_to_tags(spans, n, scheme)
            assert tags_to_spans(tags, scheme) == spans
            for other in SCHEMES:
                assert convert_tags(convert_tags(tags, scheme, other), other, scheme) == tags


@pytest.mark.parametrize(
    "tag, scheme",
    [("X-PER", "BIO"), ("M-PER", "IOB2"), ("I-PER", "BMES"), ("E-PER", "IOB1"), ("B-", "BIOES"), ("PER", "BIO"), (None, "BIO")],
)
def test_malformed_tag(tag, scheme):
    with pytest.raises(DataError, match="malformed"):
        tags_to_spans(["O", tag], scheme)


def test_bad_spans_and_scheme():
    with pytest.raises(DataError, match="overlap"):
        spans_to_tags([("PER", 0, 2), ("LOC", 1, 3)], 3, "BIO")
    with pytest.raises(DataError):
        spans_to_tags([("PER", 2, 4)], 3, "BIO")
    with pytest.raises(ConfigError):
        tags_to_spans(["O"], "IOBES2")
