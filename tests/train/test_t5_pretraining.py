"""T5 span-corruption pretraining end to end: the CLI from a raw text file (a Unigram tokenizer with
sentinels prepared automatically), the run directory and the weights loaded back, an interrupted run
resumed to identical weights, and the bad combinations a user can ask for."""
import json

import pytest
import torch
import yaml

from cli_run import assert_user_error, with_threads, write_corpus  # tests/cli_run.py

TEXT = ("The quick brown fox jumps over the lazy dog. A journey of a thousand miles begins with a single step. "
        "To be, or not to be, that is the question.\n") * 80
SMALL = ["--data.vocab_size", "400", "--train.batch_size", "4", "--train.seq_len", "48", "--train.eval_batches", "2",
         "--train.progress", "false", "--train.device", "cpu"]




lmforge = with_threads(1)


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    return write_corpus(tmp_path_factory, "t5", TEXT)


def test_pretrain_writes_a_complete_run(corpus):
    from lmforge.data.span_corruption import sentinel_ids
    from lmforge.data.shards import open_split
    from lmforge.data.tokenizers import Tokenizer
    from lmforge.models.registry import load_model
    from lmforge.models.t5 import T5
    from lmforge.train.objectives import build_objective, evaluate_objective

    run = corpus / "run"
    r = lmforge("pretrain", "--data", corpus / "corpus.txt", "--model", "t5-debug", "--objective", "span-corruption",
                "--train.max_steps", "10", "--train.eval_interval", "5", *SMALL, "--out", run)
    assert r.returncode == 0, r.stderr[-2000:]
    for name in ("config.yaml", "tokenizer.json", "model.safetensors", "config.json", "metrics.jsonl",
                 "summary.json", "plots/loss.png"):
        assert (run / name).is_file(), name
    assert yaml.safe_load((run / "config.yaml").read_text())["data"]["tokenizer"] == "unigram"
    tokenizer = Tokenizer.load(run)
    assert len(sentinel_ids(tokenizer)) == 100
    summary = json.loads((run / "summary.json").read_text())
    assert summary["steps"] == 10 and summary["val_loss"] < summary["initial_val_loss"]
    assert summary["val_bpb"] is None  # the loss covers only the masked spans, not every byte of the text

    model = load_model(run).eval()
    assert isinstance(model, T5) and model.config.decoder_start_token_id == tokenizer.pad_id
    # The published weights are the final ones: they reproduce the final validation loss.
    objective = build_objective("span-corruption", "t5")
    batches = objective.eval_batches(open_split(run / "data", "val"), 48, 4, tokenizer=tokenizer, max_batches=2)
    with torch.no_grad():
        val = evaluate_objective(objective, model, batches)["loss"]
    assert val == pytest.approx(summary["val_loss"], rel=1e-5)

    # Decoder-only verbs refuse an encoder-decoder run in one line.
    assert_user_error(lmforge("generate", "--model", run, "--prompt", "The quick", "--no_stream"),
                      "t5 models turn a source into a target", "generate_seq2seq")
    assert_user_error(lmforge("eval", "perplexity", "--model", run, "--data", corpus / "corpus.txt"),
                      "no perplexity")


def test_interrupted_run_resumes_to_identical_weights(corpus, tmp_path):
    import lmforge.api as lf
    from lmforge.config import ModelSpec, TrainConfig
    from lmforge.models.registry import load_model

    data = corpus / "prepared"
    lf.prepare(str(corpus / "corpus.txt"), data, tokenizer="unigram", vocab_size=400, extra_ids=100, progress=False)
    spec = ModelSpec(preset="t5-debug", dropout=0.1)  # dropout makes the RNG state part of what must resume
    train = TrainConfig(max_steps=8, batch_size=2, seq_len=32, checkpoint_interval=3, eval_interval=4,
                        eval_batches=1, warmup_steps=2, progress=False)
    full = lf.pretrain(str(data), spec, out=tmp_path / "full", train=train)

    def stop(trainer):
        if trainer.state.step == 5:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        lf.pretrain(str(data), spec, out=tmp_path / "cut", train=train, on_step=stop)
    resumed = lf.pretrain(str(data), spec, out=tmp_path / "cut", train=train, resume=True)
    assert resumed["val_loss"] == full["val_loss"]
    a, b = load_model(tmp_path / "full"), load_model(tmp_path / "cut")
    for (k, x), y in zip(a.state_dict().items(), b.state_dict().values()):
        assert torch.equal(x, y), k


def test_objective_that_does_not_fit_t5(corpus):
    out = corpus / "bad-clm"
    r = lmforge("pretrain", "--data", corpus / "corpus.txt", "--model", "t5-debug", "--objective", "clm",
                "--out", out, *SMALL)
    assert_user_error(r, "objective 'clm' does not apply to t5 models", "span-corruption")
    assert not out.exists()
    r = lmforge("pretrain", "--data", corpus / "corpus.txt", "--model", "debug", "--objective", "span-corruption",
                "--out", corpus / "bad-gpt", *SMALL)
    assert_user_error(r, "does not apply to gpt models")


def test_data_without_sentinels_is_refused(corpus):
    data = corpus / "char-data"
    r = lmforge("prepare", "--data", corpus / "corpus.txt", "--tokenizer", "char", "--out", data)
    assert r.returncode == 0, r.stderr
    out = corpus / "bad-sentinels"
    r = lmforge("pretrain", "--data", data, "--model", "t5-debug", "--out", out, *SMALL)
    assert_user_error(r, "no sentinel tokens", "--extra_ids 100")
    assert not out.exists()
