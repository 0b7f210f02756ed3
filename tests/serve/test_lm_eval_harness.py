"""lm-evaluation-harness on lmforge, checked example by example on two local tasks (one multiple-choice, one
generation) with one random GPT-2 built by `transformers` and imported by `lmforge convert`:

- `lmforge eval harness` (in process) against the `transformers` model itself, scored and decoded here;
- lm-eval's own `hf` backend on the Hugging Face folder against `lmforge eval harness`;
- the stock `lm_eval --model local-completions` command against `lmforge serve`, and against `lmforge eval harness`.

Nothing is downloaded: the tasks read JSONL files in tests/harness/tasks, everything runs offline.
"""
import importlib.util
import json
import os
import subprocess
import sys

import httpx
import pytest
import torch

from cli_run import assert_user_error, lmforge
from lmforge.data.tokenizers import Tokenizer
from lmforge.serve.app import create_app
from live_server import LiveServer
from reference_model import CONTEXT, GEN_TASK, MC_TASK, ROOT, TASKS, build_reference

pytest.importorskip("lm_eval", reason="lm-evaluation-harness is not installed (pip install lmforge[harness])")
transformers = pytest.importorskip("transformers")

OFFLINE = {"HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
TOLERANCE = 1e-4


def _needs(module: str, why: str):
    return pytest.mark.skipif(importlib.util.find_spec(module) is None, reason=f"{why} needs {module}, which is not "
                                                                               "installed (pip install lm-eval[api,hf])")


@pytest.fixture(scope="module", autouse=True)
def offline_at_the_repository_root(tmp_path_factory):
    # The task YAMLs name their data files relative to the repository root.
    saved, cwd = dict(os.environ), os.getcwd()
    os.environ.update(OFFLINE)
    os.environ["HF_DATASETS_CACHE"] = str(tmp_path_factory.mktemp("datasets-cache"))
    os.chdir(ROOT)
    yield
    os.chdir(cwd)
    os.environ.clear()
    os.environ.update(saved)


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    return build_reference(tmp_path_factory.mktemp("harness"))


def _samples(folder, task: str) -> dict[int, dict]:
    """Each example as logged, its requests' arguments back as lists and its responses back as numbers: lm-eval's
    log writes {"gen_args_0": {"arg_0": ..., "arg_1": ...}} and every response as a string."""
    [path] = sorted(folder.glob(f"samples_{task}_*.jsonl"))
    rows = {row["doc_id"]: row for row in map(json.loads, path.read_text().splitlines())}
    for row in rows.values():
        row["arguments"] = [list(args.values()) for args in row["arguments"].values()]
        if row["resps"] and isinstance(row["resps"][0][0], list):  # log-likelihoods: [log-likelihood, greedy]
            row["resps"] = [[(float(ll), greedy == "True")] for [[ll, greedy]] in row["resps"]]
    return rows


@pytest.fixture(scope="module")
def in_process(reference):
    """`lmforge eval harness` through the CLI: (its results, its samples by task)."""
    _, run = reference
    result = lmforge("eval", "harness", "--model", run, "--tasks", f"{MC_TASK},{GEN_TASK}", "--include_path", TASKS,
                     cwd=ROOT, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    [path] = (run / "lm_eval").glob("results_*.json")
    assert str(path) in result.stdout and "acc" in result.stdout  # lm-eval's table, and where the results went
    return json.loads(path.read_text()), {t: _samples(run / "lm_eval", t) for t in (MC_TASK, GEN_TASK)}


def _lm_eval(model: str, model_args: dict, out, batch_size: int, env: dict | None = None,
             extra: list[str] = ()) -> dict[str, dict[int, dict]]:
    """The stock `lm_eval` command on both tasks; its samples by task."""
    args = ",".join(f"{k}={v}" for k, v in model_args.items())
    cmd = [os.path.join(os.path.dirname(sys.executable), "lm_eval"), "--model", model, "--model_args", args,
           "--tasks", f"{MC_TASK},{GEN_TASK}", "--include_path", str(TASKS), "--log_samples", "--output_path",
           str(out), "--batch_size", str(batch_size), *extra]
    done = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=900,
                          env={**os.environ, **(env or {}), "OMP_NUM_THREADS": "1"})
    assert done.returncode == 0, done.stderr[-4000:]
    [folder] = {p.parent for p in out.rglob("samples_*.jsonl")}
    return {t: _samples(folder, t) for t in (MC_TASK, GEN_TASK)}


def _assert_same_examples(ours: dict, theirs: dict, tolerance: float) -> None:
    """Every example: the same log-likelihood of each choice (within `tolerance`) and greedy flags, the same
    prediction; every generation: the same text."""
    assert ours[MC_TASK].keys() == theirs[MC_TASK].keys() and len(ours[MC_TASK]) == 40
    for doc_id, row in ours[MC_TASK].items():
        other = theirs[MC_TASK][doc_id]
        assert row["arguments"] == other["arguments"]
        mine, yours = [r[0] for r in row["resps"]], [r[0] for r in other["resps"]]
        assert [ll for ll, _ in mine] == pytest.approx([ll for ll, _ in yours], abs=tolerance), doc_id
        assert [g for _, g in mine] == [g for _, g in yours] and row["acc"] == other["acc"], doc_id
    assert ours[GEN_TASK].keys() == theirs[GEN_TASK].keys() and len(ours[GEN_TASK]) == 30
    for doc_id, row in ours[GEN_TASK].items():
        assert row["resps"] == theirs[GEN_TASK][doc_id]["resps"], doc_id


def test_in_process_harness_equals_the_transformers_model(reference, in_process):
    """The independent reference computed here: Hugging Face's own GPT-2 forward pass and greedy decoding."""
    hf_dir, _ = reference
    model = transformers.GPT2LMHeadModel.from_pretrained(hf_dir).eval()
    tok = transformers.AutoTokenizer.from_pretrained(hf_dir)
    _, samples = in_process
    for row in samples[MC_TASK].values():
        for (context, continuation), ((ll, greedy),) in zip(row["arguments"], row["resps"]):
            whole, ctx = tok.encode(context + continuation), tok.encode(context)
            with torch.no_grad():
                logprobs = torch.log_softmax(model(torch.tensor([whole])).logits[0, :-1].double(), -1)
            targets = torch.tensor(whole[len(ctx):])
            picked = logprobs[len(ctx) - 1:].gather(-1, targets[:, None])
            assert ll == pytest.approx(float(picked.sum()), abs=TOLERANCE)
            assert greedy == bool((logprobs[len(ctx) - 1:].argmax(-1) == targets).all())
    for row in samples[GEN_TASK].values():
        [(context, kwargs)] = row["arguments"]
        ids = tok.encode(context)
        with torch.no_grad():
            out = model.generate(torch.tensor([ids]), max_new_tokens=kwargs["max_gen_toks"], do_sample=False,
                                 pad_token_id=tok.eos_token_id)[0, len(ids):].tolist()
        if tok.eos_token_id in out:
            out = out[:out.index(tok.eos_token_id)]
        assert row["resps"] == [[tok.decode(out, skip_special_tokens=True).split("\n")[0]]]


def test_in_process_results_are_lm_evals(in_process):
    results, samples = in_process
    accuracy = sum(r["acc"] for r in samples[MC_TASK].values()) / 40
    assert results["results"][MC_TASK]["acc,none"] == pytest.approx(accuracy)
    assert results["results"][GEN_TASK]["exact_match,strip"] == pytest.approx(
        sum(r["exact_match"] for r in samples[GEN_TASK].values()) / 30)
    assert results["configs"][MC_TASK]["output_type"] == "multiple_choice"


HAS_ACCELERATE = importlib.util.find_spec("accelerate") is not None


@pytest.fixture(scope="module")
def hf_backend(reference, tmp_path_factory):
    """lm-eval's own `hf` backend on the Hugging Face folder: its samples by task."""
    if not HAS_ACCELERATE:
        pytest.skip("lm-eval's hf backend needs accelerate, which is not installed (pip install lm-eval[api,hf])")
    hf_dir, _ = reference
    # One example at a time: Hugging Face's batched generation pads on the left, which moves its numbers slightly.
    return _lm_eval("hf", {"pretrained": hf_dir, "tokenizer": hf_dir, "dtype": "float32"},
                    tmp_path_factory.mktemp("hf-backend"), batch_size=1, extra=["--device", "cpu"])


def test_lm_evals_hf_backend_agrees_with_lmforge(in_process, hf_backend):
    _assert_same_examples(in_process[1], hf_backend, TOLERANCE)


@pytest.fixture(scope="module")
def served(reference):
    _, run = reference
    with LiveServer(create_app(run, model_name="gpt2-random", max_slots=8)) as live:
        yield live


def test_server_answers_local_completions_requests_like_lmforge_eval_harness(reference, in_process, served):
    """The requests lm-eval 0.4's local-completions sends (read from its source: token ids, `max_tokens` 1, `echo`,
    `logprobs` 1, in batches; the score is the sum of `token_logprobs[ctxlen:-1]`, greedy when each equals the
    best of its `top_logprobs`), replayed over HTTP. This runs where lm-eval's API extra is not installed."""
    _, run = reference
    tok = Tokenizer.load(run)
    _, samples = in_process
    pairs = [(args, resp[0]) for row in samples[MC_TASK].values() for args, resp in zip(row["arguments"], row["resps"])]
    for start in range(0, len(pairs), 8):
        batch = pairs[start:start + 8]
        prompts = [tok.encode(context + continuation) for (context, continuation), _ in batch]
        body = {"model": "gpt2-random", "prompt": prompts, "temperature": 0, "max_tokens": 1, "logprobs": 1,
                "seed": 1234, "echo": True}
        answer = httpx.post(f"{served.url}/v1/completions", json=body, timeout=60).json()
        for ((context, _), (ll, greedy)), choice in zip(batch, answer["choices"]):
            lp, ctxlen = choice["logprobs"], len(tok.encode(context))
            assert sum(lp["token_logprobs"][ctxlen:-1]) == pytest.approx(ll, abs=1e-5)
            assert all(t == max(top.values()) for t, top in zip(lp["token_logprobs"][ctxlen:-1],
                                                                lp["top_logprobs"][ctxlen:-1])) == greedy
    for row in samples[GEN_TASK].values():
        [(context, kwargs)] = row["arguments"]
        body = {"model": "gpt2-random", "prompt": [tok.encode(context)], "max_tokens": kwargs["max_gen_toks"],
                "temperature": 0, "stop": ["\n", "<|endoftext|>"], "seed": 1234}
        text = httpx.post(f"{served.url}/v1/completions", json=body, timeout=60).json()["choices"][0]["text"]
        assert [[text.split("\n")[0]]] == row["resps"]


@_needs("tenacity", "lm-eval's local-completions model")
@pytest.mark.parametrize("tokenizer", ["remote", "huggingface"])
def test_local_completions_against_lmforge_serve_agrees_with_lmforge(reference, in_process, served, tokenizer,
                                                                     tmp_path, request):
    hf_dir, _ = reference
    args = {"base_url": f"{served.url}/v1/completions", "model": "gpt2-random", "tokenizer_backend": tokenizer,
            "max_length": CONTEXT, "num_concurrent": 1}
    if tokenizer == "huggingface":
        args["tokenizer"] = hf_dir
    theirs = _lm_eval("local-completions", args, tmp_path, batch_size=8, env={"OPENAI_API_KEY": "unused"})
    _assert_same_examples(in_process[1], theirs, 1e-5)
    if HAS_ACCELERATE:  # and straight against lm-eval's own hf backend, the independent reference
        _assert_same_examples(request.getfixturevalue("hf_backend"), theirs, TOLERANCE)


def test_unknown_task_is_one_error_line(reference):
    _, run = reference
    result = lmforge("eval", "harness", "--model", run, "--tasks", "lmforge_sentiment_mcq", "--include_path", TASKS,
                     cwd=ROOT, timeout=300)
    assert_user_error(result, "unknown lm-eval task 'lmforge_sentiment_mcq'", "did you mean lmforge_sentiment_mc")
