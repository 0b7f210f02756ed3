"""Padded encoder-decoder batches and the loader of given sequence pairs."""
import torch

from lmforge.data.collate import IGNORE_INDEX, Seq2SeqLoader, collate_seq2seq, shift_right


def test_collate_seq2seq_pads_and_shifts():
    batch = collate_seq2seq([([5, 6, 7], [8, 9]), ([5], [8, 9, 10, 11])], pad_id=0, decoder_start_id=2)
    assert batch["input_ids"].tolist() == [[5, 6, 7], [5, 0, 0]]
    assert batch["attention_mask"].tolist() == [[1, 1, 1], [1, 0, 0]]
    assert batch["labels"].tolist() == [[8, 9, -100, -100], [8, 9, 10, 11]]
    assert batch["decoder_input_ids"].tolist() == [[2, 8, 9, 0], [2, 8, 9, 10]]
    assert shift_right(torch.tensor([[4, -100]]), 3, 0).tolist() == [[3, 4]]


def test_seq2seq_loader_resume_and_ranks():
    pairs = [(list(range(1, 2 + i % 5)), list(range(10, 12 + i % 3))) for i in range(30)]
    kw = dict(pad_id=0, decoder_start_id=0, seed=3)
    a = Seq2SeqLoader(pairs, 4, **kw)
    a.next_batch()
    b = Seq2SeqLoader(pairs, 4, **kw)
    b.load_state_dict(a.state_dict())
    x, y = a.next_batch(), b.next_batch()
    assert all(torch.equal(x[k], y[k]) for k in x)
    whole = Seq2SeqLoader(pairs, 4, **kw).next_batch()
    halves = [Seq2SeqLoader(pairs, 2, rank=r, world_size=2, **kw).next_batch() for r in (0, 1)]
    # Each rank pads its own rows: compare the real tokens.
    for k in ("input_ids", "labels"):
        rows = [row[row != (0 if k == "input_ids" else IGNORE_INDEX)].tolist() for h in halves for row in h[k]]
        assert rows == [row[row != (0 if k == "input_ids" else IGNORE_INDEX)].tolist() for row in whole[k]]
