"""The HTTP server, driven by the real `openai` client and raw HTTP: OpenAI-compatible completions and
chat (streamed and not) that equal the reference generation, errors in OpenAI's shape with the right
status, API keys, limits (size, concurrency, time), client disconnects, metrics and a task route."""
import json
import threading
import time

import httpx
import openai
import pytest
import torch

import lmforge.api as lf
from lmforge.cli import _task_models, build_parser, normalize_argv
from lmforge.config import StartConfig, TaskDataConfig, TrainConfig
from lmforge.errors import ConfigError
from lmforge.infer.chat import TURN_STOP, format_transcript
from lmforge.serve.app import create_app
from live_server import LiveServer, make_gpt_run

KEY = "sk-test-key"
MODEL = "tiny"


@pytest.fixture(scope="module")
def gpt_run(tmp_path_factory):
    return make_gpt_run(tmp_path_factory.mktemp("serve") / "tiny")


@pytest.fixture(scope="module")
def classify_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("classify")
    pos, neg = "good great fine lovely".split(), "bad awful poor sad".split()
    lines = [f"{i % 2} the film was {(pos if i % 2 else neg)[i % 4]}" for i in range(48)]
    (root / "train.txt").write_text("\n".join(lines[:40]) + "\n")
    (root / "dev.txt").write_text("\n".join(lines[40:]) + "\n")
    run = root / "run"
    lf.finetune("classify", data=TaskDataConfig(train=str(root / "train.txt"), valid=str(root / "dev.txt"),
                                                format="label_text", max_length=16),
                model=StartConfig(init="bert-debug", vocab_size=300, n_layer=1, n_embd=32, n_head=2, block_size=32),
                out=run, train=TrainConfig(batch_size=8, max_steps=5, warmup_steps=1, eval_interval=5,
                                           checkpoint_interval=5, log_interval=5, progress=False))
    return run


@pytest.fixture(scope="module")
def server(gpt_run, classify_run):
    app = create_app(gpt_run, model_name=MODEL, max_prompt_tokens=80, max_tokens_limit=48, max_body_bytes=16_384,
                     max_concurrent=16, request_timeout=60, task_models={"classify": classify_run}, max_slots=4)
    with LiveServer(app) as live:
        yield live


@pytest.fixture(scope="module")
def secured(gpt_run):
    app = create_app(gpt_run, model_name=MODEL, api_keys=[KEY, "sk-other"], max_concurrent=1, request_timeout=2.0,
                     max_slots=2)
    with LiveServer(app) as live:
        yield live


def _client(live, key="unused", **kw) -> openai.OpenAI:
    return openai.OpenAI(base_url=live.url + "/v1", api_key=key, max_retries=0, timeout=30, **kw)


def _reference(run_dir, prompts, n):
    return [texts[0] for texts in lf.generate(str(run_dir), prompts, temperature=0.0, max_new_tokens=n)]


def _assert_error(response: httpx.Response, status: int, code: str | None = None) -> dict:
    assert response.status_code == status, response.text
    body = response.json()
    assert set(body) == {"error"} and set(body["error"]) == {"message", "type", "param", "code"}, body
    assert isinstance(body["error"]["message"], str) and body["error"]["message"]
    if code is not None:
        assert body["error"]["code"] == code, body
    return body["error"]


def _slow_steps(live, seconds: float):
    """Make every engine step take at least `seconds`; returns the function that undoes it."""
    engine = live.state.engine
    step = engine.step

    def slow():
        time.sleep(seconds)
        return step()

    engine.step = slow
    return lambda: engine.__dict__.pop("step", None)


# ---------------------------------------------------------------- OpenAI-compatible generation
def test_models_list(server):
    ids = {m.id for m in _client(server).models.list().data}
    assert ids == {MODEL, "classify"}


def test_greedy_completion_equals_reference_generate(server, gpt_run):
    prompt, n = "The quick brown", 24
    r = _client(server).completions.create(model=MODEL, prompt=prompt, max_tokens=n, temperature=0)
    [expected] = _reference(gpt_run, [prompt], n)
    assert r.object == "text_completion" and r.model == MODEL
    assert r.choices[0].text == expected
    assert r.choices[0].finish_reason in ("stop", "length")
    assert r.usage.prompt_tokens == len(prompt)  # a character tokenizer
    assert r.usage.total_tokens == r.usage.prompt_tokens + r.usage.completion_tokens > r.usage.prompt_tokens


def test_generation_rules_reach_the_engine_like_reference_generate(server, gpt_run):
    # no_repeat_ngram_size and min_tokens (vLLM's name) are extensions, passed through to the engine.
    prompt, n = "The quick brown", 24
    rules = {"no_repeat_ngram_size": 2, "min_tokens": 20}
    r = _client(server).completions.create(model=MODEL, prompt=prompt, max_tokens=n, temperature=0, extra_body=rules)
    [expected] = [texts[0] for texts in lf.generate(str(gpt_run), [prompt], temperature=0.0, max_new_tokens=n,
                                                    no_repeat_ngram_size=2, min_new_tokens=20)]
    assert r.choices[0].text == expected
    err = _assert_error(httpx.post(server.url + "/v1/completions",
                                   json={"model": MODEL, "prompt": "x", "max_tokens": 5, "min_tokens": 9}), 400)
    assert "min_new_tokens" in err["message"]


def test_several_prompts_give_one_choice_each(server, gpt_run):
    prompts = ["Pack my", "hello"]
    r = _client(server).completions.create(model=MODEL, prompt=prompts, max_tokens=12, temperature=0)
    assert [c.index for c in r.choices] == [0, 1]
    assert [c.text for c in r.choices] == _reference(gpt_run, prompts, 12)


def test_chat_uses_the_chat_template_and_streaming_equals_the_whole_reply(server):
    client = _client(server)
    messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "hello there"},
                {"role": "assistant", "content": "hi"}, {"role": "user", "content": "how are you?"}]
    whole = client.chat.completions.create(model=MODEL, messages=messages, max_tokens=30, temperature=0)
    reply = whole.choices[0].message.content
    assert whole.object == "chat.completion" and whole.choices[0].message.role == "assistant"
    assert whole.usage.completion_tokens > 0 and reply
    # The same prompt as `lmforge chat` builds, continued by the completions endpoint.
    prompt = format_transcript([("hello there", "hi")], "how are you?", "Be brief.")
    assert whole.usage.prompt_tokens == len(prompt)
    plain = client.completions.create(model=MODEL, prompt=prompt, max_tokens=30, temperature=0, stop=[TURN_STOP])
    assert plain.choices[0].text.lstrip() == reply

    deltas, finish, usage = [], None, None
    for chunk in client.chat.completions.create(model=MODEL, messages=messages, max_tokens=30, temperature=0,
                                                stream=True, stream_options={"include_usage": True}):
        assert chunk.object == "chat.completion.chunk"
        if chunk.usage is not None:
            usage = chunk.usage
        for choice in chunk.choices:
            deltas.append(choice.delta.content or "")
            finish = choice.finish_reason or finish
    assert len([d for d in deltas if d]) > 1
    assert "".join(deltas) == reply
    assert finish == whole.choices[0].finish_reason
    assert usage.completion_tokens == whole.usage.completion_tokens


def test_streamed_completion_is_server_sent_events_ending_in_done(server):
    body = {"model": MODEL, "prompt": "The", "max_tokens": 8, "temperature": 0, "stream": True}
    with httpx.stream("POST", server.url + "/v1/completions", json=body, timeout=30) as r:
        assert r.status_code == 200 and r.headers["content-type"].startswith("text/event-stream")
        raw = r.read().decode()
    events = [e for e in raw.split("\n\n") if e]
    assert all(e.startswith("data: ") for e in events) and events[-1] == "data: [DONE]"
    chunks = [json.loads(e[6:]) for e in events[:-1]]
    assert chunks[-1]["choices"][0]["finish_reason"] == "length"
    whole = httpx.post(server.url + "/v1/completions", json={**body, "stream": False}, timeout=30).json()
    assert "".join(c["choices"][0]["text"] for c in chunks) == whole["choices"][0]["text"]


def test_concurrent_requests_all_complete_with_their_own_answers(server, gpt_run):
    prompts = [f"{w} fox" for w in "The A quick lazy brown Pack my box".split()]
    results: dict[int, str] = {}
    client = _client(server)

    def ask(i):
        results[i] = client.completions.create(model=MODEL, prompt=prompts[i], max_tokens=16, temperature=0)\
            .choices[0].text

    threads = [threading.Thread(target=ask, args=(i,)) for i in range(len(prompts))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert [results.get(i) for i in range(len(prompts))] == _reference(gpt_run, prompts, 16)


# ---------------------------------------------------------------- errors and limits
def test_bad_requests_get_openai_errors(server):
    url = server.url + "/v1/completions"
    err = _assert_error(httpx.post(url, content=b'{"model": "tiny", "prompt": ', timeout=10,
                                   headers={"content-type": "application/json"}), 400, "invalid_json")
    assert "JSON" in err["message"]
    err = _assert_error(httpx.post(url, json={"model": MODEL, "prompt": "x", "temperature": -0.5}), 400)
    assert err["param"] == "temperature"
    err = _assert_error(httpx.post(url, json={"model": MODEL, "prompt": "x", "max_tokens": 49}), 400)
    assert err["param"] == "max_tokens" and "48" in err["message"]
    err = _assert_error(httpx.post(url, json={"model": MODEL, "prompt": "y" * 81}), 400, "context_length_exceeded")
    assert "80" in err["message"]
    err = _assert_error(httpx.post(url, json={"model": MODEL}), 400, "missing_parameter")
    assert err["param"] == "prompt"
    _assert_error(httpx.post(url, json={"model": MODEL, "prompt": "x", "stop": ["ok", 3]}), 400)
    err = _assert_error(httpx.post(url, json={"model": "gpt-4", "prompt": "x"}), 404, "model_not_found")
    assert err["param"] == "model"
    _assert_error(httpx.post(url, json={"model": MODEL, "prompt": "z" * 20_000}), 413, "request_too_large")
    _assert_error(httpx.post(server.url + "/v1/chat/completions",
                             json={"model": MODEL, "messages": [{"role": "assistant", "content": "hi"}]}), 400)
    _assert_error(httpx.get(server.url + "/v1/nowhere"), 404)
    _assert_error(httpx.post(server.url + "/v1/qa", json={"question": "q", "context": "c"}), 404)


def test_the_openai_client_sees_typed_errors(server):
    client = _client(server)
    with pytest.raises(openai.NotFoundError):
        client.completions.create(model="unknown", prompt="x")
    with pytest.raises(openai.BadRequestError, match="max_tokens"):
        client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "x"}], max_tokens=1000)
    with pytest.raises(openai.BadRequestError, match="temperature"):
        client.completions.create(model=MODEL, prompt="x", temperature=-1)


def test_api_keys(secured):
    url = secured.url + "/v1/models"
    _assert_error(httpx.get(url), 401, "invalid_api_key")
    _assert_error(httpx.get(url, headers={"Authorization": "Bearer nope"}), 401, "invalid_api_key")
    _assert_error(httpx.post(secured.url + "/v1/completions", content=b"{bad"), 401)  # the key is checked first
    with pytest.raises(openai.AuthenticationError):
        _client(secured, key="wrong").models.list()
    r = _client(secured, key=KEY).completions.create(model=MODEL, prompt="The", max_tokens=4, temperature=0)
    assert r.usage.completion_tokens == 4
    assert _client(secured, key="sk-other").models.list().data[0].id == MODEL
    assert httpx.get(secured.url + "/health").status_code == 200  # probes need no key


def test_concurrency_limit_and_request_timeout(secured):
    undo = _slow_steps(secured, 0.1)
    auth = {"Authorization": f"Bearer {KEY}"}
    first: dict = {}

    def long_request():
        # min_tokens: a sampled end-of-text must not finish this request before the timeout does.
        first["response"] = httpx.post(secured.url + "/v1/completions", headers=auth, timeout=30,
                                       json={"model": MODEL, "prompt": "The", "max_tokens": 60, "min_tokens": 60})

    try:
        t = threading.Thread(target=long_request)
        t.start()
        deadline = time.monotonic() + 10
        while secured.state.active == 0 and time.monotonic() < deadline:
            time.sleep(0.01)
        r = httpx.post(secured.url + "/v1/completions", headers=auth, json={"model": MODEL, "prompt": "x"})
        _assert_error(r, 429, "rate_limit_exceeded")
        t.join(30)
        _assert_error(first["response"], 504, "timeout")
    finally:
        undo()
    deadline = time.monotonic() + 10  # the timed-out request was aborted, freeing its slot
    while secured.state.loop.stats().num_running and time.monotonic() < deadline:
        time.sleep(0.05)
    assert secured.state.loop.stats().num_running == 0 and secured.state.active == 0


def test_a_client_that_disconnects_mid_stream_aborts_its_request(server):
    aborted = server.state.loop.stats().requests_aborted
    undo = _slow_steps(server, 0.05)
    try:
        body = {"model": MODEL, "prompt": "The", "max_tokens": 48, "stream": True}
        with httpx.stream("POST", server.url + "/v1/completions", json=body, timeout=30) as r:
            got = 0
            for line in r.iter_lines():
                got += line.startswith("data: ")
                if got == 3:
                    break
        deadline = time.monotonic() + 10
        while server.state.loop.stats().requests_aborted == aborted and time.monotonic() < deadline:
            time.sleep(0.05)
    finally:
        undo()
    assert server.state.loop.stats().requests_aborted == aborted + 1
    assert server.state.loop.stats().num_running == 0


# ---------------------------------------------------------------- monitoring and tasks
def test_health_and_metrics(server):
    health = httpx.get(server.url + "/health").json()
    assert health["status"] == "ok" and health["model"] == MODEL and health["tasks"] == ["classify"]
    httpx.post(server.url + "/v1/completions", json={"model": MODEL, "prompt": "The", "max_tokens": 3}, timeout=30)
    text = httpx.get(server.url + "/metrics").text
    for name in ("lmforge_queue_length", "lmforge_running_requests", "lmforge_tokens_generated_total",
                 "lmforge_tokens_per_second", "lmforge_request_latency_seconds_bucket",
                 "lmforge_time_to_first_token_seconds_bucket", "lmforge_http_responses_total"):
        assert f"\n{name}" in text, name
    generated = next(line for line in text.splitlines() if line.startswith("lmforge_tokens_generated_total "))
    assert float(generated.split()[1]) >= 3
    assert 'lmforge_time_to_first_token_seconds_bucket{le="+Inf"}' in text


def test_classify_task_route(server, classify_run):
    r = httpx.post(server.url + "/v1/classify", json={"input": ["the film was lovely", "the film was awful"]},
                   timeout=30)
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["task"] == "classify" and len(body["data"]) == 2
    expected = lf.pipeline("classify", classify_run)(["the film was lovely", "the film was awful"])
    assert [d["label"] for d in body["data"]] == [e["label"] for e in expected]
    assert all(0.0 <= d["score"] <= 1.0 for d in body["data"])
    one = httpx.post(server.url + "/v1/classify", json={"input": "the film was good"}, timeout=30).json()
    assert len(one["data"]) == 1
    _assert_error(httpx.post(server.url + "/v1/classify", json={"text": "x"}), 400, "missing_parameter")


def test_serve_verb_parses_its_options(tmp_path):
    ns = build_parser().parse_args(normalize_argv(["serve", "--model", "runs/x", "--api-key", "a", "--api_key", "b",
                                                   "--task_model", "classify=runs/c", "--max-slots", "4"]))
    args = ns.serve
    assert (args.host, args.port, args.api_key, args.max_slots) == ("127.0.0.1", 8000, ["a", "b"], 4)
    assert _task_models(args.task_model) == {"classify": "runs/c"}
    with pytest.raises(ConfigError):
        _task_models(["classify"])


def test_bfloat16_serving_equals_reference_generation_of_the_bfloat16_model(gpt_run):
    model, tokenizer = lf.load(str(gpt_run))
    prompt, n = "The quick brown", 16
    [[expected]] = lf.generate(model.to(torch.bfloat16), [prompt], tokenizer=tokenizer, temperature=0.0,
                               max_new_tokens=n)
    app = create_app(gpt_run, model_name=MODEL, dtype="bfloat16", max_slots=2)
    assert next(app.state.server.engine.model.parameters()).dtype == torch.bfloat16
    with LiveServer(app) as live:
        r = _client(live).completions.create(model=MODEL, prompt=prompt, max_tokens=n, temperature=0)
    assert r.choices[0].text == expected
    with pytest.raises(ConfigError, match="dtype"):
        create_app(gpt_run, dtype="float16")


def test_serving_a_classifier_as_the_generator_suggests_a_task_route(classify_run):
    with pytest.raises(ConfigError, match=f"--task_model classify={classify_run}"):
        create_app(classify_run)
