import hashlib

import pytest

from lmforge.data.splits import carve_split
from lmforge.errors import ConfigError, DataError


def test_carve_tail():
    examples = [{"text": str(i)} for i in range(10)]
    train, valid = carve_split(examples, fraction=0.2)
    assert train == examples[:8] and valid == examples[8:]
    assert carve_split(examples[:3], fraction=0.01) == (examples[:2], examples[2:3])  # at least one


def test_carve_hash_groups_by_key_and_follows_the_documented_rule():
    examples = [{"context": f"passage {i % 40}", "question": f"q{i}"} for i in range(400)]
    train, valid = carve_split(examples, fraction=0.25, how="hash")
    assert {e["context"] for e in train}.isdisjoint({e["context"] for e in valid})
    expected = [e for e in examples if int(hashlib.md5(e["context"].encode()).hexdigest(), 16) % 10_000 < 2500]
    assert valid == expected and len(train) + len(valid) == 400
    assert carve_split(examples, fraction=0.25, how="hash") == (train, valid)
    by_question = carve_split(examples, fraction=0.25, how="hash", key=lambda e: e["question"])
    assert by_question != (train, valid)


def test_carve_errors():
    with pytest.raises(ConfigError):
        carve_split([{"text": "a"}] * 5, fraction=1.0)
    with pytest.raises(ConfigError):
        carve_split([{"text": "a"}] * 5, how="random")
    with pytest.raises(DataError):
        carve_split([{"text": "a"}])
    with pytest.raises(DataError):  # every example has the same key, so one split is empty
        carve_split([{"text": "a"}] * 5, how="hash")
