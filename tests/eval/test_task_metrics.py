"""Task metrics against the libraries they wrap (scikit-learn, seqeval, sacrebleu, rouge-score),
the official SQuAD v1.1 / CMRC 2018 evaluation functions, and hand-checked values."""
import random
import re
import string
import warnings
from collections import Counter

import pytest

from lmforge.errors import ConfigError, DataError
from lmforge.eval.classification import classification_report, plot_confusion_matrix
from lmforge.eval.generation import (
    CJKRougeTokenizer,
    bleu,
    is_cjk_text,
    rouge,
    squad_scores,
)
from lmforge.eval.sequence_labeling import entity_scores

# --- classification ------------------------------------------------------------------------------


def _sklearn_report(y_true, y_pred, labels):
    from sklearn.metrics import (
        accuracy_score,
        confusion_matrix,
        precision_recall_fscore_support,
    )

    per = precision_recall_fscore_support(y_true, y_pred, labels=labels, zero_division=0)
    macro = precision_recall_fscore_support(y_true, y_pred, labels=labels, average="macro", zero_division=0)
    micro = precision_recall_fscore_support(y_true, y_pred, labels=labels, average="micro", zero_division=0)
    return {"accuracy": accuracy_score(y_true, y_pred), "per": per, "macro": macro, "micro": micro,
            "cm": confusion_matrix(y_true, y_pred, labels=labels).tolist()}


def _assert_matches_sklearn(ours, y_true, y_pred, labels):
    ref = _sklearn_report(y_true, y_pred, labels)
    assert ours["labels"] == labels
    assert ours["accuracy"] == pytest.approx(ref["accuracy"])
    for key, (p, r, f, _) in (("macro", ref["macro"]), ("micro", ref["micro"])):
        assert ours[f"{key}_precision"] == pytest.approx(p)
        assert ours[f"{key}_recall"] == pytest.approx(r)
        assert ours[f"{key}_f1"] == pytest.approx(f)
    for i, label in enumerate(labels):
        got = ours["per_label"][label]
        assert got["precision"] == pytest.approx(ref["per"][0][i])
        assert got["recall"] == pytest.approx(ref["per"][1][i])
        assert got["f1"] == pytest.approx(ref["per"][2][i])
        assert got["support"] == ref["per"][3][i]
    assert ours["confusion_matrix"] == ref["cm"]


@pytest.mark.parametrize("seed", range(6))
def test_classification_report_matches_sklearn(seed):
    rng = random.Random(seed)
    names = [f"label_{i}" for i in range(rng.randint(2, 15))]
    n = rng.randint(1, 200)
    y_true = [rng.choice(names) for _ in range(n)]
    # Predictions drawn from a subset, so some labels are never predicted; half of them correct.
    predicted = names[: max(1, len(names) // 2)]
    y_pred = [t if rng.random() < 0.5 else rng.choice(predicted) for t in y_true]
    ours = classification_report(y_true, y_pred)
    labels = sorted(set(y_true) | set(y_pred))
    _assert_matches_sklearn(ours, y_true, y_pred, labels)
    assert ours["micro_f1"] == pytest.approx(ours["accuracy"])
    assert ours["out_of_labels"] == 0 and ours["num_examples"] == n


def test_classification_report_with_label_list_and_invalid_predictions():
    rng = random.Random(7)
    labels = ["sports", "finance", "tech", "travel", "never_seen"]
    y_true = [rng.choice(labels[:4]) for _ in range(120)]
    # Generated answers that are not labels at all ("I don't know") must not vanish.
    y_pred = [t if rng.random() < 0.6 else rng.choice(labels[:3] + ["I don't know", "spam"]) for t in y_true]
    ours = classification_report(y_true, y_pred, labels=labels)
    _assert_matches_sklearn(ours, y_true, y_pred, labels)
    assert ours["out_of_labels"] == sum(p not in labels for p in y_pred) > 0
    assert ours["accuracy"] < ours["micro_precision"]  # invalid answers hurt accuracy, not precision
    assert ours["per_label"]["never_seen"] == {"precision": 0.0, "recall": 0.0, "f1": 0.0, "support": 0}


def test_classification_report_hand_checked_and_errors():
    r = classification_report(["a", "a", "b", "c"], ["a", "b", "b", "b"], labels=["a", "b", "c"])
    assert r["accuracy"] == 0.5
    assert r["per_label"]["a"] == {"precision": 1.0, "recall": 0.5, "f1": pytest.approx(2 / 3), "support": 2}
    assert r["per_label"]["b"] == {"precision": pytest.approx(1 / 3), "recall": 1.0, "f1": 0.5, "support": 1}
    assert r["per_label"]["c"]["f1"] == 0.0
    assert r["confusion_matrix"] == [[1, 1, 0], [0, 1, 0], [0, 1, 0]]
    assert r["macro_f1"] == pytest.approx((2 / 3 + 0.5) / 3)
    with pytest.raises(DataError):
        classification_report(["a"], ["a", "b"])
    with pytest.raises(DataError):
        classification_report([], [])
    with pytest.raises(DataError):
        classification_report(["a"], ["a"], labels=["a", "a"])


def test_plot_confusion_matrix_tnews_size(tmp_path):
    labels = ["news_story", "news_culture", "news_entertainment", "news_sports", "news_finance", "news_house",
              "news_car", "news_edu", "news_tech", "news_military", "news_travel", "news_world", "news_stock",
              "news_agriculture", "news_game"]
    rng = random.Random(0)
    y_true = [rng.choice(labels) for _ in range(600)]
    y_pred = [t if rng.random() < 0.7 else rng.choice(labels) for t in y_true]
    report = classification_report(y_true, y_pred, labels=labels)
    out = tmp_path / "plots" / "confusion.png"
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # e.g. a missing glyph or a layout that does not fit
        path = plot_confusion_matrix(report["confusion_matrix"], labels, out, title="tnews (validation)")
    assert path == out
    data = out.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    width, height = int.from_bytes(data[16:20], "big"), int.from_bytes(data[20:24], "big")
    assert width >= 900 and height >= 800  # room for 15 rotated names and 225 counts
    assert sorted(p.name for p in out.parent.iterdir()) == ["confusion.png"]  # no temp file left
    with pytest.raises(DataError):
        plot_confusion_matrix([[1, 2], [3, 4]], ["a", "b", "c"], tmp_path / "bad.png")
    assert not (tmp_path / "bad.png").exists()


# --- sequence labelling --------------------------------------------------------------------------


def _random_tags(rng, n, prefixes, types=("PER", "LOC", "ORG")):
    return [rng.choice(["O"] + [f"{p}-{t}" for p in prefixes for t in types]) for _ in range(n)]


def _random_corpus(rng, prefixes, sentences=40):
    true, pred = [], []
    for _ in range(sentences):
        n = rng.randint(1, 12)
        t = _random_tags(rng, n, prefixes)
        true.append(t)
        pred.append([x if rng.random() < 0.7 else _random_tags(rng, 1, prefixes)[0] for x in t])
    return true, pred


def _assert_matches_seqeval(ours, true, pred, **options):
    from seqeval.metrics import accuracy_score, f1_score, precision_score, recall_score
    from seqeval.metrics import classification_report as seqeval_report

    assert ours["precision"] == pytest.approx(precision_score(true, pred, zero_division=0, **options))
    assert ours["recall"] == pytest.approx(recall_score(true, pred, zero_division=0, **options))
    assert ours["f1"] == pytest.approx(f1_score(true, pred, zero_division=0, **options))
    assert ours["accuracy"] == pytest.approx(accuracy_score(true, pred))
    report = seqeval_report(true, pred, output_dict=True, zero_division=0, **options)
    types = {k: v for k, v in report.items() if not k.endswith(" avg")}
    assert set(ours["per_type"]) == set(types)
    for name, r in types.items():
        assert ours["per_type"][name] == {"precision": pytest.approx(r["precision"]),
                                          "recall": pytest.approx(r["recall"]),
                                          "f1": pytest.approx(r["f1-score"]), "support": r["support"]}
    assert ours["macro_f1"] == pytest.approx(report["macro avg"]["f1-score"])
    assert ours["num_true_entities"] == report["micro avg"]["support"]


@pytest.mark.parametrize("scheme", ["IOB2", "BIO", "IOB1"])
@pytest.mark.parametrize("seed", range(3))
def test_entity_scores_default_mode_matches_seqeval(scheme, seed):
    true, pred = _random_corpus(random.Random(seed), ["B", "I"])
    ours = entity_scores(true, pred, scheme=scheme)
    _assert_matches_seqeval(ours, true, pred)
    assert ours["scheme"] == scheme


@pytest.mark.parametrize("seed", range(3))
def test_entity_scores_bioes_is_seqeval_strict(seed):
    from seqeval.scheme import IOBES

    true, pred = _random_corpus(random.Random(seed), ["B", "I", "E", "S"])
    ours = entity_scores(true, pred, scheme="BIOES")
    _assert_matches_seqeval(ours, true, pred, mode="strict", scheme=IOBES)


@pytest.mark.parametrize("seed", range(3))
def test_entity_scores_bmes_is_bioes_with_m_as_i(seed):
    from seqeval.scheme import IOBES

    true, pred = _random_corpus(random.Random(seed), ["B", "M", "E", "S"])
    ours = entity_scores(true, pred, scheme="BMES")
    to_i = [[[re.sub(r"^M-", "I-", t) for t in s] for s in c] for c in (true, pred)]
    _assert_matches_seqeval(ours, *to_i, mode="strict", scheme=IOBES)


def test_entity_scores_hand_checked():
    # conlleval-style IOB2: PER exact; LOC predicted one token short; ORG correct.
    true = [["B-PER", "I-PER", "O", "B-LOC", "I-LOC"], ["B-ORG", "O"]]
    pred = [["B-PER", "I-PER", "O", "B-LOC", "O"], ["B-ORG", "O"]]
    r = entity_scores(true, pred)
    assert (r["precision"], r["recall"]) == (pytest.approx(2 / 3), pytest.approx(2 / 3))
    assert r["accuracy"] == pytest.approx(6 / 7)
    assert r["per_type"]["LOC"]["f1"] == 0.0 and r["per_type"]["PER"]["f1"] == 1.0

    # BMES on characters of 张三在北京, 李 (single-character S- entities).
    true = [["B-PER", "E-PER", "O", "B-LOC", "E-LOC"], ["S-PER", "O", "S-LOC"]]
    pred = [["B-PER", "E-PER", "O", "S-LOC", "S-LOC"], ["S-PER", "O", "B-LOC"]]
    # Right: 张三 (PER), 李 (PER). Wrong: 北 and 京 as two LOCs; a B-LOC never closed is no entity.
    r = entity_scores(true, pred, scheme="BMES")
    assert r["num_true_entities"] == 4 and r["num_pred_entities"] == 4
    assert r["precision"] == pytest.approx(2 / 4) and r["recall"] == pytest.approx(2 / 4)
    assert r["per_type"]["PER"] == {"precision": 1.0, "recall": 1.0, "f1": 1.0, "support": 2}
    assert r["per_type"]["LOC"]["precision"] == 0.0
    assert r["accuracy"] == pytest.approx(5 / 8)

    # A three-character BMES entity with its middle tag.
    r = entity_scores([["B-ORG", "M-ORG", "E-ORG", "S-PER"]], [["B-ORG", "M-ORG", "E-ORG", "O"]], scheme="bmes")
    assert (r["precision"], r["recall"], r["f1"]) == (1.0, 0.5, pytest.approx(2 / 3))


def test_entity_scores_edge_cases():
    r = entity_scores([["O", "O"]], [["O", "O"]])
    assert (r["precision"], r["recall"], r["f1"], r["accuracy"]) == (0.0, 0.0, 0.0, 1.0)
    with pytest.raises(ConfigError):
        entity_scores([["O"]], [["O"]], scheme="IOE9")
    with pytest.raises(DataError):
        entity_scores([["O", "O"]], [["O"]])
    with pytest.raises(DataError):
        entity_scores([["O"]], [["O"], ["O"]])


# --- CJK detection, BLEU, chrF -------------------------------------------------------------------


def test_is_cjk_text():
    assert is_cjk_text("今天天气很好。")
    assert is_cjk_text("我用Python写代码")  # 5 of 11 letters
    assert is_cjk_text("東京は晴れです") and is_cjk_text("서울은 맑습니다")
    assert not is_cjk_text("The Forbidden City (紫禁城) is in Beijing.")
    assert not is_cjk_text("") and not is_cjk_text("123 ... !!!")
    assert is_cjk_text("The Forbidden City (紫禁城)", threshold=0.1)


def test_bleu_english_matches_sacrebleu():
    import sacrebleu

    hyps = ["The cat sat on the mat.", "It is raining heavily today!", "A quick brown fox."]
    refs = ["The cat is sitting on the mat.", "Today it rains a lot!", "The quick brown fox jumps."]
    r = bleu(hyps, refs)
    assert r["bleu"] == pytest.approx(sacrebleu.corpus_bleu(hyps, [refs]).score)
    assert r["chrf"] == pytest.approx(sacrebleu.corpus_chrf(hyps, [refs]).score)
    assert "tok:13a" in r["bleu_signature"] and "nrefs:1" in r["bleu_signature"] and "nc:6" in r["chrf_signature"]
    assert bleu(refs, refs)["bleu"] == pytest.approx(100.0) and bleu(refs, refs)["chrf"] == pytest.approx(100.0)


def test_bleu_multiple_references():
    import sacrebleu

    hyps = ["the cat is on the mat", "there is a dog"]
    refs = [["the cat sits on the mat", "there is a cat on the mat"], ["a dog is here", "there is a dog here"]]
    r = bleu(hyps, refs)
    assert r["bleu"] == pytest.approx(sacrebleu.corpus_bleu(hyps, [list(x) for x in zip(*refs)]).score)
    assert r["chrf"] == pytest.approx(sacrebleu.corpus_chrf(hyps, [list(x) for x in zip(*refs)]).score)
    assert "nrefs:2" in r["bleu_signature"]
    assert r["bleu"] > bleu(hyps, [x[0] for x in refs])["bleu"]
    # A different number of references per hypothesis.
    varied = bleu(hyps, [refs[0], refs[1][:1]])
    expected = sacrebleu.metrics.BLEU().corpus_score(hyps, [[refs[0][0], refs[1][0]], [refs[0][1], None]])
    assert varied["bleu"] == pytest.approx(expected.score) and "nrefs:var" in varied["bleu_signature"]
    with pytest.raises(DataError):
        bleu(hyps, refs[:1])


def test_bleu_chinese():
    import sacrebleu

    hyps = ["今天天气很好，我们去公园散步。", "他在北京大学学习计算机。"]
    refs = ["今天天气不错，我们去公园走走。", "他在北京大学读计算机专业。"]
    zh = bleu(hyps, refs, lang="zh")
    assert zh["bleu"] == pytest.approx(sacrebleu.corpus_bleu(hyps, [refs], tokenize="zh").score)
    assert zh["chrf"] == pytest.approx(sacrebleu.corpus_chrf(hyps, [refs]).score)
    assert "tok:zh" in zh["bleu_signature"] and zh["tokenize"] == "zh"
    assert bleu(hyps, refs, lang="auto") == zh
    # 13a sees each unspaced sentence as one or two "words": almost nothing matches.
    assert bleu(hyps, refs, lang="en")["bleu"] < 5 < zh["bleu"]
    assert bleu(["the cat"], ["the cat"], lang="auto")["tokenize"] == "13a"
    with pytest.raises(ConfigError):
        bleu(hyps, refs, lang="fr")


# --- ROUGE ---------------------------------------------------------------------------------------

ENGLISH_PAIRS = [
    ("The quick brown fox jumps over the lazy dog", "The quick brown dog jumps on the log."),
    ("Police killed the gunman.", "The gunman was shot down by police; nobody else was hurt."),
    ("Running runners ran 3,000 meters in 2024!", "A runner runs 3000 metres, in 2024."),
    ("Café owners' rights — déjà vu?", "cafe OWNERS rights, deja vu"),
    ("", "an empty prediction scores zero"),
    ("Stemming: generously generalized generalizations", "generous general generalization"),
]


@pytest.mark.parametrize("stemmer", [True, False])
def test_rouge_english_equals_rouge_score(stemmer):
    from rouge_score.rouge_scorer import RougeScorer

    preds, refs = [p for p, _ in ENGLISH_PAIRS], [r for _, r in ENGLISH_PAIRS]
    scorer = RougeScorer(["rouge1", "rouge2", "rougeL"], use_stemmer=stemmer)
    expected = {k: sum(scorer.score(r, p)[k].fmeasure for p, r in ENGLISH_PAIRS) / len(ENGLISH_PAIRS)
                for k in ("rouge1", "rouge2", "rougeL")}
    for lang in ("auto", "en", "zh"):
        assert rouge(preds, refs, lang=lang, stemmer=stemmer) == expected  # exactly, not approximately


def test_cjk_tokenizer_equals_default_without_cjk():
    from rouge_score.tokenizers import DefaultTokenizer

    ours, default = CJKRougeTokenizer(), DefaultTokenizer(use_stemmer=True)
    for text in [t for pair in ENGLISH_PAIRS for t in pair] + [string.printable, "x-y_z 42 ñandú"]:
        assert ours.tokenize(text) == default.tokenize(text)
    assert ours.tokenize("GPT模型在2023年发布, running fast!") == ["gpt", "模", "型", "在", "2023", "年", "发", "布",
                                                                   "run", "fast"]


def test_rouge_chinese_not_dropped():
    from rouge_score.rouge_scorer import RougeScorer

    pred, ref = "我爱北京天安门", "我爱北京"
    default = RougeScorer(["rouge1", "rouge2", "rougeL"], use_stemmer=True).score(ref, pred)
    assert all(s.fmeasure == 0.0 for s in default.values())  # rouge-score alone sees no tokens
    r = rouge([pred], [ref])
    # 7 predicted characters, 4 reference characters, all 4 matched: P 4/7, R 1.
    assert r["rouge1"] == pytest.approx(8 / 11)
    assert r["rouge2"] == pytest.approx(2 / 3)  # 3 of 6 predicted bigrams, all 3 reference bigrams
    assert r["rougeL"] == pytest.approx(8 / 11)
    assert rouge([pred], [ref], lang="en") == {"rouge1": 0.0, "rouge2": 0.0, "rougeL": 0.0}


def test_rouge_multiple_references_and_mean():
    from rouge_score.rouge_scorer import RougeScorer

    scorer = RougeScorer(["rouge1", "rouge2", "rougeL"], use_stemmer=True)
    preds = ["the cat sat", "a dog barked loudly"]
    refs = [["a cat was sitting", "the cat sat down"], ["the dog barked"]]
    r = rouge(preds, refs)
    best = scorer.score_multi(refs[0], preds[0])
    single = scorer.score(refs[1][0], preds[1])
    for k in r:
        assert r[k] == pytest.approx((best[k].fmeasure + single[k].fmeasure) / 2)
    with pytest.raises(DataError):
        rouge(preds, refs[:1])


# --- SQuAD / CMRC 2018 ---------------------------------------------------------------------------


def _official_squad(prediction, ground_truths):
    """evaluate-v1.1.py's normalize_answer, f1_score and exact_match_score, max over gold answers."""

    def normalize_answer(s):
        def remove_articles(text):
            return re.sub(r"\b(a|an|the)\b", " ", text)

        def white_space_fix(text):
            return " ".join(text.split())

        def remove_punc(text):
            exclude = set(string.punctuation)
            return "".join(ch for ch in text if ch not in exclude)

        return white_space_fix(remove_articles(remove_punc(s.lower())))

    def f1_score(prediction, ground_truth):
        prediction_tokens = normalize_answer(prediction).split()
        ground_truth_tokens = normalize_answer(ground_truth).split()
        common = Counter(prediction_tokens) & Counter(ground_truth_tokens)
        num_same = sum(common.values())
        if num_same == 0:
            return 0
        precision = 1.0 * num_same / len(prediction_tokens)
        recall = 1.0 * num_same / len(ground_truth_tokens)
        return (2 * precision * recall) / (precision + recall)

    em = max(normalize_answer(prediction) == normalize_answer(g) for g in ground_truths)
    return float(em), max(f1_score(prediction, g) for g in ground_truths)


def _example(qid, context, *answers):
    return {"id": qid, "question": "?", "context": context,
            "answers": [{"text": a, "answer_start": max(context.find(a), 0)} for a in answers]}


def test_squad_english_hand_computed():
    context = "Super Bowl 50 was won by the Denver Broncos at Levi's Stadium in Santa Clara, California."
    examples = [
        _example("q1", context, "Denver Broncos", "The Denver Broncos"),
        _example("q2", context, "Santa Clara, California", "Levi's Stadium"),
        _example("q3", context, "Levi's Stadium"),
        _example("q4", context, "Super Bowl 50"),
    ]
    predictions = {
        "q1": "the Denver Broncos!",  # EM after normalization
        "q2": "Santa Clara",  # vs "santa clara california": P 1, R 2/3, F1 0.8; vs "levis stadium": 0
        "q3": "Levis Stadium in Santa Clara",  # "levis stadium in santa clara" vs "levis stadium": P 2/5, R 1
        "q4": "the Broncos",  # nothing in common
    }
    r = squad_scores(predictions, examples)
    f1s = [1.0, 0.8, 2 * 0.4 / 1.4, 0.0]
    assert r["exact_match"] == pytest.approx(25.0)
    assert r["f1"] == pytest.approx(100 * sum(f1s) / 4)
    assert (r["count"], r["missing"]) == (4, 0)


def test_squad_english_matches_official_functions():
    rng = random.Random(3)
    words = ["the", "a", "an", "Denver", "broncos", "Broncos,", "theatre", "An", "1,000", "(1000)", "Andrew's",
             "U.S.", "state", "of", "art", "--", "the-art"]
    examples, predictions, expected = [], {}, []
    for i in range(300):
        golds = [" ".join(rng.choices(words, k=rng.randint(1, 5))) for _ in range(rng.randint(1, 3))]
        pred = " ".join(rng.choices(words, k=rng.randint(0, 6)))
        examples.append(_example(str(i), "context", *golds))
        predictions[str(i)] = pred
        expected.append(_official_squad(pred, golds))
    r = squad_scores(predictions, examples)
    assert r["exact_match"] == pytest.approx(100 * sum(e for e, _ in expected) / 300)
    assert r["f1"] == pytest.approx(100 * sum(f for _, f in expected) / 300)


def test_squad_missing_and_unanswerable():
    examples = [_example("a", "text", "yes"), _example("b", "text", "no"), _example("c", "text")]
    r = squad_scores({"a": "Yes.", "c": ""}, examples)
    assert (r["exact_match"], r["f1"], r["missing"]) == (pytest.approx(200 / 3), pytest.approx(200 / 3), 1)
    assert squad_scores({"c": "something"}, examples[2:])["f1"] == 0.0
    with pytest.raises(DataError):
        squad_scores({}, [])


def _official_cmrc(prediction, answers):
    """cmrc2018_evaluate.py (v5): calc_em_score and calc_f1_score, with nltk's word tokenizer
    run on a single line (its sentence splitter needs downloaded data)."""
    from nltk.tokenize import word_tokenize

    sp_char = ["-", ":", "_", "*", "^", "/", "\\", "~", "`", "+", "=", "，", "。", "：", "？", "！", "“", "”", "；",
               "’", "《", "》", "……", "·", "、", "「", "」", "（", "）", "－", "～", "『", "』"]

    def mixed_segmentation(in_str, rm_punc=False):
        in_str = str(in_str).lower().strip()
        segs_out, temp_str = [], ""
        for char in in_str:
            if rm_punc and char in sp_char:
                continue
            if re.search(r"[\u4e00-\u9fa5]", char) or char in sp_char:
                if temp_str != "":
                    segs_out.extend(word_tokenize(temp_str, preserve_line=True))
                    temp_str = ""
                segs_out.append(char)
            else:
                temp_str += char
        if temp_str != "":
            segs_out.extend(word_tokenize(temp_str, preserve_line=True))
        return segs_out

    def remove_punctuation(in_str):
        return "".join(c for c in str(in_str).lower().strip() if c not in sp_char)

    def find_lcs(s1, s2):
        m = [[0 for _ in range(len(s2) + 1)] for _ in range(len(s1) + 1)]
        mmax, p = 0, 0
        for i in range(len(s1)):
            for j in range(len(s2)):
                if s1[i] == s2[j]:
                    m[i + 1][j + 1] = m[i][j] + 1
                    if m[i + 1][j + 1] > mmax:
                        mmax, p = m[i + 1][j + 1], i + 1
        return s1[p - mmax:p], mmax

    f1_scores = []
    for ans in answers:
        ans_segs = mixed_segmentation(ans, rm_punc=True)
        prediction_segs = mixed_segmentation(prediction, rm_punc=True)
        _, lcs_len = find_lcs(ans_segs, prediction_segs)
        if lcs_len == 0:
            f1_scores.append(0)
            continue
        precision = 1.0 * lcs_len / len(prediction_segs)
        recall = 1.0 * lcs_len / len(ans_segs)
        f1_scores.append((2 * precision * recall) / (precision + recall))
    em = float(any(remove_punctuation(a) == remove_punctuation(prediction) for a in answers))
    return em, max(f1_scores)


def test_cmrc_hand_checked():
    context = "他于2018年毕业于北京大学计算机系，现在在iPhone 手机团队工作。"
    examples = [
        _example("1", context, "北京大学"),
        _example("2", context, "北京大学"),
        _example("3", context, "北京大学"),
        _example("4", context, "iPhone 手机"),
        _example("5", context, "2018年", "2018"),
    ]
    predictions = {
        "1": "北京大学。",  # full-width punctuation removed: EM 1, F1 1
        "2": "在北京大学",  # 4 of 5 predicted characters: P 4/5, R 1, F1 8/9
        "3": "北的京大学",  # longest common *substring* 京大学 (3): P 3/5, R 3/4, F1 2/3
        "4": "iphone手机",  # same tokens [iphone, 手, 机] but EM keeps the space: EM 0, F1 1
        "5": "2018年：",  # EM 1 with the first answer
    }
    r = squad_scores(predictions, examples)
    assert r["exact_match"] == pytest.approx(100 * 2 / 5)  # questions 1 and 5
    assert r["f1"] == pytest.approx(100 * (1 + 8 / 9 + 2 / 3 + 1 + 1) / 5)
    assert squad_scores(predictions, examples, lang="zh") == r
    # The English rules would score "北京大学。" as a miss: its punctuation is not ASCII.
    assert squad_scores({"1": "北京大学。"}, examples[:1], lang="en")["exact_match"] == 0.0


def test_cmrc_matches_official_functions():
    rng = random.Random(5)
    pieces = ["北", "京", "大", "学", "清", "华", "的", "，", "。", "《", "》", "：", "-", "2018", "年", "GPU", "Apple",
              " ", "iPhone", "（", "）", "A.", "?"]
    examples, predictions, expected = [], {}, []
    for i in range(200):
        golds = ["".join(rng.choices(pieces, k=rng.randint(1, 6))) for _ in range(rng.randint(1, 3))]
        golds = [g if g.strip() else "北" for g in golds]
        pred = "".join(rng.choices(pieces, k=rng.randint(1, 8)))
        examples.append(_example(str(i), "这是一个中文的上下文段落。", *golds))
        predictions[str(i)] = pred
        expected.append(_official_cmrc(pred, golds))
    r = squad_scores(predictions, examples)
    assert r["exact_match"] == pytest.approx(100 * sum(e for e, _ in expected) / 200)
    assert r["f1"] == pytest.approx(100 * sum(f for _, f in expected) / 200)


def test_squad_auto_language_per_question():
    examples = [_example("en", "Paris is the capital of France.", "Paris"),
                _example("zh", "巴黎是法国的首都。", "巴黎")]
    r = squad_scores({"en": "Paris.", "zh": "巴黎。"}, examples)
    assert (r["exact_match"], r["f1"]) == (100.0, 100.0)
    with pytest.raises(ConfigError):
        squad_scores({}, examples, lang="de")
