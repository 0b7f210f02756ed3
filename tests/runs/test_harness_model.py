"""The lm-eval model over lmforge, asked directly: log-likelihoods, rolling log-likelihoods and greedy generation
against references computed here (full forward passes, the reference decoder), and lm-eval's type check."""
import pytest
import torch

from lmforge.infer.generate import generate_completions
from lmforge.infer.sampling import SamplingParams
from lmforge.data.tokenizers import train_tokenizer
from lmforge.models.registry import build_model
from lmforge.runs.harness_model import harness_model

lm_eval = pytest.importorskip("lm_eval", reason="lm-evaluation-harness is not installed (pip install lmforge[harness])")
from lm_eval.api.instance import Instance  # noqa: E402  (only once lm-eval is known to be there)
from lm_eval.api.model import LM  # noqa: E402

TEXTS = ["The quick brown fox jumps over the lazy dog.", "Pack my box with five dozen liquor jugs!"]


@pytest.fixture(scope="module")
def lm():
    tok = train_tokenizer("bpe", TEXTS * 10, vocab_size=300)
    torch.manual_seed(0)
    model = build_model("debug", init_std=0.2, vocab_size=tok.vocab_size, block_size=32).eval()
    return harness_model(model, tok, batch_size=3)


def _request(kind: str, *args) -> Instance:
    return Instance(request_type=kind, doc={}, arguments=args, idx=0)


def _logprob_of(model, context: list[int], target: int) -> float:
    with torch.no_grad():
        logits = model(torch.tensor([context]))[0, -1].double()
    return float(logits[target] - torch.logsumexp(logits, -1))


def test_it_is_an_lm_eval_model(lm):
    assert isinstance(lm, LM) and lm.eot_token_id == lm.lmforge_tokenizer.eos_id


def test_loglikelihood_is_the_sum_over_the_continuation(lm):
    context, continuation = "The quick brown", " fox jumps"
    [(ll, greedy)] = lm.loglikelihood([_request("loglikelihood", context, continuation)])
    whole, ctx = lm.tok_encode(context + continuation), lm.tok_encode(context)
    expected = [_logprob_of(lm.model, whole[:i], whole[i]) for i in range(len(ctx), len(whole))]
    assert ll == pytest.approx(sum(expected), abs=1e-5)
    with torch.no_grad():
        best = [int(lm.model(torch.tensor([whole[:i]]))[0, -1].argmax()) for i in range(len(ctx), len(whole))]
    assert greedy == (best == whole[len(ctx):])


def test_rolling_loglikelihood_scores_every_token_in_windows_of_the_context(lm):
    text = " ".join(TEXTS * 3)  # longer than the 32-token context
    ids = lm.tok_encode(text)
    assert len(ids) > 2 * lm.context_len
    [total] = lm.loglikelihood_rolling([_request("loglikelihood_rolling", text)])
    # The reference, token by token from its own forward pass: the first L tokens are read after the end-of-text
    # token; after them come windows of L predicted tokens, each token reading back to the token before its window
    # (the last window, shorter, reads back L + 1 tokens from its end), as lm-eval's rolling windows do.
    L, n, expected = lm.context_len, len(ids), 0.0
    for j in range(n):
        if j < L:
            context = [lm.eot_token_id] + ids[:j]
        else:
            window_start = L + (j - L) // L * L
            window_end = min(window_start + L, n)
            context = ids[max(0, window_end - L - 1):j]
        expected += _logprob_of(lm.model, context, ids[j])
    assert total == pytest.approx(expected, abs=1e-4)


def test_generate_until_is_greedy_and_stops_at_the_stop_string(lm):
    prompts = ["The quick", "Pack my box"]
    requests = [_request("generate_until", p, {"until": ["o"], "max_gen_toks": 10, "do_sample": False})
                for p in prompts]
    got = lm.generate_until(requests)
    for prompt, text in zip(prompts, got):
        [ref] = generate_completions(lm.model, [lm.tok_encode(prompt)], SamplingParams(temperature=0.0,
                                                                                      max_new_tokens=10),
                                     eos_id=lm.eot_token_id, tokenizer=lm.lmforge_tokenizer)
        assert text == ref.text.split("o")[0]
