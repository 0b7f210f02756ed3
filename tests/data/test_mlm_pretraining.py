"""BERT data: the 80/10/10 masking rule measured over many draws, whole-word masking against word
boundaries read off the token strings, NSP/SOP pairs traced back to their place in the corpus, and
the loader's exact resume and rank slicing."""
import numpy as np
import pytest
import torch

from lmforge.data.collate import IGNORE_INDEX
from lmforge.data.masking import MLMCollator
from lmforge.data.mlm_pretraining import PretrainingExamples, PretrainingLoader, iter_pretraining_eval_batches
from lmforge.data.tokenizers import Tokenizer, train_tokenizer
from lmforge.errors import CheckpointError, ConfigError

SPECIALS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
PAD, CLS, SEP, MASK = 0, 2, 3, 4


def id_tokenizer(n_words: int = 2000) -> Tokenizer:
    """A WordPiece tokenizer whose words are w0, w1, ...: token ids are 5 + word number."""
    from tokenizers import Tokenizer as HFTokenizer, models, pre_tokenizers

    vocab = {t: i for i, t in enumerate(SPECIALS + [f"w{i}" for i in range(n_words)])}
    hf = HFTokenizer(models.WordPiece(vocab=vocab, unk_token="[UNK]"))
    hf.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    hf.add_special_tokens(SPECIALS)
    return Tokenizer(hf)


def originals(batch: dict) -> np.ndarray:
    """The tokens before masking: labels where a token was chosen, the input elsewhere."""
    labels, inputs = batch["labels"].numpy(), batch["input_ids"].numpy()
    return np.where(labels != IGNORE_INDEX, labels, inputs)


# ---------------------------------------------------------------- masking
def test_masking_statistics_follow_the_bert_rule():
    tok = id_tokenizer()
    collator = MLMCollator(tok, mask_prob=0.15)
    rng = np.random.default_rng(0)
    T, draws = 64, 3000
    ids = rng.integers(5, tok.vocab_size, size=(draws, T))
    ids[:, 0], ids[:, 30], ids[:, 55] = CLS, SEP, SEP
    ids[:, 56:] = PAD
    special = np.isin(ids, [PAD, CLS, SEP])
    inputs, labels = collator(ids, rng)

    chosen = labels != IGNORE_INDEX
    n_maskable = T - 3 - 8
    assert (chosen.sum(1) == round(0.15 * n_maskable)).all()  # 8 of the 53 real, non-special tokens each time
    assert not chosen[special].any() and (inputs[special] == ids[special]).all()
    assert (labels[chosen] == ids[chosen]).all() and (inputs[~chosen] == ids[~chosen]).all()
    became_mask = (inputs == MASK) & chosen
    randomised = (inputs != ids) & (inputs != MASK) & chosen
    kept = (inputs == ids) & chosen
    n = chosen.sum()
    assert abs(became_mask.sum() / n - 0.8) < 0.015
    assert abs(randomised.sum() / n - 0.1) < 0.01
    assert abs(kept.sum() / n - 0.1) < 0.01
    assert not np.isin(inputs[randomised], [PAD, 1, CLS, SEP, MASK]).any()  # never a special token
    # Every real position is equally likely to be chosen (about 8/53).
    per_position = chosen[:, ~special[0]].mean(0)
    assert np.abs(per_position - 8 / 53).max() < 0.04


def test_masking_is_a_function_of_the_generator():
    tok = id_tokenizer()
    ids = np.random.default_rng(1).integers(5, tok.vocab_size, size=(4, 40))
    collator = MLMCollator(tok)
    a = collator(ids, np.random.default_rng(7))
    b = collator(ids, np.random.default_rng(7))
    c = collator(ids, np.random.default_rng(8))
    assert all((x == y).all() for x, y in zip(a, b))
    assert not (a[1] == c[1]).all()


ENGLISH = ("Internationalization and unbelievable tokenization of extraordinary paragraphs happen naturally "
           "when the tokenizer vocabulary is small. ")


def test_whole_word_masking_keeps_wordpieces_together():
    tok = train_tokenizer("wordpiece", [ENGLISH * 3] * 20, 120)
    ids = np.array(tok.encode(ENGLISH * 2))
    pieces = [tok.id_to_token(i) for i in ids]
    word = np.cumsum([not p.startswith("##") for p in pieces])  # reference: a word = a piece and its ## pieces
    assert word[-1] < len(ids) * 0.8  # many words really are split into pieces
    collator = MLMCollator(tok, whole_word=True)
    rng = np.random.default_rng(0)
    multi_piece_masked = 0
    for _ in range(300):
        _, labels = collator(ids, rng)
        chosen = labels != IGNORE_INDEX
        assert 1 <= chosen.sum() <= round(0.15 * len(ids))
        for w in np.unique(word[chosen]):
            assert chosen[word == w].all(), [p for p, m in zip(pieces, word == w) if m]
            multi_piece_masked += (word == w).sum() > 1
    assert multi_piece_masked > 100


def test_word_starts_for_wordpiece_and_characters():
    tok = train_tokenizer("wordpiece", [ENGLISH + " 天下大势"] * 20, 120)
    collator = MLMCollator(tok, whole_word=True)
    ids = np.array(tok.encode("unbelievable 天下"))
    pieces = [tok.id_to_token(i) for i in ids]
    assert pieces[-2:] == ["天", "下"]
    expected = [not p.startswith("##") for p in pieces]
    assert collator.word_starts(ids).tolist() == expected

    chars = train_tokenizer("char", ["天下大势 hello world_1, 合久"], 0, special_tokens=["[MASK]"])
    collator = MLMCollator(chars, whole_word=True)
    text = "天下 hello world_1,合久"
    starts = collator.word_starts(np.array(chars.encode(text)))
    # Each CJK character is a word; a Latin word is a run of letters, digits and underscores.
    expected = [True, True, True, True, False, False, False, False, True, True, False, False, False, False,
                False, False, True, True, True]
    assert len(text) == len(expected) and starts.tolist() == expected


def test_whole_word_masking_on_chinese_is_per_character():
    text = "天下大势，分久必合，合久必分。周末七国分争，并入于秦。及秦灭之后，楚、汉分争，又并入于汉。"
    for kind in ("wordpiece", "char"):
        tok = train_tokenizer(kind, [text] * 5, 200, special_tokens=["[MASK]"])  # wordpiece has it already
        ids = np.array(tok.encode(text))
        assert all(len(tok.id_to_token(i)) == 1 for i in ids)  # one token per character
        collator = MLMCollator(tok, whole_word=True)
        assert collator.word_starts(ids).all()
        _, labels = collator(ids, np.random.default_rng(0))
        assert (labels != IGNORE_INDEX).sum() == round(0.15 * len(ids))  # single characters fill the budget


def test_tokenizer_without_mask_token_is_a_config_error():
    tok = train_tokenizer("bpe", ["some text for a byte level tokenizer"] * 5, 300)
    with pytest.raises(ConfigError, match=r"\[MASK\].*wordpiece"):
        MLMCollator(tok)
    with pytest.raises(ConfigError, match="wordpiece"):
        PretrainingExamples(np.arange(100) % 250, 16, tok)


# ---------------------------------------------------------------- sentence pairs
def corpus(doc_lengths):
    """Documents of distinct ids separated by [SEP], the end-of-text token of WordPiece."""
    docs, next_id = [], 5
    for n in doc_lengths:
        docs.append(np.arange(next_id, next_id + n))
        next_id += n
    stream = np.concatenate([np.r_[d, SEP] for d in docs])[:-1]
    doc_of = {int(t): k for k, d in enumerate(docs) for t in d}
    position = {int(t): i for i, t in enumerate(stream)}
    return stream.astype(np.uint16), doc_of, position


def split_pair(row_ids: np.ndarray, types: np.ndarray, attention: np.ndarray):
    n = int(attention.sum())
    assert (attention[:n] == 1).all() and (attention[n:] == 0).all() and (row_ids[n:] == PAD).all()
    assert row_ids[0] == CLS and row_ids[n - 1] == SEP
    seps = np.flatnonzero(row_ids[:n] == SEP)
    assert len(seps) == 2
    s1 = seps[0]
    assert (types[:s1 + 1] == 0).all() and (types[s1 + 1:n] == 1).all() and (types[n:] == 0).all()
    return row_ids[1:s1], row_ids[s1 + 1:n - 1]


def contiguous(segment, position, doc_of):
    p = [position[int(t)] for t in segment]
    return p == list(range(p[0], p[0] + len(p))) and len({doc_of[int(t)] for t in segment}) == 1


@pytest.mark.parametrize("task", ["nsp", "sop"])
def test_sentence_pairs(task):
    lengths = [7, 300, 45, 120, 3, 90, 200, 60]
    stream, doc_of, position = corpus(lengths)
    seq_len = 48
    loader = PretrainingLoader(stream, seq_len, 50, tokenizer=id_tokenizer(), pairs=task, seed=3)
    labels = []
    for _ in range(20):
        batch = loader.next_batch()
        assert set(batch) == {"input_ids", "token_type_ids", "attention_mask", "labels", "pair_labels"}
        full = originals(batch)
        for row, types, attention, label in zip(full, batch["token_type_ids"].numpy(),
                                                batch["attention_mask"].numpy(), batch["pair_labels"].numpy()):
            a, b = split_pair(row, types, attention)
            assert len(a) >= 1 and len(b) >= 1
            assert contiguous(a, position, doc_of) and contiguous(b, position, doc_of)
            a_follows_b = position[int(a[0])] == position[int(b[-1])] + 1
            b_follows_a = position[int(b[0])] == position[int(a[-1])] + 1
            if task == "nsp":
                if label == 0:
                    assert b_follows_a
                else:
                    assert doc_of[int(b[0])] != doc_of[int(a[0])]  # there are other documents to draw from
                span = min(lengths[doc_of[int(a[0])]], seq_len - 3)
            else:
                assert a_follows_b if label == 1 else b_follows_a
                span = lengths[doc_of[int(a[0])]]
            if label == 0 or task == "sop":
                assert len(a) + len(b) == min(span, seq_len - 3)  # long documents fill the sequence
            labels.append(label)
    assert abs(np.mean(labels) - 0.5) < 0.05


def test_nsp_negatives_in_a_single_document_come_from_elsewhere_in_it():
    stream, doc_of, position = corpus([500])
    loader = PretrainingLoader(stream, 32, 64, tokenizer=id_tokenizer(), pairs="nsp", seed=0)
    negatives = 0
    for _ in range(5):
        batch = loader.next_batch()
        full = originals(batch)
        for row, types, attention, label in zip(full, batch["token_type_ids"].numpy(),
                                                batch["attention_mask"].numpy(), batch["pair_labels"].numpy()):
            a, b = split_pair(row, types, attention)
            assert contiguous(b, position, doc_of)
            follows = position[int(b[0])] == position[int(a[-1])] + 1
            assert follows == (label == 0)
            negatives += int(label)
    assert 100 < negatives < 220


def test_mlm_windows_are_contiguous_and_unpadded():
    stream, doc_of, position = corpus([50, 80, 40])
    batch = PretrainingLoader(stream, 24, 16, tokenizer=id_tokenizer(), seed=0).next_batch()
    assert "pair_labels" not in batch
    assert (batch["attention_mask"] == 1).all() and (batch["token_type_ids"] == 0).all()
    full = originals(batch)
    assert (full[:, 0] == CLS).all() and (full[:, -1] == SEP).all()
    for row in full:
        text = row[1:-1]
        found = [i for i in range(len(stream) - len(text) + 1) if (stream[i:i + len(text)] == text).all()]
        assert found, "each window is a stretch of the corpus (document separators included)"
    assert ((batch["labels"] != IGNORE_INDEX).sum(1) >= 1).all()


# ---------------------------------------------------------------- loader contract
def _equal(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.parametrize("task", [None, "sop"])
def test_loader_resumes_exactly_and_slices_ranks(task):
    stream, _, _ = corpus([300, 200, 150])
    tok = id_tokenizer()
    make = lambda **kw: PretrainingLoader(stream, 32, kw.pop("batch_size", 4), tokenizer=tok, pairs=task, seed=5, **kw)
    straight = make()
    batches = [straight.next_batch() for _ in range(6)]
    assert not _equal(batches[0], batches[1])
    interrupted = make()
    for _ in range(3):
        interrupted.next_batch()
    resumed = make()
    resumed.load_state_dict(interrupted.state_dict())
    assert all(_equal(resumed.next_batch(), batches[k]) for k in range(3, 6))

    whole = make(batch_size=6).next_batch()
    parts = [make(batch_size=3, rank=r, world_size=2).next_batch() for r in range(2)]
    joined = {k: torch.cat([p[k] for p in parts]) for k in whole}
    assert _equal(whole, joined)
    with pytest.raises(CheckpointError):
        resumed.load_state_dict({"step": "x"})


def test_eval_batches_are_fixed():
    stream, _, _ = corpus([400, 300])
    tok = id_tokenizer()
    first = list(iter_pretraining_eval_batches(stream, 32, 4, tokenizer=tok, pairs="nsp", max_batches=3))
    again = list(iter_pretraining_eval_batches(stream, 32, 4, tokenizer=tok, pairs="nsp", max_batches=3))
    assert len(first) == 3 and all(b["input_ids"].shape == (4, 32) for b in first)
    assert all(_equal(a, b) for a, b in zip(first, again))
    everything = list(iter_pretraining_eval_batches(stream, 32, 4, tokenizer=tok, max_batches=None))
    assert sum(len(b["input_ids"]) for b in everything) == len(stream) // 30  # every 30-token span once
