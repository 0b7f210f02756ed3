import numpy as np
import pytest
import torch

from lmforge.data.loaders import LMWindowLoader, iter_eval_batches
from lmforge.errors import CheckpointError, ConfigError, DataError

TOKENS = np.arange(10_000, dtype=np.uint16)


def test_batch_shapes_and_shift():
    x, y = LMWindowLoader(TOKENS, block_size=16, batch_size=4).next_batch()
    assert x.shape == y.shape == (4, 16) and x.dtype == y.dtype == torch.int64
    assert torch.equal(y, x + 1)  # tokens are 0, 1, 2, ... so the next token is x + 1
    assert x.min() >= 0 and y.max() <= len(TOKENS) - 1


def test_offsets_follow_the_contract():
    loader = LMWindowLoader(TOKENS, 8, 3, seed=5)
    for step in range(3):
        x, _ = loader.next_batch()
        expected = np.random.default_rng([5, step]).integers(0, len(TOKENS) - 8, size=3)
        assert x[:, 0].tolist() == expected.tolist()


def test_deterministic_and_seed_dependent():
    a = [LMWindowLoader(TOKENS, 8, 2, seed=1).next_batch()[0] for _ in range(2)]
    assert torch.equal(a[0], a[1])
    assert not torch.equal(a[0], LMWindowLoader(TOKENS, 8, 2, seed=2).next_batch()[0])


def test_resume_gives_the_same_batches():
    straight = LMWindowLoader(TOKENS, 8, 2, seed=3)
    batches = [straight.next_batch() for _ in range(6)]
    first = LMWindowLoader(TOKENS, 8, 2, seed=3)
    for _ in range(4):
        first.next_batch()
    state = first.state_dict()
    assert state == {"step": 4, "seed": 3}
    resumed = LMWindowLoader(TOKENS, 8, 2, seed=999)
    resumed.load_state_dict(state)
    for x, y in batches[4:]:
        rx, ry = resumed.next_batch()
        assert torch.equal(rx, x) and torch.equal(ry, y)


def test_ranks_split_the_global_batch():
    single = LMWindowLoader(TOKENS, 8, 4, seed=11)
    ranks = [LMWindowLoader(TOKENS, 8, 2, seed=11, rank=r, world_size=2) for r in range(2)]
    for _ in range(3):
        x, y = single.next_batch()
        parts = [loader.next_batch() for loader in ranks]
        assert torch.equal(torch.cat([p[0] for p in parts]), x)
        assert torch.equal(torch.cat([p[1] for p in parts]), y)


def test_works_on_memmap(tmp_path):
    path = tmp_path / "t.bin"
    TOKENS.tofile(path)
    mm = np.memmap(path, dtype=np.uint16, mode="r")
    x, _ = LMWindowLoader(mm, 8, 2).next_batch()
    assert torch.equal(x, LMWindowLoader(TOKENS, 8, 2).next_batch()[0])


def test_errors():
    with pytest.raises(DataError, match="dataset has 10 tokens but the context length is 10") as e:
        LMWindowLoader(np.arange(10), 10, 1)
    assert "block_size" in e.value.fix
    with pytest.raises(ConfigError, match="rank"):
        LMWindowLoader(TOKENS, 8, 2, rank=2, world_size=2)
    with pytest.raises(ConfigError, match="batch_size"):
        LMWindowLoader(TOKENS, 8, 0)
    with pytest.raises(CheckpointError):
        LMWindowLoader(TOKENS, 8, 2).load_state_dict({"epoch": 1})
    with pytest.raises(DataError, match="context length"):
        next(iter_eval_batches(np.arange(5), 8, 2))


def test_eval_batches_cover_contiguous_windows():
    tokens = np.arange(101, dtype=np.uint16)
    batches = list(iter_eval_batches(tokens, block_size=10, batch_size=4))
    xs = torch.cat([x for x, _ in batches])
    assert [len(x) for x, _ in batches] == [4, 4, 2]
    assert xs[:, 0].tolist() == list(range(0, 100, 10))
    assert all(torch.equal(y, x + 1) for x, y in batches)


def test_eval_batches_max_batches_spread_evenly():
    tokens = np.arange(1001, dtype=np.uint16)
    batches = list(iter_eval_batches(tokens, block_size=10, batch_size=2, max_batches=2))
    starts = torch.cat([x for x, _ in batches])[:, 0].tolist()
    assert starts == [0, 250, 500, 750]
    assert starts == torch.cat([x for x, _ in iter_eval_batches(tokens, 10, 2, 2)])[:, 0].tolist()
    assert len(list(iter_eval_batches(tokens, 10, 2, max_batches=1000))) == 50
