"""Single-label classification metrics and a confusion-matrix plot.

`classification_report` computes accuracy, per-label precision / recall / F1 / support, their
macro averages (unweighted mean over labels) and micro averages (from the summed counts), and
the confusion matrix, with the definitions of scikit-learn's `accuracy_score`,
`precision_recall_fscore_support(..., zero_division=0)` and `confusion_matrix`: a ratio with a
zero denominator is 0.0. It is computed with NumPy so that evaluation does not need
scikit-learn; the tests check it against scikit-learn.

Labels are strings. With an explicit `labels` list, predictions outside it (a generated answer
that is not a valid label) count as wrong for accuracy and recall but, as in scikit-learn,
as a prediction of no listed label for precision and the confusion matrix; `out_of_labels`
counts them.

`plot_confusion_matrix` draws the matrix with matplotlib's Agg backend into a PNG file.
"""
from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from lmforge.atomic import atomic_path
from lmforge.errors import DataError



def _ratio(num: np.ndarray, den: np.ndarray) -> np.ndarray:
    num = np.asarray(num, dtype=np.float64)
    den = np.asarray(den, dtype=np.float64)
    out = np.zeros_like(num)
    np.divide(num, den, out=out, where=den > 0)
    return out


def _f1(precision: np.ndarray, recall: np.ndarray) -> np.ndarray:
    return _ratio(2 * precision * recall, precision + recall)


def classification_report(y_true: list[str], y_pred: list[str], labels: list[str] | None = None) -> dict:
    """Scores of `y_pred` against `y_true` (one label per example).

    `labels` fixes the label set and its order (per-label scores, macro averages and the matrix);
    by default it is every label seen in either list, sorted.

    Returns {"accuracy", "macro_precision", "macro_recall", "macro_f1", "micro_precision",
    "micro_recall", "micro_f1", "per_label": {label: {"precision", "recall", "f1", "support"}},
    "confusion_matrix": rows = true label, columns = predicted label, in `labels` order,
    "labels", "num_examples", "out_of_labels"}; every score is in 0..1.
    """
    y_true, y_pred = list(y_true), list(y_pred)
    if len(y_true) != len(y_pred):
        raise DataError(f"classification_report: {len(y_true)} true labels but {len(y_pred)} predictions",
                        "pass one prediction per example")
    if not y_true:
        raise DataError("classification_report: no examples", "pass at least one example")
    if labels is None:
        labels = sorted(set(y_true) | set(y_pred))
    labels = list(labels)
    if len(set(labels)) != len(labels):
        dupes = sorted(label for label, n in Counter(labels).items() if n > 1)
        raise DataError(f"classification_report: labels listed twice: {dupes}", "list each label once")
    if not labels:
        raise DataError("classification_report: empty label list", "pass at least one label")
    index = {label: i for i, label in enumerate(labels)}

    n = len(labels)
    matrix = np.zeros((n, n), dtype=np.int64)
    for t, p in zip(y_true, y_pred):
        if t in index and p in index:
            matrix[index[t], index[p]] += 1
    true_counts, pred_counts = Counter(y_true), Counter(y_pred)
    # Counted from the raw lists, not the matrix: a prediction of a listed label for an example
    # whose true label is unlisted is still a false positive.
    true_sum = np.array([true_counts[label] for label in labels], dtype=np.int64)
    pred_sum = np.array([pred_counts[label] for label in labels], dtype=np.int64)
    tp = np.diag(matrix)

    precision = _ratio(tp, pred_sum)
    recall = _ratio(tp, true_sum)
    f1 = _f1(precision, recall)
    micro_p = float(_ratio(tp.sum(), pred_sum.sum()))
    micro_r = float(_ratio(tp.sum(), true_sum.sum()))
    return {
        "accuracy": sum(t == p for t, p in zip(y_true, y_pred)) / len(y_true),
        "macro_precision": float(precision.mean()),
        "macro_recall": float(recall.mean()),
        "macro_f1": float(f1.mean()),
        "micro_precision": micro_p,
        "micro_recall": micro_r,
        "micro_f1": float(_f1(np.float64(micro_p), np.float64(micro_r))),
        "per_label": {label: {"precision": float(precision[i]), "recall": float(recall[i]), "f1": float(f1[i]),
                              "support": int(true_sum[i])} for i, label in enumerate(labels)},
        "confusion_matrix": matrix.tolist(),
        "labels": labels,
        "num_examples": len(y_true),
        "out_of_labels": sum(p not in index for p in y_pred),
    }


def plot_confusion_matrix(matrix: Sequence[Sequence[int]], labels: Sequence[str], path: str | Path, *,
                          title: str | None = None) -> Path:
    """Write the confusion matrix (rows = true, columns = predicted) as a PNG at `path`, atomically.

    Cells show the counts; the colour is the count as a fraction of its row (the recall of
    that true label), so rare labels stay as visible as frequent ones.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure


    counts = np.asarray(matrix, dtype=np.int64)
    labels = [str(label) for label in labels]
    n = len(labels)
    if counts.shape != (n, n):
        raise DataError(f"plot_confusion_matrix: matrix of shape {counts.shape} for {n} labels",
                        "pass a square matrix with one row and column per label")
    row_sums = counts.sum(axis=1, keepdims=True)
    shares = np.divide(counts, row_sums, out=np.zeros(counts.shape), where=row_sums > 0)

    side = min(max(5.0, 0.55 * n + 2.5), 16.0)
    fontsize = 10 if n <= 8 else 8 if n <= 16 else 6
    fig = Figure(figsize=(side + 1.0, side), layout="constrained")
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    image = ax.imshow(shares, cmap="Blues", vmin=0.0, vmax=1.0)
    fig.colorbar(image, ax=ax, fraction=0.046, pad=0.04, label="fraction of true label")
    ax.set_xticks(range(n), labels, rotation=45 if n > 4 else 0, ha="right" if n > 4 else "center",
                  rotation_mode="anchor", fontsize=fontsize)
    ax.set_yticks(range(n), labels, fontsize=fontsize)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    if title:
        ax.set_title(title)
    for i in range(n):
        for j in range(n):
            ax.text(j, i, str(counts[i, j]), ha="center", va="center", fontsize=fontsize,
                    color="white" if shares[i, j] > 0.5 else "black")
    path = Path(path)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=110, bbox_inches="tight", pad_inches=0.15)
    return path
