"""`lmforge prompt generate` on a tiny random decoder: every answer against greedy decoding by full forward passes,
and the scores against rouge-score and sacrebleu called here on those answers; its user errors."""
import json
import string

import pytest
import torch

import lmforge.api as lf
from lmforge.data.exemplars import select_exemplars
from lmforge.runs.prompt_generate import score_answers
from cli_run import assert_user_error, lmforge
from lmforge.data.prompts import BUILTIN_GENERATION_TEMPLATES, GenerationTemplate
from lmforge.data.tokenizers import train_tokenizer
from lmforge.models.registry import build_model, save_model

rouge_scorer = pytest.importorskip("rouge_score.rouge_scorer")
sacrebleu = pytest.importorskip("sacrebleu")

DIALOGUES = [("#Person1#: Lunch at noon?\n#Person2#: Sure, see you then.", "They agree to have lunch at noon."),
             ("#Person1#: Is the shop open?\n#Person2#: No, it closes at six.", "The shop closes at six."),
             ("#Person1#: I lost my keys.\n#Person2#: Check your coat.", "Person2 suggests checking the coat."),
             ("#Person1#: Can you help me move?\n#Person2#: Yes, on Sunday.", "Person2 will help on Sunday."),
             ("#Person1#: The train is late.\n#Person2#: Let's take a taxi.", "They take a taxi."),
             ("#Person1#: Do you like tea?\n#Person2#: I prefer coffee.", "Person2 prefers coffee.")]
PAIRS = [("a man rides a bike", "ein mann fährt fahrrad"), ("two dogs play", "zwei hunde spielen"),
         ("a girl reads a book", "ein mädchen liest ein buch"), ("the sun is hot", "die sonne ist heiß"),
         ("a cat sleeps", "eine katze schläft")]


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("prompt-generate")
    rows = [json.dumps({"dialogue": d, "summary": s}) for d, s in DIALOGUES]
    (root / "train.jsonl").write_text("\n".join(rows[:4]) + "\n")
    (root / "dev.jsonl").write_text("\n".join(rows[4:]) + "\n")
    for name, part in (("train", PAIRS[:3]), ("dev", PAIRS[3:])):
        (root / f"{name}.en").write_text("\n".join(en for en, _ in part) + "\n")
        (root / f"{name}.de").write_text("\n".join(de for _, de in part) + "\n")
    texts = [d + "\nSummary: " + s for d, s in DIALOGUES] + [f"Source: {e}\nTranslation: {d}" for e, d in PAIRS]
    tok = train_tokenizer("bpe", texts * 4, vocab_size=400)
    torch.manual_seed(0)
    model = build_model("debug", init_std=0.3, vocab_size=tok.vocab_size, block_size=512).eval()
    save_model(model, root / "run")
    tok.save(root / "run")
    return root, model, tok


def naive_answer(model, tok, prompt: str, max_tokens: int, stop: str) -> str:
    ids, new = tok.encode(prompt), []
    for _ in range(max_tokens):
        with torch.no_grad():
            nxt = int(model(torch.tensor([ids + new]))[0, -1].argmax())
        if nxt == tok.eos_id:
            break
        new.append(nxt)
    return tok.decode(new).split(stop)[0].strip()


def test_summaries_are_greedy_answers_scored_by_rouge_score(setup):
    root, model, tok = setup
    result = lf.prompt_generate(root / "run", task="summarize", train=root / "train.jsonl", data=root / "dev.jsonl",
                                template="summarize/instruction", shots=[0, 2], seeds=2, max_new_tokens=12,
                                out=root / "sum")
    tpl = BUILTIN_GENERATION_TEMPLATES["summarize/instruction"]
    dev = [{"source": d, "target": s} for d, s in DIALOGUES[4:]]
    zero = [naive_answer(model, tok, tpl.prompt(e), 12, "\n") for e in dev]
    assert result["predictions"]["0"] == [zero]
    scorer = rouge_scorer.RougeScorer(["rougeL"], use_stemmer=True)
    expected = sum(scorer.score(e["target"], p)["rougeL"].fmeasure for e, p in zip(dev, zero)) / len(dev)
    zero_row, two_row = result["rows"]
    assert zero_row["rougeL"]["runs"] == [pytest.approx(expected)]
    assert len(two_row["rougeL"]["runs"]) == 2 and result["main_metric"] == "rougeL"
    assert "| 2 |" in (root / "sum" / "prompt_generate.md").read_text()


def test_translations_with_exemplars_are_scored_by_sacrebleu(setup):
    root, model, tok = setup
    tpl = GenerationTemplate("t", query="Source: {source}\nTranslation:")
    (root / "t.yaml").write_text('query: "Source: {source}\\nTranslation:"\n')
    result = lf.prompt_generate(root / "run", task="translate", train=root / "train.en", train_target=root / "train.de",
                                data=root / "dev.en", data_target=root / "dev.de", template=root / "t.yaml",
                                shots=[1], seeds=1, selection="random", max_new_tokens=8, out=root / "tr")
    [answers] = result["predictions"]["1"]
    dev = [{"source": e, "target": d} for e, d in PAIRS[3:]]
    train = [{"source": e, "target": d} for e, d in PAIRS[:3]]
    shot = select_exemplars(train, 1, 0, lambda e: "")  # the draw of seed 0, the same for every query
    assert answers == [naive_answer(model, tok, tpl.prompt(e, shot), 8, "\n") for e in dev]
    expected = sacrebleu.corpus_bleu(answers, [[e["target"] for e in dev]]).score
    assert result["rows"][0]["bleu"]["runs"] == [pytest.approx(expected)]


def test_generation_errors_are_one_line(setup, tmp_path):
    root, _, _ = setup
    common = ["prompt", "generate", "--model", root / "run", "--task", "summarize", "--train", root / "train.jsonl",
              "--data", root / "dev.jsonl"]
    assert_user_error(lmforge(*common, "--template", "summarize/instruction", "--shots", "0,5", "--out", tmp_path / "a"),
                      "5 shots asked for but the training file has 4 examples")
    (tmp_path / "t.yaml").write_text('query: "Dialogue: {conversation}\\nSummary:"\n')
    assert_user_error(lmforge(*common, "--template", tmp_path / "t.yaml", "--out", tmp_path / "b"),
                      "uses {conversation}, which the example does not have")
    assert_user_error(lmforge(*common, "--template", "summarize/qa", "--selection", "balanced", "--out",
                              tmp_path / "c"), "balanced exemplar selection needs labels")


def test_qa_answers_are_scored_by_squad_exact_match_against_the_best_gold(setup, tmp_path):
    root, model, tok = setup
    context = "Two dogs play in the park while a man rides a bike."
    qas = [{"id": str(i), "question": q, "answers": [{"text": a, "answer_start": context.index(a)}]}
           for i, (q, a) in enumerate([("Who plays?", "Two dogs"), ("Where?", "the park"), ("What does he ride?",
                                                                                          "a bike")])]
    squad = {"data": [{"paragraphs": [{"context": context, "qas": qas}]}]}
    (tmp_path / "qa.json").write_text(json.dumps(squad))
    result = lf.prompt_generate(root / "run", task="qa", train=tmp_path / "qa.json", data=tmp_path / "qa.json",
                                template="qa/instruction", shots=[0], seeds=1, max_new_tokens=6, out=tmp_path / "o")
    [answers] = result["predictions"]["0"]
    tpl = BUILTIN_GENERATION_TEMPLATES["qa/instruction"]
    assert answers == [naive_answer(model, tok, tpl.prompt({"context": context, "question": qa["question"]}), 6, "\n")
                       for qa in qas]

    def normal(text):  # SQuAD v1.1's normalisation, written out here
        text = "".join(c for c in text.lower() if c not in set(string.punctuation))
        return " ".join(w for w in text.split() if w not in ("a", "an", "the"))

    expected = 100 * sum(normal(a) == normal(qa["answers"][0]["text"]) for a, qa in zip(answers, qas)) / 3
    assert result["rows"][0]["exact_match"]["runs"] == [pytest.approx(expected)]
    # And on answers that do match: case, articles and punctuation do not count, a partial answer gets F1 only.
    scores = score_answers("qa", ["two DOGS", "in the park", "a bike!"], [{**qa, "context": context} for qa in qas])
    assert scores["exact_match"] == pytest.approx(200 / 3)
    assert scores["f1"] == pytest.approx(100 * (1 + 2 / 3 + 1) / 3)  # "in park" vs "park": precision 1/2, recall 1
