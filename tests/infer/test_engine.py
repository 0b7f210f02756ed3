"""Continuous-batching engine: every request's tokens equal the reference `generate()` of that request
alone, whatever joins, leaves or waits around it; sampling, stopping, rejection, memory and streaming."""
import pytest
import torch

from lmforge.errors import ConfigError, LmforgeError
from lmforge.infer.engine import Engine, RequestOutput
from lmforge.infer.generate import generate, generate_completions
from lmforge.infer.kv_cache import SlotKVCache
from lmforge.infer.sampling import SamplingParams
from lmforge.models.registry import build_model

CORPUS = ["The quick brown fox jumps over the lazy dog. " * 3,
          "User: hello there\nAssistant: hi, how are you?\n",
          "Pack my box with five dozen liquor jugs!"]


def _model(preset, **kw):
    # A larger init than training uses, so greedy decoding of a random model gives varied tokens
    # with clear margins between the top logits.
    torch.manual_seed(0)
    return build_model(preset, init_std=0.2, **kw).eval()


@pytest.fixture(scope="module", params=["debug", "llama-debug"])
def model(request):
    return _model(request.param)


@pytest.fixture(scope="module")
def char_tok():
    from lmforge.data.tokenizers import train_tokenizer

    return train_tokenizer("char", CORPUS, vocab_size=0)


def _prompt(n, start):
    return [(start + 7 * i) % 500 + 1 for i in range(n)]


def _greedy(n):
    return SamplingParams(temperature=0.0, max_new_tokens=n)


def _reference(model, prompt, params, **kw):
    [c] = generate_completions(model, [prompt], params, **kw)
    return c


def _run(engine: Engine, script: dict, max_steps: int = 500):
    """Step `engine` to completion; `script[step]()` runs before that step. Returns every output by
    request id and the slot each request was admitted into."""
    outs: dict[str, list[RequestOutput]] = {}
    slots: dict[str, int] = {}
    for i in range(max_steps):
        if i in script:
            script[i]()
        if not engine.has_unfinished() and not any(k > i for k in script):
            break
        for o in engine.step():
            outs.setdefault(o.request_id, []).append(o)
        for r in engine.scheduler.running:
            slots.setdefault(r.request_id, r.slot)
    else:
        raise AssertionError("the engine did not finish")
    return outs, slots


def _tokens(outputs):
    return [t for o in outputs for t in o.new_token_ids]


# ---------------------------------------------------------------- greedy parity with generate()
@pytest.mark.parametrize("budget,chunked,one_forward", [(24, True, False), (6, True, True), (10, False, False)],
                         ids=["budget24-chunked", "budget6-chunked-mixed", "budget10-whole-prompts"])
def test_mixed_batch_greedy_equals_reference(model, budget, chunked, one_forward):
    engine = Engine(model, max_slots=3, max_num_batched_tokens=budget, chunked_prefill=chunked)
    if one_forward:
        engine.runner.max_padding_ratio = float("inf")  # prefills and decodes always in one forward
    lens = {"a": (9, 12), "b": (2, 5), "c": (5, 14), "d": (1, 9), "e": (10, 7), "f": (3, 11), "g": (7, 10)}
    prompts = {rid: _prompt(n, ord(rid)) for rid, (n, _) in lens.items()}
    params = {rid: _greedy(m) for rid, (_, m) in lens.items()}
    add = lambda *ids: lambda: [engine.add_request(prompts[r], params[r], request_id=r) for r in ids]
    aborted_slot = {}

    def abort_c():
        aborted_slot["c"] = engine.scheduler.requests["c"].slot
        assert engine.abort("c")
        add("g")()

    waits = []  # steps where a request waited although a slot was free: the token budget held it back
    orig_schedule = engine.scheduler.schedule

    def schedule():
        out = orig_schedule()
        if engine.scheduler.waiting and engine.cache.free_slots:
            waits.append(out.num_batched_tokens)
        return out
    engine.scheduler.schedule = schedule

    # More requests than slots at once; more join mid-flight; "c" is aborted mid-way.
    outs, slots = _run(engine, {0: add("a", "b", "c", "d"), 3: add("e", "f"), 5: abort_c})

    assert outs["c"][-1].finish_reason == "abort" and outs["c"][-1].finished
    assert 0 < len(_tokens(outs["c"])) < lens["c"][1]
    reused = [r for r in ("d", "e", "f", "g") if slots[r] == aborted_slot["c"]]
    assert reused, "the aborted request's slot was not reused"
    for rid in lens:
        if rid == "c":
            continue
        ref = _reference(model, prompts[rid], params[rid])
        assert _tokens(outs[rid]) == ref.ids, rid
        last = outs[rid][-1]
        assert last.finished and last.finish_reason == "length" and sum(o.finished for o in outs[rid]) == 1
        assert last.prompt_tokens == lens[rid][0] and last.completion_tokens == lens[rid][1]
    assert engine.cache.free_slots == 3 and not engine.has_unfinished()
    stats = engine.stats()
    if budget < 24:
        assert waits, "the token budget never made a prefill wait"
    if one_forward:
        assert stats.num_forwards == stats.num_steps
    assert stats.requests_aborted == 1 and stats.requests_finished == 6
    assert stats.generation_tokens == sum(m for r, (_, m) in lens.items() if r != "c") + len(_tokens(outs["c"]))


def test_queued_requests_wait_for_a_free_slot():
    model = _model("debug")
    engine = Engine(model, max_slots=2, max_num_batched_tokens=64)
    prompts = [_prompt(n, 3 * n) for n in (4, 11, 6, 2, 8)]
    for p in prompts:
        engine.add_request(p, _greedy(6))
    engine.step()
    stats = engine.stats()
    assert stats.num_running == 2 and stats.num_waiting == 3 and stats.num_free_slots == 0
    done = engine.generate([prompts[0]], _greedy(3))  # runs the queue along with it
    assert done[0].ids == _reference(model, prompts[0], _greedy(3)).ids
    while engine.has_unfinished():
        engine.step()
    assert engine.stats().requests_finished == 6


def test_generate_convenience_matches_reference(char_tok):
    model = _model("debug", vocab_size=char_tok.vocab_size)
    engine = Engine(model, char_tok, max_slots=2, max_num_batched_tokens=16)
    texts = ["User: hello", "Pack my", "The quick brown fox"]
    ps = [_greedy(8), _greedy(3), _greedy(12)]
    done = engine.generate(texts, ps)
    for text, p, c in zip(texts, ps, done):
        ref = _reference(model, char_tok.encode(text), p, tokenizer=char_tok, eos_id=char_tok.eos_id)
        assert (c.ids, c.text, c.finish_reason) == (ref.ids, ref.text, ref.finish_reason)


# ---------------------------------------------------------------- sampling
SAMPLED = [SamplingParams(temperature=0.9, seed=11, max_new_tokens=10),
           SamplingParams(temperature=0.8, top_k=20, top_p=0.9, repetition_penalty=1.3, seed=3, max_new_tokens=12)]


@pytest.mark.parametrize("params", SAMPLED, ids=["plain", "filtered"])
def test_seeded_sampling_does_not_depend_on_the_batch(model, params):
    prompt = _prompt(6, 40)
    alone = Engine(model, max_slots=4, max_num_batched_tokens=32).generate([prompt], params)[0].ids
    assert alone == generate(model, [prompt], params)[0]

    engine = Engine(model, max_slots=4, max_num_batched_tokens=12)
    others = [(_prompt(3, 1), SamplingParams(temperature=1.0, max_new_tokens=9)),
              (_prompt(11, 2), _greedy(7)),
              (_prompt(5, 3), SamplingParams(temperature=0.7, top_k=5, seed=99, max_new_tokens=12))]
    script = {0: lambda: engine.add_request(*others[0]),
              1: lambda: engine.add_request(prompt, params, request_id="seeded"),
              2: lambda: [engine.add_request(*o) for o in others[1:]]}
    outs, _ = _run(engine, script)
    assert _tokens(outs["seeded"]) == alone


def test_repetition_penalty_greedy_equals_reference(model):
    params = SamplingParams(temperature=0.0, repetition_penalty=1.5, max_new_tokens=10)
    prompts = [_prompt(n, n) for n in (7, 2, 4)]
    done = Engine(model, max_slots=3).generate(prompts, params)
    assert [c.ids for c in done] == generate(model, prompts, params)


# ---------------------------------------------------------------- stopping
def test_stop_strings_and_eos_end_requests_like_generate(char_tok):
    model = _model("llama-debug", vocab_size=char_tok.vocab_size)
    prompt = char_tok.encode("User: hello")
    free = generate(model, [prompt], _greedy(30))[0]
    text = char_tok.decode(free)
    stop = text[8:10]
    params = SamplingParams(temperature=0, max_new_tokens=30, stop=[stop, "@@"])
    ref = _reference(model, prompt, params, tokenizer=char_tok, eos_id=char_tok.eos_id)
    assert ref.finish_reason == "stop"

    engine = Engine(model, char_tok, max_slots=2, max_num_batched_tokens=8)
    outs, _ = _run(engine, {0: lambda: engine.add_request("User: hello", params, request_id="s"),
                            1: lambda: engine.add_request("Pack", _greedy(20), request_id="other")})
    streamed = "".join(o.new_text for o in outs["s"])
    assert streamed == ref.text and stop not in streamed
    assert outs["s"][-1].finish_reason == "stop" and outs["s"][-1].completion_tokens == len(ref.ids)
    [c] = Engine(model, char_tok).generate(["User: hello"], params)
    assert (c.ids, c.text, c.finish_reason) == (ref.ids, ref.text, "stop")

    eos = free[5]
    ref = _reference(model, prompt, _greedy(30), eos_id=eos)
    assert ref.finish_reason == "eos"
    engine = Engine(model, eos_id=eos)
    outs, _ = _run(engine, {0: lambda: engine.add_request(prompt, _greedy(30), "e")})
    assert _tokens(outs["e"]) == ref.ids and outs["e"][-1].finish_reason == "eos"
    assert eos not in _tokens(outs["e"])


# ---------------------------------------------------------------- admission, memory, streaming
def test_impossible_requests_are_rejected():
    model = _model("debug")
    block = model.config.block_size
    engine = Engine(model, max_slots=2, max_num_batched_tokens=16)
    with pytest.raises(LmforgeError, match=f"prompt has {block + 5} tokens but the context length is {block}"):
        engine.add_request([1] * (block + 5), _greedy(1))
    with pytest.raises(ConfigError, match="lower max_new_tokens to at most 28"):
        engine.add_request([1] * 100, _greedy(29))
    for bad in ([], [model.config.vocab_size]):
        with pytest.raises(ConfigError):
            engine.add_request(bad, _greedy(2))
    with pytest.raises(ConfigError, match="stop strings need a tokenizer"):
        engine.add_request([1], SamplingParams(stop=["x"]))
    engine.add_request([1, 2], _greedy(2), request_id="x")
    with pytest.raises(ConfigError, match="already in use"):
        engine.add_request([3], _greedy(2), request_id="x")
    with pytest.raises(ConfigError, match="context length"):
        Engine(model, max_len=64).add_request([1] * 60, _greedy(5))  # the slot, not the model, is the limit
    with pytest.raises(ConfigError, match="at most 16"):
        Engine(model, max_num_batched_tokens=16, chunked_prefill=False).add_request([1] * 17, _greedy(1))
    with pytest.raises(ConfigError, match="max_num_batched_tokens"):
        Engine(model, max_slots=8, max_num_batched_tokens=4)
    assert engine.generate([[5, 6]], _greedy(3))[0].ids == generate(model, [[5, 6]], _greedy(3))[0]


@pytest.mark.parametrize("preset,dtype", [("debug", torch.float32), ("llama-debug", torch.bfloat16)])
def test_cache_memory_matches_the_formula(preset, dtype):
    model = _model(preset).to(dtype)
    cfg = model.config
    engine = Engine(model, max_slots=5, max_len=40)
    itemsize = 4 if dtype == torch.float32 else 2
    expected = 2 * cfg.n_layer * 5 * cfg.n_kv_head * 40 * cfg.head_dim * itemsize
    assert engine.cache.nbytes == expected == engine.stats().kv_cache_bytes
    assert SlotKVCache.bytes_needed(cfg.n_layer, 5, cfg.n_kv_head, 40, cfg.head_dim, dtype) == expected
    assert engine.cache.k.shape == (cfg.n_layer, 5, cfg.n_kv_head, 40, cfg.head_dim)
    done = engine.generate([[1, 2, 3], [4]], _greedy(4))
    assert [len(c.ids) for c in done] == [4, 4] and engine.cache.free_slots == 5


def test_slot_cache_admission_and_reuse():
    cache = SlotKVCache(1, 2, 1, 16, 4)
    assert cache.can_admit(16) and not cache.can_admit(17) and cache.free_slots == 2
    a, b = cache.allocate(), cache.allocate()
    assert (a, b) == (0, 1) and not cache.can_admit(4)
    cache.free(a)
    assert cache.can_admit(4) and cache.allocate() == a
    with pytest.raises(ValueError):
        cache.free(5)


def test_stream_callback_and_stats(char_tok):
    model = _model("debug", vocab_size=char_tok.vocab_size)
    engine = Engine(model, char_tok, max_slots=2, max_num_batched_tokens=16)
    seen: list[RequestOutput] = []
    cb = engine.add_request("Pack my", _greedy(6), callback=seen.append)
    rid = engine.add_request("User: hi", _greedy(9))
    engine.step()
    streamed = list(engine.stream(rid))  # joined after the first token: it arrives as a catch-up
    ref = _reference(model, char_tok.encode("User: hi"), _greedy(9), tokenizer=char_tok)
    assert _tokens(streamed) == ref.ids and "".join(o.new_text for o in streamed) == ref.text
    assert streamed[-1].finished and not any(o.finished for o in streamed[:-1])
    while engine.has_unfinished():
        engine.step()
    assert [o.request_id for o in seen] == [cb] * 6 and seen[-1].finished
    victim = engine.add_request("Pack", _greedy(20))
    engine.step()
    assert engine.abort(victim) and not engine.abort(victim) and not engine.abort("nope")
    assert [o.finish_reason for o in engine.step()] == ["abort"]
    stats = engine.stats()
    assert stats.generation_tokens == 6 + 9 + 1 and stats.generation_tokens_per_s > 0
    assert stats.num_running == stats.num_waiting == 0 and stats.num_free_slots == 2
