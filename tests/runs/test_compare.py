"""Baselines end to end through the CLI: an n-gram and an LSTM run directory, `lmforge compare` on a tiny
text with a tiny budget, and the one-line errors for bad comparisons."""
import json
import math
from types import SimpleNamespace

import numpy as np
import pytest

from lmforge.train.budget import TimeBudget

from cli_run import assert_user_error, with_threads, write_corpus  # tests/cli_run.py

TEXT = ("The quick brown fox jumps over the lazy dog. A journey of a thousand miles begins with a single step. "
        "To be, or not to be, that is the question.\n") * 60
RUN_FILES = ("config.yaml", "tokenizer.json", "model.safetensors", "config.json", "metrics.jsonl", "summary.json",
             "plots/loss.png")




lmforge = with_threads(1)


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    return write_corpus(tmp_path_factory, "baselines", TEXT)


@pytest.mark.parametrize("preset, extra", [("ngram-3", []), ("lstm-debug", ["--train.max_steps", "6",
                                                                           "--train.batch_size", "4"])])
def test_pretrain_writes_a_complete_run(corpus, preset, extra):
    run = corpus / f"run-{preset}"
    r = lmforge("pretrain", "--data", corpus / "corpus.txt", "--data.tokenizer", "char", "--model", preset,
                "--train.progress", "false", "--train.eval_batches", "2", *extra, "--out", run)
    assert r.returncode == 0, r.stderr[-2000:]
    for name in RUN_FILES:
        assert (run / name).is_file(), name
    summary = json.loads((run / "summary.json").read_text())
    for key in ("val_loss", "val_ppl", "val_bpb"):
        assert summary[key] is not None and math.isfinite(summary[key]), key
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert any("val_loss" in rec for rec in records)
    assert json.loads((run / "config.json").read_text())["family"] == ("ngram" if preset == "ngram-3" else "rnn")
    r = lmforge("generate", "--model", run, "--prompt", "The quick", "--max_new_tokens", "12", "--temperature", "0",
                "--no_stream")
    assert r.returncode == 0, r.stderr[-2000:]
    assert r.stdout.startswith("The quick") and len(r.stdout.strip()) > len("The quick")


def test_compare_end_to_end(corpus):
    from lmforge.models.registry import load_model

    out = corpus / "cmp"
    r = lmforge("compare", "--data", corpus / "corpus.txt", "--budget_seconds", "1", "--models",
                "ngram-debug,lstm-debug", "--out", out)
    assert r.returncode == 0, r.stderr[-2000:]
    result = json.loads((out / "compare.json").read_text())
    rows = {row["model"]: row for row in result["models"]}
    assert set(rows) == {"ngram-debug", "lstm-debug"}
    assert (out / "compare.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    table = (out / "compare.md").read_text()
    assert "ngram-debug" in table and "lstm-debug" in table and "val bits/char" in table
    assert rows["lstm-debug"]["steps"] >= 1 and rows["lstm-debug"]["stop_reason"] in ("max_seconds", "max_steps")
    assert result["dropout"] == 0.0 and rows["lstm-debug"]["dropout"] == 0.0

    # Bits per character over the whole validation split, recomputed through the n-gram's own per-token path.
    meta = json.loads((out / "data" / "meta.json").read_text())
    val = np.fromfile(out / "data" / "val.bin", dtype=meta["dtype"])
    lp = load_model(out / "ngram-debug").log_probs(val)
    assert result["val_chars"] == len(TEXT) - int(len(TEXT) * 0.9)  # the last 10% of the text, as is
    assert rows["ngram-debug"]["val_bpc"] == pytest.approx(-lp[1:].sum() / math.log(2) / meta["val_chars"],
                                                           rel=1e-5)


def test_compare_dropout_reaches_every_neural_model(corpus):
    out = corpus / "cmp-dropout"
    r = lmforge("compare", "--data", corpus / "corpus.txt", "--budget_seconds", "1", "--models",
                "ngram-debug,gru-debug,debug", "--dropout", "0.25", "--out", out)
    assert r.returncode == 0, r.stderr[-2000:]
    result = json.loads((out / "compare.json").read_text())
    rows = {row["model"]: row for row in result["models"]}
    assert result["dropout"] == 0.25 and "dropout 0.25" in (out / "compare.md").read_text()
    assert rows["gru-debug"]["dropout"] == rows["debug"]["dropout"] == 0.25
    assert rows["ngram-debug"]["dropout"] is None
    gpt = json.loads((out / "debug" / "config.json").read_text())
    assert gpt["dropout"] == 0.25 and gpt["attention_dropout"] == 0.0  # attention keeps its fused kernel
    assert json.loads((out / "gru-debug" / "config.json").read_text())["dropout"] == 0.25


@pytest.mark.parametrize("args, fragments", [
    (["--models", "ngram-debug,lstm-dbug"], ["lstm-dbug", "lstm-debug"]),
    (["--budget_seconds", "0"], ["budget_seconds"]),
    (["--dropout", "1.5"], ["dropout", "[0, 1)"]),
])
def test_bad_comparisons_fail_in_one_line(corpus, tmp_path, args, fragments):
    base = {"--budget_seconds": "1", "--models": "ngram-debug"}
    base.update(dict(zip(args[::2], args[1::2])))
    flat = [x for kv in base.items() for x in kv]
    assert_user_error(lmforge("compare", "--data", corpus / "corpus.txt", *flat, "--out", tmp_path / "c"),
                      *fragments)
    assert not (tmp_path / "c").exists()


@pytest.mark.parametrize("kwargs, fragment", [
    (dict(budget_seconds=-3), "budget_seconds"), (dict(budget_seconds=float("nan")), "budget_seconds"),
    (dict(models=","), "no models"), (dict(models=["bert-debug"]), "not a causal language model"),
])
def test_bad_comparisons_through_the_api(corpus, tmp_path, kwargs, fragment):
    from lmforge.api import compare
    from lmforge.errors import ConfigError

    kwargs = {"budget_seconds": 1, "models": ["ngram-debug"], **kwargs}
    with pytest.raises(ConfigError, match=fragment):
        compare(str(corpus / "corpus.txt"), kwargs.pop("budget_seconds"), tmp_path / "c", **kwargs)
    assert not (tmp_path / "c").exists()


def test_time_budget_keeps_the_schedule_on_the_clock():
    trainer = SimpleNamespace(state=SimpleNamespace(step=10, wall_seconds=5.0), cfg=SimpleNamespace(max_steps=999))
    TimeBudget(20.0)(trainer)
    assert trainer.cfg.max_steps == 40  # 0.5 s per step: 30 more steps fit in the 15 s left
    trainer.state.wall_seconds = 25.0
    TimeBudget(20.0)(trainer)
    assert trainer.cfg.max_steps == 11  # over budget: the next step is the last


def test_wider_models_train_at_proportionally_smaller_rates():
    from lmforge.runs.compare import training_settings
    from lmforge.models.registry import preset_config

    small, medium = (training_settings(preset_config(n)) for n in ("gpt-char-small", "gpt-char-medium"))
    assert small["lr"] == 6e-3 and medium["lr"] == pytest.approx(6e-3 * 128 / 384)
    assert training_settings(preset_config("gru-small"))["lr"] == 5e-3
    assert training_settings(preset_config("gru-medium"))["lr"] == pytest.approx(5e-3 * 320 / 768)
    assert training_settings(preset_config("rnn-small"))["lr"] == 2e-3
