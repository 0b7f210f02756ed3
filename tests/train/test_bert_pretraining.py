"""BERT pretraining end to end through the CLI: MLM with SOP or NSP from a raw text file (WordPiece chosen
automatically), the run directory, the weights loaded back, bad objective/model/tokenizer combinations,
and 2-process DDP with MLM alone (whose pooler and pair head get no gradient)."""
import json
import shutil
import sys
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import load_file

from conftest import free_port

from cli_run import assert_user_error, with_threads, write_corpus  # tests/cli_run.py

TEXT = ("The quick brown fox jumps over the lazy dog. A journey of a thousand miles begins with a single step. "
        "To be, or not to be, that is the question. 天下大势，分久必合，合久必分。\n") * 60
SMALL = ["--data.vocab_size", "300", "--train.batch_size", "4", "--train.seq_len", "32", "--train.eval_batches", "2",
         "--train.progress", "false", "--train.device", "cpu"]




lmforge = with_threads(1)


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    return write_corpus(tmp_path_factory, "bert", TEXT)


@pytest.mark.parametrize("objective,pair_term", [("mlm+sop", "sop"), ("mlm+nsp", "nsp"), (None, None)])
def test_pretrain_writes_a_complete_run(corpus, objective, pair_term):
    from lmforge.data.shards import open_split
    from lmforge.data.tokenizers import Tokenizer
    from lmforge.models.registry import load_model
    from lmforge.train.objectives import build_objective, evaluate_objective

    run = corpus / f"run-{objective or 'default'}"
    args = ["pretrain", "--data", corpus / "corpus.txt", "--model", "bert-debug", "--train.max_steps", "10",
            "--train.eval_interval", "5", *SMALL, "--out", run]
    r = lmforge(*args, *(["--objective", objective] if objective else []))
    assert r.returncode == 0, r.stderr[-2000:]
    for name in ("config.yaml", "tokenizer.json", "model.safetensors", "config.json", "metrics.jsonl",
                 "summary.json", "plots/loss.png"):
        assert (run / name).is_file(), name
    assert yaml.safe_load((run / "config.yaml").read_text())["data"]["tokenizer"] == "wordpiece"
    records = [json.loads(l) for l in (run / "metrics.jsonl").read_text().splitlines()]
    final = records[-1]
    assert final["step"] == 10
    if pair_term:
        assert final["val_loss"] == pytest.approx(final["val_mlm"] + final[f"val_{pair_term}"])
        assert 0.3 < final[f"val_{pair_term}"] < 1.2  # a 2-way loss near ln 2 after 10 steps
    summary = json.loads((run / "summary.json").read_text())
    assert summary["steps"] == 10 and summary["val_loss"] < summary["initial_val_loss"]

    # The loaded weights are the trained ones: they reproduce the run's final validation loss.
    model = load_model(run).eval()
    assert model.family == "bert" and model.mlm_head.decoder.weight is model.embeddings.wte.weight
    state = load_file(str(run / "model.safetensors"))
    assert all(torch.equal(model.state_dict()[k], v) for k, v in state.items())
    objective_ = build_objective(objective, "bert")
    batches = objective_.eval_batches(open_split(run / "data", "val"), 32, 4, tokenizer=Tokenizer.load(run),
                                      max_batches=2)
    with torch.no_grad():
        again = evaluate_objective(objective_, model, batches)
    assert again["loss"] == pytest.approx(summary["val_loss"], abs=1e-5)


def test_objective_must_fit_the_model(corpus, tmp_path):
    assert_user_error(lmforge("pretrain", "--data", corpus / "corpus.txt", "--model", "bert-debug", "--objective", "clm",
                              "--out", tmp_path / "a"), "'clm'", "bert", "mlm")
    assert_user_error(lmforge("pretrain", "--data", corpus / "corpus.txt", "--model", "debug", "--objective", "mlm",
                              "--out", tmp_path / "b"), "'mlm'", "gpt", "clm")
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()


def test_tokenizer_without_mask_token(corpus, tmp_path):
    r = lmforge("pretrain", "--data", corpus / "corpus.txt", "--model", "bert-debug", "--data.tokenizer", "bpe",
                "--train.max_steps", "2", *SMALL, "--out", tmp_path / "run")
    assert_user_error(r, "[MASK]", "--data.tokenizer wordpiece")
    assert not (tmp_path / "run").exists()


@pytest.mark.skipif(not shutil.which("torchrun") and not Path(sys.executable).with_name("torchrun").exists(),
                    reason="torchrun not installed")
def test_two_process_ddp_mlm_equals_one_process(corpus):
    from lmforge.data.shards import prepare_dataset
    from lmforge.models.registry import build_model, config_from_dict

    data = corpus / "ddp-data"
    prepare_dataset(str(corpus / "corpus.txt"), data, tokenizer="wordpiece", vocab_size=300, progress=False)
    torchrun = shutil.which("torchrun") or str(Path(sys.executable).with_name("torchrun"))

    def train(out, nproc, batch_size):
        launcher = [torchrun, "--nproc_per_node", str(nproc), "--master_port", str(free_port()), "-m"] \
            if nproc > 1 else None
        r = lmforge("pretrain", "--data", data, "--model", "bert-debug", "--model.dropout", "0.0", "--objective", "mlm",
                    "--train.batch_size", batch_size, "--train.seq_len", "32", "--train.max_steps", "4",
                    "--train.eval_interval", "4", "--train.eval_batches", "1", "--train.optimizer", "sgd",
                    "--train.lr", "0.5", "--train.warmup_steps", "1", "--train.progress", "false",
                    "--train.device", "cpu", "--out", out, launcher=launcher, timeout=300)
        assert r.returncode == 0, r.stderr[-2000:]
        return load_file(str(out / "model.safetensors"))

    one, two = train(corpus / "ddp-one", 1, 4), train(corpus / "ddp-two", 2, 2)
    assert one.keys() == two.keys()
    for k in one:
        torch.testing.assert_close(one[k], two[k], rtol=1e-4, atol=1e-5)
    # MLM alone leaves the pooler and the pair head exactly as initialised.
    torch.manual_seed(1337)  # the default --train.seed, which seeds the initialisation
    fresh = build_model(config_from_dict(json.loads((corpus / "ddp-one" / "config.json").read_text())))
    for name, param in [*fresh.pooler.named_parameters("pooler"), *fresh.pair_head.named_parameters("pair_head")]:
        assert torch.equal(one[name], param.detach()), name
    assert not torch.equal(one["blocks.0.attn.qkv.weight"], fresh.blocks[0].attn.qkv.weight.detach())
