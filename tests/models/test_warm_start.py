"""An encoder-decoder warm-started from a BERT encoder: its encoder computes exactly what the BERT did,
its decoder starts from the same weights, and fine-tuning can start from it."""
import json

import pytest
import torch

from lmforge.config import DecodeConfig, StartConfig, TaskDataConfig, TrainConfig
from lmforge.data.tokenizers import train_tokenizer
from lmforge.errors import ConfigError
from lmforge.models.bert import Bert
from lmforge.models.registry import build_model, load_model, preset_config, save_model
from lmforge.models.warm_start import encoder_decoder_from_encoder

WORDS = "red green blue black white cat dog bird fish tree".split()


def _bert(**overrides) -> Bert:
    torch.manual_seed(0)
    model = build_model("bert-debug", vocab_size=90, **overrides)
    with torch.no_grad():  # every weight away from its init value, so a missed copy shows
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    return model.eval()


def test_encoder_outputs_are_bit_identical_to_the_bert_it_came_from():
    bert = _bert()
    model = encoder_decoder_from_encoder(bert).eval()
    ids = torch.randint(1, 90, (3, 11))
    mask = torch.ones(3, 11, dtype=torch.long)
    mask[1, 7:] = 0
    mask[2, 4:] = 0
    with torch.no_grad():
        assert torch.equal(model.encode(ids, mask), bert.features(ids, mask))
        assert torch.equal(model.encode(ids), bert.features(ids))


def test_decoder_starts_from_the_encoder_weights_and_only_cross_attention_is_new():
    bert = _bert()
    model = encoder_decoder_from_encoder(bert)
    bert_state, state = bert.state_dict(), model.state_dict()
    for key, value in bert_state.items():
        if key.startswith("blocks."):
            assert torch.equal(state[f"decoder.{key}"], value), key
    assert torch.equal(state["decoder.wpe.weight"], bert_state["embeddings.wpe.weight"])
    assert torch.equal(model.lm_head.weight, bert_state["embeddings.wte.weight"])
    assert model.lm_head.weight.data_ptr() != model.wte.weight.data_ptr()  # a copy: T5 scales tied outputs
    assert model.decoder.blocks[0].attn.causal and not model.encoder.blocks[0].attn.causal
    assert torch.equal(state["decoder.wtt"], bert_state["embeddings.wtt.weight"][:1])
    new = {k for k in state if k.startswith("decoder.") and k != "decoder.wtt"
           and not any(torch.equal(state[k], v) for v in bert_state.values())}
    assert new and all(".cross_attn." in k or ".ln_cross." in k for k in new), sorted(new)


def test_saves_and_loads_as_a_t5_family_model(tmp_path):
    model = encoder_decoder_from_encoder(_bert()).eval()
    save_model(model, tmp_path)
    loaded = load_model(tmp_path).eval()
    src, dec = torch.randint(1, 90, (2, 9)), torch.randint(1, 90, (2, 5))
    with torch.no_grad():
        assert torch.equal(loaded(src, None, dec), model(src, None, dec))
    assert json.loads((tmp_path / "config.json").read_text())["family"] == "t5"


def test_what_cannot_be_warm_started():
    with pytest.raises(ConfigError, match="BERT-family"):
        encoder_decoder_from_encoder(build_model("debug"))
    with pytest.raises(ConfigError, match="feed-forward"):
        encoder_decoder_from_encoder(build_model("bert-debug", mlp="gelu"))
    with pytest.raises(ConfigError, match="learned positions"):
        encoder_decoder_from_encoder(build_model("bert-debug", position="sinusoidal"))
    assert preset_config("t5-debug").segment_embedding is False  # fresh T5s are unchanged


def test_summarization_fine_tunes_from_a_bert_run(tmp_path):
    from lmforge.runs.finetune import finetune
    from lmforge.runs.predict import pipeline

    texts = [" ".join(WORDS[(i + j) % len(WORDS)] for j in range(5)) for i in range(40)]
    tokenizer = train_tokenizer("wordpiece", texts, vocab_size=90)
    bert_dir = tmp_path / "bert"
    save_model(build_model("bert-debug", vocab_size=tokenizer.vocab_size, pad_token_id=tokenizer.pad_id), bert_dir)
    tokenizer.save(bert_dir / "tokenizer.json")
    (tmp_path / "train.jsonl").write_text("".join(json.dumps({"source": t, "target": t.split()[0]}) + "\n"
                                                  for t in texts))
    train = TrainConfig(max_steps=6, batch_size=8, eval_interval=1000, checkpoint_interval=1000, progress=False,
                        device="cpu")
    data = TaskDataConfig(train=str(tmp_path / "train.jsonl"), max_length=16, max_target_length=8)
    summary = finetune("summarize", data=data, model=StartConfig(init=str(bert_dir), encoder_decoder=True),
                       out=tmp_path / "run", train=train, decode=DecodeConfig(max_new_tokens=4))
    assert "warm-started as an encoder-decoder" in summary["start"] and summary["steps"] == 6
    assert isinstance(pipeline("summarization", tmp_path / "run")("red green blue"), str)
    with pytest.raises(ConfigError, match="pretrained encoder"):
        finetune("summarize", data=data, model=StartConfig(init="bert-debug", encoder_decoder=True),
                 out=tmp_path / "run2", train=train)
