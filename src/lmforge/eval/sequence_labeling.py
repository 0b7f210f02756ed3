"""Entity-level scores for sequence labelling (named entities, word segmentation), by seqeval.

An entity is a (type, start, end) span read off a tag sequence; a predicted entity counts only
if its type and both boundaries match a true one. Precision, recall and F1 are micro averages
over all entities of all sentences (the CoNLL-2000 `conlleval` definition); per-type scores
and the macro average come with them, and "accuracy" is the fraction of tokens whose tag is
right. seqeval computes everything.

Tag schemes:
  IOB2 / BIO  B- starts an entity, I- continues it. Scored in seqeval's default mode, which
              reproduces conlleval (an I- that cannot continue the previous entity starts one).
  IOB1        B- only separates two adjacent entities of one type; same default mode.
  BIOES       B- begin, I- inside, E- end, S- single-token entity. Scored in seqeval's strict
              mode with its IOBES scheme: an entity must be well formed to count.
  BMES        the Chinese segmentation/NER convention (M- = middle). seqeval has no BMES, so
              M- is renamed I- and it is scored exactly as BIOES.
"""
from __future__ import annotations

from lmforge.errors import ConfigError, DataError

SCHEMES = ("IOB1", "IOB2", "BIO", "BMES", "BIOES")


def _bmes_to_bioes(tag: str) -> str:
    return "I" + tag[1:] if tag.startswith("M-") else tag


def _count_entities(tags: list[list[str]], strict: bool) -> int:
    from seqeval.metrics.sequence_labeling import get_entities
    from seqeval.scheme import IOBES, Entities

    if strict:
        return sum(len(sentence) for sentence in Entities(tags, IOBES).entities)
    return len(get_entities(tags))


def entity_scores(true_tags: list[list[str]], pred_tags: list[list[str]], scheme: str = "IOB2") -> dict:
    """Score predicted tag sequences against true ones (one list of tags per sentence).

    Returns {"precision", "recall", "f1"} (micro over entities), {"macro_precision",
    "macro_recall", "macro_f1"}, "accuracy" (token level), "per_type": {type: {"precision",
    "recall", "f1", "support"}}, "num_true_entities", "num_pred_entities" and "scheme"; scores
    are in 0..1, and 0.0 where undefined (no entities).
    """
    from seqeval.metrics import accuracy_score, classification_report
    from seqeval.scheme import IOBES

    name = scheme.upper()
    if name not in SCHEMES:
        raise ConfigError(f"entity_scores: unknown tag scheme {scheme!r}", f"use one of {', '.join(SCHEMES)}")
    true_tags = [list(sentence) for sentence in true_tags]
    pred_tags = [list(sentence) for sentence in pred_tags]
    if len(true_tags) != len(pred_tags):
        raise DataError(f"entity_scores: {len(true_tags)} true sentences but {len(pred_tags)} predicted",
                        "pass one predicted tag sequence per sentence")
    for i, (t, p) in enumerate(zip(true_tags, pred_tags)):
        if len(t) != len(p):
            raise DataError(f"entity_scores: sentence {i} has {len(t)} true tags but {len(p)} predicted",
                            "predict exactly one tag per token")
    if not any(true_tags):
        raise DataError("entity_scores: no tokens to score", "pass at least one non-empty sentence")

    if name in ("BMES", "BIOES"):
        if name == "BMES":
            true_tags = [[_bmes_to_bioes(tag) for tag in s] for s in true_tags]
            pred_tags = [[_bmes_to_bioes(tag) for tag in s] for s in pred_tags]
        options = {"mode": "strict", "scheme": IOBES}
    else:
        options = {}
    strict = bool(options)
    num_true, num_pred = _count_entities(true_tags, strict), _count_entities(pred_tags, strict)
    result = {"precision": 0.0, "recall": 0.0, "f1": 0.0, "macro_precision": 0.0, "macro_recall": 0.0,
              "macro_f1": 0.0, "accuracy": float(accuracy_score(true_tags, pred_tags)), "per_type": {},
              "num_true_entities": num_true, "num_pred_entities": num_pred, "scheme": name}
    if num_true == 0 and num_pred == 0:
        # seqeval averages over an empty set of types here (NaN and a warning); nothing to find is 0.0.
        return result
    report = classification_report(true_tags, pred_tags, output_dict=True, zero_division=0, **options)
    micro, macro = report["micro avg"], report["macro avg"]
    result.update({
        "precision": float(micro["precision"]),
        "recall": float(micro["recall"]),
        "f1": float(micro["f1-score"]),
        "macro_precision": float(macro["precision"]),
        "macro_recall": float(macro["recall"]),
        "macro_f1": float(macro["f1-score"]),
        "per_type": {type_: {"precision": float(r["precision"]), "recall": float(r["recall"]),
                             "f1": float(r["f1-score"]), "support": int(r["support"])}
                     for type_, r in report.items() if not type_.endswith(" avg")},
    })
    return result
