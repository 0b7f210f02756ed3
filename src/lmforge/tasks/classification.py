"""Sequence classification: sentiment, topic, question type; binary or multi-class.

Inputs per family: BERT reads `[CLS] text [SEP] (pair [SEP])` and classifies from its pooled [CLS];
decoders read `text (<eos> pair) <eos>` and classify from the last token; T5 mean-pools its encoder.
Reports accuracy, macro and micro precision/recall/F1 and a confusion matrix (plots/confusion_matrix.png).
"""
from __future__ import annotations

from collections import Counter
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from lmforge.data.augment import augment_texts
from lmforge.errors import DataError
from lmforge.eval.classification import classification_report, plot_confusion_matrix
from lmforge.models.registry import FamilyTraits
from lmforge.tasks.base import Task, to_device
from lmforge.tasks.registry import register_task



@register_task("sentiment-analysis", "text-classification")
class ClassificationTask(Task):
    name = "classify"
    head = "sequence"
    reader_task = "classify"
    main_metric = "accuracy"
    label_key = "class_labels"  # the batch entry holding the gold labels (distillation masks by it)

    def read(self, path, *, target_path=None, require_labels=True):
        examples = super().read(path, target_path=target_path, require_labels=require_labels)
        sep = self.data.label_split
        if sep:
            for e in examples:
                if e.get("label") is not None:
                    e["label"] = str(e["label"]).split(sep, 1)[0]
        return examples

    def fit_labels(self, examples):
        labels = sorted({str(e["label"]) for e in examples if e.get("label") is not None}, key=_natural)
        if len(labels) < 2:
            raise DataError(f"classification needs at least two labels, found {labels}",
                            "check data.label_field / the label column of the training file")
        return labels

    # ------------------------------------------------------------------ data
    def augment(self, examples, paraphrase=None):
        cfg = self.settings.augment
        if not cfg.copies:
            return examples
        return augment_texts(examples, cfg, paraphrase)

    def resample(self, examples, seed):
        how = self.settings.balance.sampling
        if how == "none":
            return examples
        rng = np.random.default_rng(seed)
        by_label: dict[str, list[dict]] = {}
        for e in examples:
            by_label.setdefault(str(e["label"]), []).append(e)
        sizes = [len(v) for v in by_label.values()]
        target = max(sizes) if how == "over" else min(sizes)
        out = []
        for label in sorted(by_label, key=_natural):
            group = by_label[label]
            if how == "over":
                extra = rng.choice(len(group), target - len(group), replace=True) if target > len(group) else []
                out += group + [group[i] for i in extra]
            else:
                keep = np.sort(rng.choice(len(group), target, replace=False))
                out += [group[i] for i in keep]
        return out

    def class_weights(self, examples) -> list[float] | None:
        if not self.settings.balance.class_weights:
            return None
        counts = Counter(str(e["label"]) for e in examples)
        n, k = sum(counts.values()), len(self.labels)
        return [n / (k * max(counts.get(label, 0), 1)) for label in self.labels]

    def encode(self, example):
        ids, types = encode_text_input(self.tokenizer, self.traits, example["text"], example.get("text_pair"),
                                       self.max_input_tokens())
        feature = {"input_ids": ids, "attention_mask": [1] * len(ids)}
        if self.traits.segment_ids:
            feature["token_type_ids"] = types
        label = example.get("label")
        if label is not None and self.labels:
            feature["class_labels"] = self.labels.index(str(label)) if str(label) in self.labels else -100
        return feature

    def max_input_tokens(self) -> int:
        return min(self.data.max_length, self.extra.get("block_size", self.data.max_length))

    # ------------------------------------------------------------------ objective
    def counts(self, batch):
        return {"cls": (batch["class_labels"] != -100).sum()}

    def __call__(self, model, batch):
        logits = model(batch["input_ids"], attention_mask=batch["attention_mask"],
                       token_type_ids=batch.get("token_type_ids"))
        weights = self.extra.get("class_weights")
        w = torch.tensor(weights, device=logits.device) if weights else None
        return {"cls": F.cross_entropy(logits.float(), batch["class_labels"], weight=w, ignore_index=-100,
                                       reduction="sum")}

    # ------------------------------------------------------------------ evaluation and prediction
    def logits(self, model, features, batch_size) -> torch.Tensor:
        rows = []
        for start in range(0, len(features), batch_size):
            chunk = [{k: v for k, v in f.items() if k != "class_labels"} for f in features[start:start + batch_size]]
            batch = to_device(self.collate(chunk), model)
            rows.append(model(batch["input_ids"], attention_mask=batch["attention_mask"],
                              token_type_ids=batch.get("token_type_ids")).float().cpu())
        return torch.cat(rows) if rows else torch.zeros(0, len(self.labels))

    def evaluate(self, model, examples, features, *, batch_size):
        logits = self.logits(model, features, batch_size)
        gold = [str(e["label"]) for e in examples]
        pred = [self.labels[i] for i in logits.argmax(-1).tolist()]
        report = classification_report(gold, pred, labels=self.labels)
        known = torch.tensor([self.labels.index(g) if g in self.labels else -100 for g in gold])
        val_loss = float(F.cross_entropy(logits, known, ignore_index=-100)) if len(gold) else float("nan")
        return {"val_loss": val_loss, **report}

    def predict(self, model, examples, *, batch_size):
        features = [self.encode({**e, "label": None}) for e in examples]
        logits = self.logits(model, features, batch_size)
        probs = logits.softmax(-1)
        return [{"label": self.labels[i], "score": round(float(probs[row, i]), 6)}
                for row, i in enumerate(logits.argmax(-1).tolist())]

    def write_plots(self, figures, run_dir: Path):
        if "confusion_matrix" in figures:
            plot_confusion_matrix(figures["confusion_matrix"], figures.get("labels", self.labels),
                                  Path(run_dir) / "plots" / "confusion_matrix.png", title="validation")


def encode_text_input(tokenizer, traits: FamilyTraits, text: str, pair: str | None,
                      limit: int) -> tuple[list[int], list[int]]:
    """Token ids (and segment ids) of one text or text pair, truncated to `limit` tokens with the
    special tokens each family was trained with."""
    a = tokenizer.encode(text)
    b = tokenizer.encode(pair) if pair else None
    if traits.input_format == "cls-sep":
        cls_id, sep_id = tokenizer.token_to_id("[CLS]"), tokenizer.token_to_id("[SEP]")
        if cls_id is None or sep_id is None:
            raise DataError("the tokenizer has no [CLS]/[SEP] tokens, which BERT-style models need",
                            "use the tokenizer the model was pretrained with (a wordpiece tokenizer from lmforge)")
        budget = limit - (3 if b is not None else 2)
        a, b = _truncate_pair(a, b, budget)
        ids = [cls_id] + a + [sep_id]
        types = [0] * len(ids)
        if b is not None:
            ids += b + [sep_id]
            types += [1] * (len(b) + 1)
        return ids, types
    eos = tokenizer.eos_id
    budget = limit - (2 if b is not None else 1)
    a, b = _truncate_pair(a, b, budget)
    ids = a + ([eos] + b if b is not None else []) + [eos]
    return ids, [0] * len(ids)


def _truncate_pair(a: list[int], b: list[int] | None, budget: int) -> tuple[list[int], list[int] | None]:
    """Trim the longer of the two texts first until both fit in `budget` tokens."""
    budget = max(budget, 1)
    if b is None:
        return a[:budget], None
    while len(a) + len(b) > budget:
        if len(a) >= len(b):
            a = a[:-1]
        else:
            b = b[:-1]
    return a, b


def _natural(label: str):
    """Numeric labels in numeric order ("2" before "10"), others alphabetically."""
    return (0, int(label), "") if label.lstrip("-").isdigit() else (1, 0, label)
