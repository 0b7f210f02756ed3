"""Metrics for generated text: BLEU and chrF (sacrebleu), ROUGE (rouge-score), SQuAD / CMRC 2018
exact match and F1 for extractive question answering.

BLEU        corpus BLEU-4 with brevity penalty, by `sacrebleu.metrics.BLEU` (0..100). English and
            other space-separated text uses sacrebleu's default `13a` tokenizer; Chinese uses its
            `zh` tokenizer (every CJK character a token), chosen by `lang="zh"` or detected with
            `lang="auto"`. The returned signature string says which, as sacrebleu reports it.
chrF        character n-gram F-score (n <= 6, beta = 2), by `sacrebleu.metrics.CHRF` (0..100); it
            needs no tokenization, so Chinese is scored on its characters as is.
ROUGE       ROUGE-1, ROUGE-2 (n-gram overlap) and ROUGE-L (longest common subsequence)
            F-measures, by `rouge_score.rouge_scorer.RougeScorer` (0..1), averaged over examples.
            rouge-score's tokenizer keeps only [a-z0-9] and so scores Chinese text as empty; the
            tokenizer here makes each CJK character a token and hands everything else to
            rouge-score's own tokenizer, so English scores are exactly rouge-score's.
SQuAD       exact match and token F1 after SQuAD v1.1 answer normalization (lowercase, drop
            ASCII punctuation and the articles a/an/the, collapse whitespace), best over the
            gold answers, averaged over questions (0..100), as the official evaluate-v1.1.py.
CMRC 2018   for Chinese questions, the official cmrc2018_evaluate.py definitions: answers are
            lowercased and cut into CJK characters and nltk word tokens with the script's
            punctuation list removed; F1 takes the longest common *substring* of the two token
            lists as the overlap; exact match compares the strings with that punctuation removed.
"""
from __future__ import annotations

import re
import string
from collections import Counter
from collections.abc import Sequence

from lmforge.errors import ConfigError, DataError

# CJK ideographs (with extensions and compatibility forms), kana and Hangul syllables.
_CJK_RANGES = ("\u2e80-\u2fdf\u3040-\u30ff\u31f0-\u31ff\u3400-\u4dbf\u4e00-\u9fff\uac00-\ud7af\uf900-\ufaff"
               "\U00020000-\U0002fa1f\U00030000-\U0003134f")
_CJK_CHAR = re.compile(f"[{_CJK_RANGES}]")
_CJK_SPLIT = re.compile(f"([{_CJK_RANGES}])")
_LANGS = ("en", "zh", "auto")


def is_cjk_text(text: str, threshold: float = 0.3) -> bool:
    """Whether at least `threshold` of the letters and digits in `text` are CJK characters."""
    alnum = [ch for ch in text if ch.isalnum()]
    if not alnum:
        return False
    return sum(bool(_CJK_CHAR.match(ch)) for ch in alnum) / len(alnum) >= threshold


def _check_lang(lang: str, fn: str) -> str:
    lang = lang.lower()
    if lang not in _LANGS:
        raise ConfigError(f"{fn}: unknown lang {lang!r}", f"use one of {', '.join(_LANGS)}")
    return lang


def _references_per_hypothesis(references: Sequence[str] | Sequence[Sequence[str]], n: int, fn: str) -> list[list[str]]:
    refs = [[r] if isinstance(r, str) else list(r) for r in references]
    if len(refs) != n:
        raise DataError(f"{fn}: {n} hypotheses but {len(refs)} references",
                        "pass one reference (or one list of references) per hypothesis")
    if n == 0:
        raise DataError(f"{fn}: nothing to score", "pass at least one hypothesis")
    for i, r in enumerate(refs):
        if not r or not all(isinstance(x, str) for x in r):
            raise DataError(f"{fn}: example {i} has no reference strings", "give every hypothesis a reference")
    return refs


def bleu(hypotheses: list[str], references: list[str] | list[list[str]], *, lang: str = "en") -> dict:
    """Corpus BLEU and chrF of `hypotheses` against `references` (sacrebleu, 0..100).

    `references[i]` is the reference of `hypotheses[i]`, or a list of its references (the
    number may differ between hypotheses). `lang`: "en" (13a tokenizer), "zh" (zh tokenizer)
    or "auto" ("zh" when the references are mostly CJK, see `is_cjk_text`).

    Returns {"bleu", "chrf", "bleu_signature", "chrf_signature", "bleu_precisions" (1- to 4-gram,
    0..100), "brevity_penalty", "hyp_len", "ref_len", "tokenize"}.
    """
    from sacrebleu.metrics import BLEU, CHRF

    lang = _check_lang(lang, "bleu")
    hypotheses = list(hypotheses)
    refs = _references_per_hypothesis(references, len(hypotheses), "bleu")
    if lang == "auto":
        lang = "zh" if is_cjk_text("\n".join(r for rs in refs for r in rs)) else "en"
    tokenize = "zh" if lang == "zh" else "13a"
    # sacrebleu wants one stream per reference position; None marks a hypothesis with fewer references.
    width = max(len(r) for r in refs)
    streams = [[r[k] if k < len(r) else None for r in refs] for k in range(width)]

    bleu_metric = BLEU(tokenize=tokenize)
    chrf_metric = CHRF()
    b = bleu_metric.corpus_score(hypotheses, streams)
    c = chrf_metric.corpus_score(hypotheses, streams)
    return {
        "bleu": float(b.score),
        "chrf": float(c.score),
        "bleu_signature": str(bleu_metric.get_signature()),
        "chrf_signature": str(chrf_metric.get_signature()),
        "bleu_precisions": [float(p) for p in b.precisions],
        "brevity_penalty": float(b.bp),
        "hyp_len": int(b.sys_len),
        "ref_len": int(b.ref_len),
        "tokenize": tokenize,
    }


class CJKRougeTokenizer:
    """rouge-score tokenizer that makes every CJK character a token.

    Text between CJK characters goes to rouge-score's `DefaultTokenizer` unchanged (lowercase,
    non-alphanumerics to spaces, Porter stemming of words longer than 3 letters), so text
    without CJK characters gets exactly rouge-score's tokens.
    """

    def __init__(self, use_stemmer: bool = True):
        from rouge_score.tokenizers import DefaultTokenizer

        self._default = DefaultTokenizer(use_stemmer=use_stemmer)

    def tokenize(self, text: str) -> list[str]:
        tokens: list[str] = []
        for piece in _CJK_SPLIT.split(text):
            if not piece:
                continue
            if _CJK_CHAR.fullmatch(piece):
                tokens.append(piece)
            else:
                tokens.extend(self._default.tokenize(piece))
        return tokens


def rouge(predictions: list[str], references: list[str] | list[list[str]], *, lang: str = "auto",
          stemmer: bool = True) -> dict:
    """Mean ROUGE-1 / ROUGE-2 / ROUGE-L F-measure of `predictions` against `references` (0..1).

    `references[i]` is a string or a list of strings (then the best-scoring one counts, as
    rouge-score's `score_multi`). `lang`: "en" uses rouge-score's default tokenizer; "zh" and
    "auto" use `CJKRougeTokenizer`, identical to it on text without CJK characters.
    `stemmer`: Porter stemming of English words, as rouge-score's `use_stemmer`.

    Returns {"rouge1", "rouge2", "rougeL"}.
    """
    from rouge_score.rouge_scorer import RougeScorer

    lang = _check_lang(lang, "rouge")
    predictions = list(predictions)
    refs = _references_per_hypothesis(references, len(predictions), "rouge")
    types = ["rouge1", "rouge2", "rougeL"]
    tokenizer = None if lang == "en" else CJKRougeTokenizer(use_stemmer=stemmer)
    scorer = RougeScorer(types, use_stemmer=stemmer, tokenizer=tokenizer)
    totals = dict.fromkeys(types, 0.0)
    for prediction, targets in zip(predictions, refs):
        scores = scorer.score(targets[0], prediction) if len(targets) == 1 else scorer.score_multi(targets, prediction)
        for t in types:
            totals[t] += scores[t].fmeasure
    return {t: totals[t] / len(predictions) for t in types}


# --- SQuAD v1.1 ---------------------------------------------------------------------------------

_PUNCTUATION = frozenset(string.punctuation)


def _squad_normalize(text: str) -> str:
    text = text.lower()
    text = "".join(ch for ch in text if ch not in _PUNCTUATION)
    text = re.sub(r"\b(a|an|the)\b", " ", text)
    return " ".join(text.split())


def _squad_f1(prediction: str, gold: str) -> float:
    pred_tokens = _squad_normalize(prediction).split()
    gold_tokens = _squad_normalize(gold).split()
    same = sum((Counter(pred_tokens) & Counter(gold_tokens)).values())
    if same == 0:
        return 0.0
    precision = same / len(pred_tokens)
    recall = same / len(gold_tokens)
    return 2 * precision * recall / (precision + recall)


def _squad_em(prediction: str, gold: str) -> float:
    return float(_squad_normalize(prediction) == _squad_normalize(gold))


# --- CMRC 2018 ----------------------------------------------------------------------------------

# The official script's list, kept as is: it omits most ASCII punctuation, and its "……" (two
# characters) never equals the single character it is compared with.
_CMRC_PUNCT = frozenset(["-", ":", "_", "*", "^", "/", "\\", "~", "`", "+", "=",
                         "，", "。", "：", "？", "！", "“", "”", "；", "’", "《", "》", "……", "·", "、",
                         "「", "」", "（", "）", "－", "～", "『", "』"])


def _cmrc_segments(text: str) -> list[str]:
    """cmrc2018_evaluate.py's mixed_segmentation(text, rm_punc=True).

    Differences: CJK is the whole range of `is_cjk_text` where the script has U+4E00-U+9FA5, and
    nltk's word tokenizer runs without its sentence splitter (which needs downloaded data):
    the same tokens except that a period inside a run of non-CJK text stays attached to its word.
    """
    from nltk.tokenize import word_tokenize

    text = text.lower().strip()
    segments: list[str] = []
    run = ""
    for ch in text:
        if ch in _CMRC_PUNCT:
            continue  # skipped without ending the current non-CJK run, as in the script
        if _CJK_CHAR.match(ch):
            if run:
                segments.extend(word_tokenize(run, preserve_line=True))
                run = ""
            segments.append(ch)
        else:
            run += ch
    if run:
        segments.extend(word_tokenize(run, preserve_line=True))
    return segments


def _longest_common_substring(a: list[str], b: list[str]) -> int:
    best = 0
    previous = [0] * (len(b) + 1)
    for i in range(len(a)):
        current = [0] * (len(b) + 1)
        for j in range(len(b)):
            if a[i] == b[j]:
                current[j + 1] = previous[j] + 1
                best = max(best, current[j + 1])
        previous = current
    return best


def _cmrc_f1(prediction: str, gold: str) -> float:
    gold_segments = _cmrc_segments(gold)
    pred_segments = _cmrc_segments(prediction)
    overlap = _longest_common_substring(gold_segments, pred_segments)
    if overlap == 0:
        return 0.0
    precision = overlap / len(pred_segments)
    recall = overlap / len(gold_segments)
    return 2 * precision * recall / (precision + recall)


def _cmrc_strip(text: str) -> str:
    return "".join(ch for ch in text.lower().strip() if ch not in _CMRC_PUNCT)


def _cmrc_em(prediction: str, gold: str) -> float:
    return float(_cmrc_strip(prediction) == _cmrc_strip(gold))


def squad_scores(predictions: dict[str, str], examples: list[dict], *, lang: str = "auto") -> dict:
    """Exact match and F1 (0..100) of `predictions` ({id: answer text}) on SQuAD-style `examples`.

    `examples` are {"id", "question", "context", "answers": [{"text", "answer_start"}, ...]}.
    Each question scores its best gold answer; a question without a prediction scores 0 and is
    counted in "missing". A question with no gold answers (SQuAD 2.0 style) has the empty
    answer as gold. `lang`: "en" (SQuAD v1.1 definitions), "zh" (CMRC 2018 definitions) or
    "auto": CMRC 2018 for a question whose context and answers are mostly CJK (`is_cjk_text`).

    Returns {"exact_match", "f1", "count", "missing"}.
    """
    lang = _check_lang(lang, "squad_scores")
    examples = list(examples)
    if not examples:
        raise DataError("squad_scores: no examples", "pass at least one example")
    em_total = f1_total = 0.0
    missing = 0
    for example in examples:
        qid = example["id"]
        golds = [a["text"] for a in example.get("answers") or []]
        if qid not in predictions:
            missing += 1
            continue
        prediction = str(predictions[qid])
        if not golds:
            # SQuAD 2.0's rule for unanswerable questions: only an empty answer is right.
            right = float(not _squad_normalize(_cmrc_strip(prediction)))
            em_total += right
            f1_total += right
            continue
        chinese = lang == "zh" or (lang == "auto" and is_cjk_text(" ".join([example.get("context", ""), *golds])))
        em_fn, f1_fn = (_cmrc_em, _cmrc_f1) if chinese else (_squad_em, _squad_f1)
        em_total += max(em_fn(prediction, gold) for gold in golds)
        f1_total += max(f1_fn(prediction, gold) for gold in golds)
    return {"exact_match": 100.0 * em_total / len(examples), "f1": 100.0 * f1_total / len(examples),
            "count": len(examples), "missing": missing}
