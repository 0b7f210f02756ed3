"""Few-shot exemplar selection against brute force: nearest neighbours are the top of a full sort by cosine
similarity computed here, orders put the most similar exemplar last or first, and draws follow their seed."""
import pytest
import torch

from lmforge.data.exemplars import select_exemplars
from lmforge.errors import ConfigError

POOL = [{"text": f"t{i}", "label": str(i % 3)} for i in range(12)]


def label_of(example):
    return example["label"]


def cosines(seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    vectors = torch.nn.functional.normalize(torch.randn(len(POOL) + 1, 8, generator=g), dim=-1)
    return vectors[1:] @ vectors[0]  # the query's similarity to each pool example


@pytest.mark.parametrize("seed", range(4))
def test_nearest_neighbours_are_the_most_similar(seed):
    sims = cosines(seed)
    best_first = sorted(range(len(POOL)), key=lambda i: -float(sims[i]))
    for k in (1, 3, 5):
        expected = {POOL[i]["text"] for i in best_first[:k]}
        last = select_exemplars(POOL, k, 0, label_of, how="nearest", order="nearest_last", similarity=sims)
        first = select_exemplars(POOL, k, 0, label_of, how="nearest", order="nearest_first", similarity=sims)
        assert {e["text"] for e in last} == expected
        assert [e["text"] for e in last] == [POOL[i]["text"] for i in reversed(best_first[:k])]
        assert first == last[::-1]
        shuffled = [select_exemplars(POOL, k, s, label_of, how="nearest", similarity=sims) for s in range(6)]
        assert all({e["text"] for e in s} == expected for s in shuffled)
        if k > 2:
            assert len({tuple(e["text"] for e in s) for s in shuffled}) > 1  # the seed orders them


def test_random_and_balanced_draws_can_be_ordered_by_similarity():
    sims = cosines(9)
    for how in ("random", "balanced"):
        drawn = select_exemplars(POOL, 6, 3, label_of, how=how)
        ordered = select_exemplars(POOL, 6, 3, label_of, how=how, order="nearest_last", similarity=sims)
        assert sorted(e["text"] for e in drawn) == sorted(e["text"] for e in ordered)
        scores = [float(sims[POOL.index(e)]) for e in ordered]
        assert scores == sorted(scores)
    balanced = select_exemplars(POOL, 6, 3, label_of, how="balanced")
    assert sorted(e["label"] for e in balanced) == ["0", "0", "1", "1", "2", "2"]


def test_selection_mistakes_are_config_errors():
    with pytest.raises(ConfigError, match="13 shots asked for but the training file has 12 examples"):
        select_exemplars(POOL, 13, 0, label_of)
    with pytest.raises(ConfigError, match="ranks by similarity"):
        select_exemplars(POOL, 2, 0, label_of, how="nearest")
    with pytest.raises(ConfigError, match="unknown exemplar order 'closest'"):
        select_exemplars(POOL, 2, 0, label_of, order="closest")
