"""`lmforge prompt eval` on a tiny random decoder: zero-shot accuracy against a naive per-label full forward pass,
exemplar draws (seeded, balanced, never more than the pool), the files it writes, and its user errors."""
import json

import pytest
import torch

import lmforge.api as lf
from cli_run import assert_user_error, lmforge
from lmforge.data.prompts import BUILTIN_TEMPLATES
from lmforge.data.tokenizers import train_tokenizer
from lmforge.models.registry import build_model, save_model
from lmforge.runs.prompt_eval import select_exemplars

POSITIVE = ["a warm and funny film", "the acting is superb", "a joy to watch", "worth every penny", "an instant classic"]
NEGATIVE = ["a dull and tired film", "the acting is wooden", "a chore to watch", "a waste of money", "a painful mess"]


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("prompting")
    lines = [f"{label} {t}" for pos, neg in zip(POSITIVE, NEGATIVE) for label, t in (("1", pos), ("0", neg))]
    (root / "train.txt").write_text("\n".join(lines[:6]) + "\n")
    (root / "dev.txt").write_text("\n".join(lines[6:]) + "\n")
    tok = train_tokenizer("bpe", [f"Review: {t}\nSentiment: positive negative" for t in POSITIVE + NEGATIVE] * 4,
                          vocab_size=300)
    torch.manual_seed(0)
    model = build_model("debug", init_std=0.2, vocab_size=tok.vocab_size, block_size=256).eval()
    save_model(model, root / "run")
    tok.save(root / "run")
    return root, model, tok


def naive_prediction(model, tok, prompt: str, verbalizers: list[str]) -> int:
    scores = []
    for v in verbalizers:
        whole, context = tok.encode(prompt + " " + v), tok.encode(prompt)
        with torch.no_grad():
            logprobs = torch.log_softmax(model(torch.tensor([whole[:-1]]))[0].double(), -1)
        scores.append(sum(float(logprobs[i - 1, whole[i]]) for i in range(len(context), len(whole))))
    return max(range(len(scores)), key=scores.__getitem__)


def test_prompt_eval_rows_and_files(setup):
    root, model, tok = setup
    result = lf.prompt_eval(root / "run", data=root / "dev.txt", train=root / "train.txt", template="sst2/cloze",
                            shots=(0, 2), seeds=3, out=root / "out")
    tpl = BUILTIN_TEMPLATES["sst2/cloze"]
    dev = [line.split(" ", 1) for line in (root / "dev.txt").read_text().splitlines()]
    correct = [naive_prediction(model, tok, tpl.prompt({"text": t}), ["negative", "positive"]) == int(label)
               for label, t in dev]
    zero, two = result["rows"]
    assert zero["shots"] == 0 and zero["accuracy"]["runs"] == [pytest.approx(sum(correct) / len(dev))]
    assert two["shots"] == 2 and len(two["accuracy"]["runs"]) == 3 and len(two["calibrated_accuracy"]["runs"]) == 3
    assert json.loads((root / "out" / "prompt_eval.json").read_text()) == json.loads(json.dumps(result))
    assert "| 2 |" in (root / "out" / "prompt_eval.md").read_text()


def test_exemplar_draws_are_seeded_and_balanced():
    tpl = BUILTIN_TEMPLATES["sst2/cloze"]
    pool = [{"text": f"t{i}", "label": "1" if i < 8 else "0"} for i in range(10)]
    assert select_exemplars(pool, 4, 7, tpl) == select_exemplars(pool, 4, 7, tpl)
    assert select_exemplars(pool, 4, 7, tpl) != select_exemplars(pool, 4, 8, tpl)
    for seed in range(5):
        picked = select_exemplars(pool, 4, seed, tpl, balanced=True)
        assert sorted(e["label"] for e in picked) == ["0", "0", "1", "1"] and len({e["text"] for e in picked}) == 4


def test_user_errors_are_one_line(setup, tmp_path):
    root, _, _ = setup
    common = ["prompt", "eval", "--model", root / "run", "--data", root / "dev.txt", "--train", root / "train.txt"]
    assert_user_error(lmforge(*common, "--template", "sst2/cloze", "--shots", "0,8", "--out", tmp_path / "a"),
                      "8 shots asked for but the training file has 6 examples")
    (tmp_path / "t.yaml").write_text('query: "Review: {review}\\nSentiment:"\nverbalizers: {0: bad, 1: good}\n')
    assert_user_error(lmforge(*common, "--template", tmp_path / "t.yaml", "--shots", "0,1", "--out", tmp_path / "b"),
                      "uses {review}, which the example does not have")
