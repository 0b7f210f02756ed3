"""`POST /v1/explain` against `lmforge explain` on the same run: the same tokens, target and scores, with the
attention maps; and its errors as OpenAI error JSON."""
import json

import httpx
import numpy as np
import pytest

import lmforge.api as lf
from lmforge.serve.app import create_app
from live_server import LiveServer, make_gpt_run, make_task_run

TEXT = "the film was good and the acting was great"


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("explain_route")
    return {"gpt": make_gpt_run(root / "gpt"), "classify": make_task_run(root / "classify"),
            "ner": make_task_run(root / "ner", task="ner", labels=("O", "B-PER", "I-PER")), "root": root}


@pytest.fixture(scope="module")
def server(runs):
    app = create_app(runs["gpt"], model_name="tiny", max_slots=1,
                     task_models={"classify": runs["classify"], "ner": runs["ner"]})
    with LiveServer(app) as live:
        yield live


def _explain(server, **body):
    return httpx.post(server.url + "/v1/explain", json=body, timeout=120)


def _reference(runs, task, method, target=None):
    out = runs["root"] / f"{task}-{method}-{target}"
    lf.explain(runs[task], text=TEXT, method=method, target=target, out=out)
    return json.loads((out / "explanations.json").read_text())[0], json.loads((out / "attention.json").read_text())[0]


def test_health_lists_the_explainable_task_models(server):
    assert httpx.get(server.url + "/health").json()["explain"] == ["classify", "ner"]


@pytest.mark.parametrize("task, method, target", [("classify", "ig", "pos"), ("classify", "rollout", None),
                                                  ("ner", "saliency", None), ("ner", "attention", "B-PER@2")])
def test_explanations_match_lmforge_explain(server, runs, task, method, target):
    body = {"task": task, "input": TEXT, "method": method, **({"target": target} if target else {})}
    response = _explain(server, **body)
    assert response.status_code == 200, response.text
    got = response.json()
    assert got["task"] == task and len(got["data"]) == 1
    got = got["data"][0]
    record, bertviz = _reference(runs, task, method, target)
    for key in ("tokens", "special", "target", "method"):
        assert got[key] == record[key], key
    assert got["probability"] == pytest.approx(record["probability"], abs=1e-5)
    assert np.allclose(got["scores"], record["scores"], atol=1e-4)
    if method == "ig":
        assert got["ig"]["steps"] == record["ig"]["steps"] and got["ig"]["relative_error"] <= 0.01
    # The maps, layer by layer and head by head, as the bertviz export holds them (rounded to 4 places).
    maps = np.array(got["attention"]["self"])  # (L, H, T, T)
    assert maps.shape == (2, 4, len(record["tokens"]), len(record["tokens"]))
    assert np.allclose(maps, np.array(bertviz["attention"][0]["attn"]), atol=2e-4)


def test_a_list_of_texts_gives_one_explanation_each(server):
    got = _explain(server, task="classify", input=[TEXT, "a dull boring film"]).json()["data"]
    assert [len(e["tokens"]) for e in got] == [11, 6]


@pytest.mark.parametrize("body, status, fragment", [
    ({"task": "classify", "input": TEXT, "target": "maybe"}, 400, "is not a label of this run"),
    ({"task": "classify", "input": "the film " * 40}, 400, "longer than the model's context of 64"),
    ({"task": "qa", "input": TEXT}, 404, "no served task model 'qa' to explain"),
    ({"task": "classify", "input": TEXT, "method": "logit-lens"}, 400, "method"),
])
def test_errors(server, body, status, fragment):
    response = _explain(server, **body)
    assert response.status_code == status, response.text
    assert fragment in response.json()["error"]["message"]
