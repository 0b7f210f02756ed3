"""Token scores over HTTP: `echo` + `logprobs` on /v1/completions (through the real `openai` client) and chat
`logprobs` against a naive full-recompute reference, the tokenizer routes against the run's own tokenizer, and
each refusal in OpenAI's error shape."""
import httpx
import openai
import pytest
import torch

from lmforge.data.tokenizers import Tokenizer
from lmforge.models.registry import load_model
from lmforge.serve.app import create_app
from live_server import LiveServer, make_gpt_run

MODEL = "tiny"
KEY = "sk-scoring"


@pytest.fixture(scope="module")
def gpt_run(tmp_path_factory):
    return make_gpt_run(tmp_path_factory.mktemp("scoring") / "tiny")


@pytest.fixture(scope="module")
def reference(gpt_run):
    return load_model(gpt_run).eval(), Tokenizer.load(gpt_run)


@pytest.fixture(scope="module")
def server(gpt_run):
    app = create_app(gpt_run, model_name=MODEL, max_logprobs=5, max_slots=4, api_keys=[KEY])
    with LiveServer(app) as live:
        yield live


def _client(live) -> openai.OpenAI:
    return openai.OpenAI(base_url=live.url + "/v1", api_key=KEY, max_retries=0, timeout=30)


def _post(live, path: str, body: dict, key: str | None = KEY) -> httpx.Response:
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    return httpx.post(live.url + path, json=body, headers=headers, timeout=30)


def naive(model, ids: list[int], k: int) -> list[tuple[float, dict[int, float]]]:
    """(log-probability, the k best as {id: logprob}) of tokens 1.. of `ids`, each from a full forward pass of its
    prefix alone."""
    out = []
    with torch.no_grad():
        for i in range(1, len(ids)):
            logits = model(torch.tensor([ids[:i]]))[0, -1].double()
            logprobs = logits - torch.logsumexp(logits, -1)
            top = torch.topk(logprobs, k)
            out.append((float(logprobs[ids[i]]), dict(zip(top.indices.tolist(), top.values.tolist()))))
    return out


def _check_against_naive(tok, model, ids, logprobs, k):
    expected = naive(model, ids, k)
    assert logprobs.tokens == [tok.decode([t]) or tok.id_to_token(t) for t in ids]
    assert logprobs.token_logprobs[0] is None and logprobs.top_logprobs[0] is None
    assert logprobs.token_logprobs[1:] == pytest.approx([lp for lp, _ in expected], abs=1e-5)
    for top, token, (lp, best) in zip(logprobs.top_logprobs[1:], ids[1:], expected):
        wanted = {tok.decode([t]) or tok.id_to_token(t): v for t, v in best.items()}
        wanted.setdefault(tok.decode([token]) or tok.id_to_token(token), lp)  # the chosen token is always shown
        assert top.keys() == wanted.keys() and list(top.values()) == pytest.approx(list(wanted.values()), abs=1e-5)


def test_echo_with_max_tokens_0_scores_the_prompt(server, reference):
    model, tok = reference
    prompt = "The quick brown fox"
    r = _client(server).completions.create(model=MODEL, prompt=prompt, echo=True, logprobs=3, max_tokens=0)
    [choice] = r.choices
    assert choice.text == prompt and r.usage.completion_tokens == 0 and r.usage.prompt_tokens == len(prompt)
    ids = tok.encode(prompt)
    _check_against_naive(tok, model, ids, choice.logprobs, 3)
    assert choice.logprobs.text_offset == list(range(len(prompt)))  # one character per token


def test_batches_of_token_lists_are_scored_each_on_its_own(server, reference):
    model, tok = reference
    batch = [tok.encode("hello there"), tok.encode("Pack my box"), tok.encode("a")]
    r = _client(server).completions.create(model=MODEL, prompt=batch, echo=True, logprobs=2, max_tokens=0)
    assert [c.index for c in r.choices] == [0, 1, 2]
    for ids, choice in zip(batch, r.choices):
        assert choice.text == tok.decode(ids)
        _check_against_naive(tok, model, ids, choice.logprobs, 2)


def test_echo_plus_one_token_is_what_lm_evaluation_harness_sends(server, reference):
    # local-completions asks for max_tokens 1 with echo and logprobs 1, then drops the last score.
    model, tok = reference
    ids = tok.encode("User: hello")
    r = _post(server, "/v1/completions", {"model": MODEL, "prompt": [ids], "echo": True, "logprobs": 1,
                                          "max_tokens": 1, "temperature": 0}).json()
    lp = r["choices"][0]["logprobs"]
    assert len(lp["token_logprobs"]) == len(ids) + 1
    expected = naive(model, ids, 1)
    assert lp["token_logprobs"][1:len(ids)] == pytest.approx([v for v, _ in expected], abs=1e-5)
    greedy = [v == max(top.values()) for v, top in zip(lp["token_logprobs"][1:-1], lp["top_logprobs"][1:-1])]
    assert greedy == [v == max(best.values()) for v, best in expected]


def test_generated_tokens_are_scored_like_a_full_recompute(server, reference):
    model, tok = reference
    prompt = "The quick"
    r = _client(server).completions.create(model=MODEL, prompt=prompt, logprobs=4, max_tokens=8, temperature=0.8,
                                           seed=5)
    [choice] = r.choices
    completion_ids = [tok.token_to_id(t) for t in choice.logprobs.tokens]
    assert "".join(choice.logprobs.tokens) == choice.text or "<|endoftext|>" in choice.logprobs.tokens
    expected = naive(model, tok.encode(prompt) + completion_ids, 4)[len(tok.encode(prompt)) - 1:]
    assert choice.logprobs.token_logprobs == pytest.approx([v for v, _ in expected], abs=1e-5)


def test_chat_logprobs_score_the_reply(server, reference):
    model, tok = reference
    r = _client(server).chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "hello"}],
                                                logprobs=True, top_logprobs=2, max_tokens=6, temperature=0)
    content = r.choices[0].logprobs.content
    assert 0 < len(content) <= 6
    assert "".join(c.token for c in content).lstrip() == r.choices[0].message.content
    for c in content:
        assert c.bytes == list(c.token.encode()) and len(c.top_logprobs) == 2
        assert c.logprob == pytest.approx(max(t.logprob for t in c.top_logprobs), abs=1e-6)  # greedy: the best one


def test_tokenizer_routes_match_the_runs_tokenizer(server, reference):
    _, tok = reference
    text = "Pack my box with five dozen"
    body = _post(server, "/tokenize", {"prompt": text, "add_special_tokens": False}).json()
    assert body["tokens"] == tok.encode(text) and body["count"] == len(text) and body["max_model_len"] == 128
    assert _post(server, "/detokenize", {"tokens": body["tokens"]}).json() == {"prompt": text}
    info = httpx.get(server.url + "/tokenizer_info", headers={"Authorization": f"Bearer {KEY}"}).json()
    assert info["eos_token"] == "<|endoftext|>" and info["eos_token_id"] == tok.eos_id
    assert _post(server, "/tokenize", {"prompt": "<|endoftext|>"}).json()["tokens"] == [tok.eos_id]
    assert _post(server, "/tokenize", {"prompt": text}, key=None).status_code == 401


def _error(response: httpx.Response, status: int, param: str) -> str:
    assert response.status_code == status, response.text
    body = response.json()
    assert set(body) == {"error"} and set(body["error"]) == {"message", "type", "param", "code"}
    assert body["error"]["param"] == param
    return body["error"]["message"]


@pytest.mark.parametrize("body, param, words", [
    ({"prompt": "abc", "echo": True, "logprobs": 6, "max_tokens": 0}, "logprobs", "at most 5"),
    ({"prompt": "x" * 129, "echo": True, "logprobs": 1, "max_tokens": 0}, "prompt", "context length of 128"),
    ({"prompt": "x" * 128, "echo": True, "logprobs": 1, "max_tokens": 1}, "prompt", "context length of 128"),
    ({"prompt": "abc", "max_tokens": 0}, "max_tokens", "only useful with echo"),
    ({"prompt": "abc", "logprobs": 1, "stream": True}, "stream", "not supported with stream"),
    ({"prompt": [[1, 2], [3, 999]], "echo": True, "max_tokens": 0}, "prompt", "vocabulary size"),
])
def test_bad_scoring_requests_are_refused(server, body, param, words):
    assert words in _error(_post(server, "/v1/completions", {"model": MODEL, **body}), 400, param)


def test_bad_chat_logprobs_are_refused(server):
    messages = [{"role": "user", "content": "hi"}]
    assert "at most 5" in _error(_post(server, "/v1/chat/completions", {"model": MODEL, "messages": messages,
                                                                         "logprobs": True, "top_logprobs": 9}),
                                 400, "top_logprobs")
    assert "needs logprobs" in _error(_post(server, "/v1/chat/completions", {"model": MODEL, "messages": messages,
                                                                              "top_logprobs": 2}), 400, "top_logprobs")


def test_echo_without_logprobs_puts_the_prompt_first(server):
    r = _client(server).completions.create(model=MODEL, prompt="The quick", echo=True, max_tokens=5, temperature=0)
    plain = _client(server).completions.create(model=MODEL, prompt="The quick", max_tokens=5, temperature=0)
    assert r.choices[0].text == "The quick" + plain.choices[0].text and r.choices[0].logprobs is None
