"""Instruction tuning: the training layout, its match with the chat loop, and a tiny run end to end."""
import io
import json
import math
import os
from pathlib import Path

import pytest
import torch

from lmforge.config import DecodeConfig, StartConfig, TaskDataConfig, TrainConfig
from lmforge.data.tokenizers import train_tokenizer
from lmforge.infer import chat as chat_module
from lmforge.infer.chat import chat_loop, format_transcript
from lmforge.infer.sampling import SamplingParams
from lmforge.models.registry import build_model
from lmforge.tasks.base import TaskSettings
from lmforge.tasks.chat import ChatTask

PAIRS = [
    {"instruction": "What color is the sky?", "input": "", "output": "Blue."},
    {"instruction": "Name a fruit.", "input": "", "output": "An apple, of course."},
    {"instruction": "What is the capital of France?", "input": "", "output": "Paris is the capital of France."},
    {"instruction": "Count to three.", "input": "", "output": "One, two, three."},
    {"instruction": "Translate to Spanish.", "input": "hello", "output": "Hola."},
    {"instruction": "Translate to Spanish.", "input": "thank you", "output": "Gracias."},
    {"instruction": "What is the opposite of hot?", "input": "", "output": "Cold."},
    {"instruction": "Repeat the word.", "input": "banana", "output": "banana banana"},
]


def _script(*lines):
    it = iter(lines)

    def input_fn(prompt):
        try:
            return next(it)
        except StopIteration:
            raise EOFError from None
    return input_fn


@pytest.fixture(scope="module")
def tok():
    return train_tokenizer("bpe", ChatTask.tokenizer_texts(PAIRS) * 4, 400)


def _task(tok, max_length=128, block_size=128, max_new_tokens=32):
    settings = TaskSettings(data=TaskDataConfig(train="-", max_length=max_length),
                            decode=DecodeConfig(max_new_tokens=max_new_tokens))
    return ChatTask(settings, tok, "gpt", extra={"block_size": block_size})


def _split(feature):
    """(prompt ids, reply ids incl. eos) of an encoded example, from its shifted labels."""
    seq = feature["input_ids"] + [feature["labels"][-1]]
    n_prompt = sum(1 for x in feature["labels"] if x == -100) + 1
    return seq[:n_prompt], seq[n_prompt:]


# ---------------------------------------------------------------- layout
def test_labels_cover_exactly_the_reply_and_eos(tok):
    task = _task(tok)
    for e in PAIRS:
        f = task.encode(e)
        seq = f["input_ids"] + [f["labels"][-1]]
        assert len(f["labels"]) == len(f["input_ids"])
        # Shifted targets: wherever a label is set, it is the next token of the sequence.
        assert all(lab == seq[t + 1] for t, lab in enumerate(f["labels"]) if lab != -100)
        prompt, reply = _split(f)
        user = e["instruction"] + (f"\n{e['input']}" if e["input"] else "")
        assert tok.decode(prompt) == f"User: {user}\nAssistant:"  # hand-built, not via the template code
        assert reply[-1] == tok.eos_id and tok.eos_id not in reply[:-1]
        assert tok.decode(reply[:-1]) == " " + e["output"]
        # -100 exactly on the positions whose target is a prompt token, never after.
        first = f["labels"].index(next(x for x in f["labels"] if x != -100))
        assert first == len(prompt) - 1 and -100 not in f["labels"][first:]
    batch = task.collate(task.encode_all(PAIRS))
    replies = sum(len(_split(task.encode(e))[1]) for e in PAIRS)
    assert int(task.counts(batch)["lm"]) == replies


def test_training_prompt_is_what_the_chat_loop_feeds(tok, monkeypatch):
    task = _task(tok, max_new_tokens=16)
    model = build_model("debug", vocab_size=tok.vocab_size, block_size=128).eval()
    seen = []

    def fake_stream(model, tokenizer, ids, params, output=None):
        seen.append(list(ids))
        return ""

    monkeypatch.setattr(chat_module, "stream_text", fake_stream)
    for e in PAIRS:
        message = e["instruction"] + (f"\n{e['input']}" if e["input"] else "")
        seen.clear()
        chat_loop(model, tok, SamplingParams(max_new_tokens=16), input_fn=_script(message), output=io.StringIO())
        prompt, reply = _split(task.encode(e))
        assert seen == [prompt]
        assert task.prompt_ids(e) == prompt
        # The whole training text is the first exchange of a transcript the chat loop would write.
        text = tok.decode(prompt + reply)
        assert format_transcript([(message, e["output"])], "next").startswith(text)


def test_truncation_keeps_the_prompt_end_and_part_of_the_reply(tok):
    task = _task(tok, max_length=24)
    long_reply = {"instruction": "Name a fruit.", "input": "", "output": " ".join(["An apple, of course."] * 20)}
    f = task.encode(long_reply)
    prompt, reply = _split(f)
    assert len(f["input_ids"]) + 1 == 24
    assert tok.decode(prompt) == "User: Name a fruit.\nAssistant:"
    assert tok.eos_id not in reply and tok.decode(reply) and (" " + long_reply["output"]).startswith(tok.decode(reply))

    long_prompt = {"instruction": "Count to three. " * 30, "input": "", "output": "One, two, three."}
    f = task.encode(long_prompt)
    prompt, reply = _split(f)
    assert len(f["input_ids"]) + 1 == 24
    assert reply[-1] == tok.eos_id and tok.decode(reply[:-1]) == " One, two, three."  # a short reply stays whole
    assert tok.decode(prompt).endswith("\nAssistant:")
    assert len(task.encode_all([long_reply, long_prompt, {"instruction": "Say nothing.", "input": "",
                                                          "output": "  "}])) == 2


# ---------------------------------------------------------------- a tiny run
@pytest.fixture(scope="module")
def run(tmp_path_factory):
    from lmforge.api import finetune

    root = tmp_path_factory.mktemp("chat")
    data = root / "pairs.json"
    data.write_text(json.dumps(PAIRS, ensure_ascii=False))
    torch.manual_seed(0)
    out = root / "run"
    summary = finetune("chat", data=TaskDataConfig(train=str(data), valid=str(data), format="alpaca", max_length=64),
                       model=StartConfig(init="debug", vocab_size=400, block_size=64),
                       train=TrainConfig(batch_size=8, max_steps=60, lr=3e-3, warmup_steps=5, weight_decay=0.0,
                                         eval_interval=60, log_interval=20, checkpoint_interval=60, keep_last=1,
                                         progress=False, seed=0, device="cpu", precision="fp32"),
                       decode=DecodeConfig(max_new_tokens=16), out=out)
    return out, summary


def test_run_learns_the_replies(run):
    from lmforge.runs.rundir import load_task_run

    out, summary = run
    assert summary["main_metric"] == "rougeL" and summary["rougeL"] == pytest.approx(1.0)
    metrics = summary["metrics"]
    assert metrics["val_ppl"] == pytest.approx(math.exp(metrics["val_loss"])) and metrics["val_loss"] < 0.5
    for name in ("config.yaml", "tokenizer.json", "model.safetensors", "config.json", "metrics.jsonl"):
        assert (out / name).is_file()
    model, task = load_task_run(out)
    with torch.no_grad():
        answers = task.predict(model, PAIRS, batch_size=3)
    assert [a["output"] for a in answers] == [e["output"] for e in PAIRS]


def test_api_predict_writes_replies_in_order(run, tmp_path):
    from lmforge.api import predict

    out, _ = run
    order = [5, 0, 7, 2]
    inputs = tmp_path / "in.json"
    inputs.write_text(json.dumps([{"instruction": PAIRS[i]["instruction"], "input": PAIRS[i]["input"]} for i in order]))
    n = predict(out, str(inputs), output=str(tmp_path / "out.jsonl"))
    rows = [json.loads(line) for line in (tmp_path / "out.jsonl").read_text().splitlines()]
    assert n == 4 and rows == [{"output": PAIRS[i]["output"]} for i in order]


def test_text_generation_pipeline(run):
    from lmforge.api import pipeline

    out, _ = run
    pipe = pipeline("text-generation", model=out)
    assert pipe("What color is the sky?") == "Blue."
    assert pipe(["Count to three.", {"instruction": "Translate to Spanish.", "input": "thank you"}]) == \
        ["One, two, three.", "Gracias."]


def test_load_gives_plain_gpt_that_chats(run):
    from lmforge.api import load

    out, _ = run
    model, tokenizer = load(out)
    assert model.family == "gpt" and type(model).__name__ == "GPT"
    text = io.StringIO()
    turns = chat_loop(model, tokenizer, SamplingParams(temperature=0.0, max_new_tokens=16),
                      input_fn=_script("What is the capital of France?", "/reset", "Repeat the word.\nbanana"),
                      output=text)
    assert turns == [("Repeat the word.\nbanana", "banana banana")]
    assert "Assistant: Paris is the capital of France.\n" in text.getvalue()


# ---------------------------------------------------------------- real data
def test_alpaca_smoke(tmp_path):
    root = os.environ.get("LMFORGE_DATA_DIR")
    if not root or not (Path(root) / "alpaca_demo" / "alpaca_en_demo.train.json").is_file():
        pytest.skip("set LMFORGE_DATA_DIR to the datasets folder (needs alpaca_demo/) to run the real-data smoke test")
    from lmforge.api import finetune

    out = tmp_path / "run"
    summary = finetune("chat", data=TaskDataConfig(train="alpaca_demo/alpaca_en_demo.train.json",
                                                   valid="alpaca_demo/alpaca_en_demo.valid.json",
                                                   max_length=128, max_train_examples=100, max_valid_examples=8),
                       model=StartConfig(init="debug", vocab_size=1000),
                       train=TrainConfig(batch_size=4, max_steps=20, warmup_steps=2, eval_interval=20,
                                         checkpoint_interval=20, keep_last=1, progress=False, device="cpu"),
                       decode=DecodeConfig(max_new_tokens=8), out=out)
    assert summary["train_examples"] == 100 and summary["main_metric"] == "rougeL"
    assert 0.0 <= summary["rougeL"] <= 1.0 and math.isfinite(summary["metrics"]["val_loss"])
    for name in ("config.yaml", "tokenizer.json", "model.safetensors", "config.json", "metrics.jsonl",
                 "summary.json"):
        assert (out / name).is_file(), name
    assert json.loads((out / "summary.json").read_text())["task"] == "chat"
