"""The task routes over stand-in pipelines: the body each task reads, what its pipeline is called
with, results as plain JSON, and the checks on the model asked for and on question/context pairs."""

import pytest
import torch
from fastapi import FastAPI
from fastapi.testclient import TestClient

from lmforge.serve.config import Limits
from lmforge.serve.errors import install_error_handlers
from lmforge.serve.metrics import Metrics
from lmforge.serve.routes.tasks import add_task_routes, jsonable
from lmforge.serve.task_endpoints import TaskEndpoint


class RecordingPipeline:
    def __init__(self):
        self.calls = []

    def __call__(self, *args, **kwargs):
        self.calls.append((args, kwargs))
        n = len(args[0]) if args else len(kwargs["question"])
        return [{"score": torch.tensor(0.5), "index": i} for i in range(n)]


class StandInState:
    """What the task routes use of the server state."""

    def __init__(self, names):
        self.tasks = {n: TaskEndpoint(n, f"runs/{n}", RecordingPipeline()) for n in names}
        self.limits = Limits(max_prompt_tokens=10, max_tokens_limit=10, max_body_bytes=1 << 20, max_concurrent=4,
                             request_timeout=30.0)
        self.metrics = Metrics()
        self.active = 0

    def acquire(self):
        self.active += 1

    def release(self):
        self.active -= 1


@pytest.fixture
def served():
    state = StandInState(["classify", "ner", "qa"])
    app = FastAPI()
    install_error_handlers(app)
    add_task_routes(app, state)
    with TestClient(app) as client:
        yield client, state


def test_text_routes_pass_a_list_of_texts(served):
    client, state = served
    r = client.post("/v1/classify", json={"input": "one text"})
    assert r.status_code == 200, r.text
    assert r.json() == {"object": "list", "model": "classify", "task": "classify",
                        "data": [{"score": 0.5, "index": 0}]}
    assert state.tasks["classify"].pipeline.calls == [((["one text"],), {})]
    client.post("/v1/ner", json={"input": ["a b", "c"]})
    # A list sent to the route is several texts, never one pre-split token list.
    assert state.tasks["ner"].pipeline.calls == [((["a b", "c"],), {"is_split_into_words": False})]
    assert state.active == 0 and state.metrics.latency.count == 2


def test_qa_pairs_questions_with_contexts(served):
    client, state = served
    r = client.post("/v1/qa", json={"question": ["who?", "what?"], "context": "the text"})
    assert r.status_code == 200 and len(r.json()["data"]) == 2
    assert state.tasks["qa"].pipeline.calls == [((), {"question": ["who?", "what?"], "context": ["the text"]})]
    r = client.post("/v1/qa", json={"question": ["a", "b"], "context": ["c"]})
    assert r.status_code == 400
    assert r.json()["error"] == {"message": "got 2 questions and 1 contexts; pass as many of each (or one of either)",
                                 "type": "invalid_request_error", "param": "question", "code": "invalid_value"}


def test_a_route_serves_only_its_own_model(served):
    client, _ = served
    r = client.post("/v1/classify", json={"input": "x", "model": "ner"})
    assert r.status_code == 404
    assert r.json()["error"]["message"] == "the model 'ner' does not exist; /v1/classify serves 'classify'"


def test_jsonable_turns_tensors_and_tuples_into_plain_values():
    assert jsonable({1: (torch.tensor(2), [torch.tensor(0.25)])}) == {"1": [2, [0.25]]}
