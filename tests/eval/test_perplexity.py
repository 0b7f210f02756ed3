"""Sliding-window perplexity against a naive token-by-token computation."""
import json
import math

import numpy as np
import pytest
import torch

from lmforge.errors import ConfigError, DataError
from lmforge.eval.perplexity import evaluate_perplexity, perplexity_of_run
from lmforge.models.registry import build_model, save_model

TEXT = "It was the best of times, it was the worst of times, it was the age of wisdom. Ünïcödé: 世界\n" * 3


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return build_model("llama-debug", init_std=0.1).eval()


def naive_nll(model, tokens: torch.Tensor, block_size: int, stride: int) -> list[float]:
    """-log p(token p | its context) for p = 1..n-1, one forward pass per token.

    Windows feed `block_size` tokens and start every `stride` tokens; token p is scored by the
    first window that reaches it, so its context starts at the window start k * stride.
    """
    out = []
    with torch.no_grad():
        for p in range(1, len(tokens)):
            k = max(0, math.ceil((p - block_size) / stride))
            context = tokens[k * stride:p]
            assert 1 <= len(context) <= block_size
            logp = torch.log_softmax(model(context[None])[0, -1].double(), dim=-1)
            out.append(-logp[tokens[p]].item())
    return out


@pytest.mark.parametrize("block_size, stride", [(8, 1), (8, 3), (8, 4), (8, 8), (5, 5)])
def test_sliding_window_equals_naive(model, block_size, stride):
    tokens = torch.randint(0, model.config.vocab_size, (41,), generator=torch.Generator().manual_seed(1))
    ref = naive_nll(model, tokens, block_size, stride)
    got = evaluate_perplexity(model, tokens, block_size=block_size, stride=stride, batch_size=3)
    assert got["tokens"] == len(tokens) - 1
    assert got["loss"] == pytest.approx(sum(ref) / len(ref), abs=1e-5)
    assert got["perplexity"] == pytest.approx(math.exp(got["loss"]), rel=1e-9)
    assert got["bits_per_byte"] is None


def test_stride_one_is_full_context_up_to_block_size(model):
    # The definition the spec calls naive: each token sees min(p, block_size) previous tokens.
    tokens = torch.randint(0, model.config.vocab_size, (20,), generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        ref = [-torch.log_softmax(model(tokens[max(0, p - 6):p][None])[0, -1].double(), -1)[tokens[p]].item()
               for p in range(1, 20)]
    got = evaluate_perplexity(model, tokens, block_size=6, stride=1)
    assert got["loss"] == pytest.approx(sum(ref) / len(ref), abs=1e-5)


def test_defaults_and_numpy_input(model):
    tokens = np.random.default_rng(0).integers(0, model.config.vocab_size, 300).astype(np.uint16)
    got = evaluate_perplexity(model, tokens)  # block_size = model's (128), stride = 64
    same = evaluate_perplexity(model, torch.from_numpy(tokens.astype(np.int64)), block_size=128, stride=64,
                               batch_size=1)
    assert got["loss"] == pytest.approx(same["loss"], abs=1e-6) and got["tokens"] == 299


def test_bits_per_byte_formula(model):
    tokens = torch.randint(0, model.config.vocab_size, (30,), generator=torch.Generator().manual_seed(3))
    got = evaluate_perplexity(model, tokens, block_size=8, num_bytes=77)
    assert got["bits_per_byte"] == pytest.approx(got["loss"] * got["tokens"] / math.log(2) / 77, rel=1e-9)


def test_invalid_arguments(model):
    tokens = torch.arange(10)
    with pytest.raises(DataError):
        evaluate_perplexity(model, tokens[:1])
    with pytest.raises(ConfigError):
        evaluate_perplexity(model, tokens, block_size=model.config.block_size + 1)
    with pytest.raises(ConfigError):
        evaluate_perplexity(model, tokens, block_size=8, stride=9)
    with pytest.raises(DataError):
        evaluate_perplexity(model, torch.tensor([1, model.config.vocab_size]))


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory, model):
    from lmforge.data.tokenizers import train_tokenizer

    tok = train_tokenizer("bpe", [TEXT] * 5, vocab_size=300)
    torch.manual_seed(0)
    m = build_model("debug", vocab_size=tok.vocab_size, block_size=32)
    d = tmp_path_factory.mktemp("run")
    save_model(m, d)
    tok.save(d)
    return d, tok, m


def test_perplexity_of_run_text_file_and_dataset_dir(run_dir, tmp_path):
    d, tok, m = run_dir
    text_file = tmp_path / "eval.txt"
    text_file.write_text(TEXT, encoding="utf-8")
    ids = tok.encode(TEXT)
    expected = evaluate_perplexity(m, torch.tensor(ids), stride=8, num_bytes=len(TEXT.encode("utf-8")))
    got = perplexity_of_run(d, str(text_file), stride=8)
    assert got["loss"] == pytest.approx(expected["loss"], abs=1e-6)
    assert got["bits_per_byte"] == pytest.approx(expected["bits_per_byte"], rel=1e-6)

    data = tmp_path / "prepared"
    data.mkdir()
    np.asarray(ids, dtype=np.uint16).tofile(data / "val.bin")
    (data / "meta.json").write_text(json.dumps({"dtype": "uint16", "vocab_size": tok.vocab_size,
                                                "eos_id": tok.eos_id, "val_tokens": len(ids),
                                                "val_bytes": len(TEXT.encode("utf-8"))}))
    from_dir = perplexity_of_run(d, data, stride=8)
    assert from_dir == pytest.approx(got)


def test_perplexity_of_run_bad_inputs(run_dir, tmp_path):
    d, _, _ = run_dir
    with pytest.raises(DataError, match="does not exist"):
        perplexity_of_run(d, tmp_path / "missing.txt")
    (tmp_path / "empty.txt").write_text("")
    with pytest.raises(DataError, match="empty"):
        perplexity_of_run(d, tmp_path / "empty.txt")
    (tmp_path / "blob.bin").write_bytes(bytes(range(256)) * 4)
    with pytest.raises(DataError):
        perplexity_of_run(d, tmp_path / "blob.bin")
    (tmp_path / "latin1.txt").write_bytes("café crème".encode("latin-1"))
    with pytest.raises(DataError, match="UTF-8"):
        perplexity_of_run(d, tmp_path / "latin1.txt")
    (tmp_path / "nodata").mkdir()
    with pytest.raises(DataError, match="meta.json"):
        perplexity_of_run(d, tmp_path / "nodata")
