"""`lmforge explain` end to end: the files it writes, and the one-line errors for input it cannot explain."""
import json

import pytest

import lmforge.api as lf
from cli_run import assert_user_error, lmforge  # tests/cli_run.py
from tiny_runs import lm_run, task_run


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("cli")
    return {"classify": task_run(root / "classify", "bert-debug"), "lm": lm_run(root / "lm"),
            "t5": task_run(root / "t5", "t5-debug"), "root": root}


def test_explain_writes_json_plots_viewer_and_bertviz_export(runs, tmp_path):
    out = tmp_path / "ig"
    records = lf.explain(runs["classify"], text="the film was good", method="ig", target="pos", out=out)
    saved = json.loads((out / "explanations.json").read_text())
    assert saved == json.loads(json.dumps(records))
    record = saved[0]
    assert record["tokens"] == ["[CLS]", "the", "film", "was", "good", "[SEP]"]
    assert record["target"] == {"kind": "class", "label": "pos"} and len(record["scores"]) == 6
    assert record["ig"]["relative_error"] <= 0.01
    bertviz = json.loads((out / "attention.json").read_text())[0]
    entry = bertviz["attention"][0]
    assert entry["left_text"] == record["tokens"] and len(entry["attn"]) == 2 and len(entry["attn"][0]) == 4
    assert all(abs(sum(row) - 1) < 1e-3 for row in entry["attn"][1][3])
    assert (out / "plots" / "000_scores.png").read_bytes()[:4] == b"\x89PNG"
    assert (out / "plots" / "000_attention.png").stat().st_size > 1000
    html = (out / "viewer.html").read_text()
    assert "http://" not in html and "https://" not in html and "/*EXPLANATION_DATA*/" not in html


def test_encoder_decoder_attention_has_self_and_cross_kinds(tmp_path):
    run = lm_run(tmp_path / "t5lm", "t5-debug")
    lf.explain(run, text="the quick brown fox", method="attention", out=tmp_path / "out")
    names = [e["name"] for e in json.loads((tmp_path / "out" / "attention.json").read_text())[0]["attention"]]
    assert names == ["Encoder", "Decoder", "Cross"]


def test_logit_lens_on_a_language_model(runs, tmp_path):
    records = lf.explain(runs["lm"], text="the quick brown", method="logit-lens", out=tmp_path / "lens")
    lens = records[0]["logit_lens"]
    assert [row["layer"] for row in lens] == [0, 1] and len(lens[0]["top"]) == len(records[0]["tokens"])


@pytest.mark.parametrize("args, fragment", [
    (["--method", "logit-lens"], "logit lens"),
    (["--target", "maybe"], "is not a label of this run"),
    (["--text", "the film " * 40], "longer than the model's context of 64"),
])
def test_user_errors_on_a_classifier(runs, args, fragment):
    text = [] if "--text" in args else ["--text", "the film was good"]
    out = runs["root"] / "never"
    result = lmforge("explain", "--model", runs["classify"], *text, *args, "--out", out, threads=1)
    assert_user_error(result, fragment)
    assert not out.exists()


def test_label_target_on_a_language_model_is_a_user_error(runs):
    result = lmforge("explain", "--model", runs["lm"], "--text", "the film", "--target", "positive review",
                     "--out", runs["root"] / "never2", threads=1)
    assert_user_error(result, "is a language model")


def test_explain_eval_reports_faithfulness(runs, tmp_path):
    data = tmp_path / "valid.txt"
    data.write_text("pos the film was good and the acting was great\nneg a dull boring film with a bad plot\n"
                    "pos the acting was great\n")
    report = lf.explain_eval(runs["classify"], str(data), methods="ig,rollout,attention", output=tmp_path / "r.json")
    assert report["examples"] == 3 and report["ig_completeness"]["within_1_percent"] == 1.0
    assert set(report["rank_correlation"]) == {"ig~rollout", "ig~attention", "rollout~attention"}
    saved = json.loads((tmp_path / "r.json").read_text())
    assert saved["report"] == json.loads(json.dumps(report))
    assert len(saved["examples"]) == 3
