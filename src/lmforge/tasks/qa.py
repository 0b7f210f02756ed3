"""Extractive question answering (SQuAD format): find the answer to a question as a span of its context.

Inputs per family: BERT reads `[CLS] question [SEP] context-window [SEP]` (segment ids 0 for the
question part, 1 for the context part); other families read `question <eos> context-window <eos>`
(a decoder sees only what comes before each position, which is allowed, if weaker). A context too
long for `data.max_length` is cut into overlapping windows, each sharing `data.doc_stride` tokens
with the previous one, so every character of the context lies in some window; the question is
repeated in every window. One example therefore gives one feature per window; each feature keeps
the index of its example and the character offsets of its context tokens.

With `data.question_match` (BERT) a context token that also occurs in the question gets segment
id 2 instead of 1: the exact-match feature of reading-comprehension models such as DrQA (Chen et
al. 2017), which a small model trained from scratch on a few thousand questions cannot afford to
learn from attention alone.

Training: the head scores every position as the answer's start and end; the labels of a window
are the first gold answer's first and last token, or position 0 when that answer is not wholly in
the window (or the question has none). Loss term "qa" = (CE(start) + CE(end)) / 2 per window.

Answers: in every window the `N_BEST` highest start and end positions among the context tokens are
paired into spans (start <= end, at most `max_answer_tokens` tokens: 30, or 50 for contexts that
are mostly CJK, where every character is a token); the span with the highest start + end logit over
all windows of the example wins, and its text is cut from the context by character offsets.
Reports exact match and F1 (SQuAD v1.1, or the CMRC 2018 definitions for Chinese).
"""
from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F

from lmforge.errors import ConfigError, DataError
from lmforge.eval.generation import is_cjk_text, squad_scores
from lmforge.models.registry import traits_of
from lmforge.tasks.base import Task, pad_batch, to_device
from lmforge.tasks.registry import register_task
from lmforge.train.objectives import IGNORE_INDEX


N_BEST = 20
MAX_ANSWER_TOKENS = 30
MAX_ANSWER_TOKENS_CJK = 50
_MODEL_KEYS = ("input_ids", "attention_mask", "token_type_ids", "start_positions", "end_positions")


@register_task("question-answering")
class QATask(Task):
    name = "qa"
    head = "span"
    reader_task = "qa"
    main_metric = "f1"

    @staticmethod
    def split_key(example):
        return example["context"]

    @classmethod
    def tokenizer_texts(cls, examples):
        # A passage carries several questions: train on each context once so it does not outweigh them.
        contexts = list(dict.fromkeys(e["context"] for e in examples))
        return [e["question"] for e in examples] + contexts

    @classmethod
    def fresh_model_settings(cls, data, family):
        return {"type_vocab_size": 3} if data.question_match and traits_of(family).segment_ids else {}

    @classmethod
    def check_backbone(cls, backbone, data):
        if not data.question_match:
            return

        types = getattr(backbone.config, "type_vocab_size", 0)
        if not traits_of(backbone).segment_ids:
            raise ConfigError(f"data.question_match needs a BERT-family model with segment embeddings; this is a "
                              f"{backbone.family} model", "start from a bert model or drop data.question_match")
        if types < 3:
            add_segment_type(backbone)

    # ------------------------------------------------------------------ data
    def max_input_tokens(self) -> int:
        return min(self.data.max_length, self.extra.get("block_size", self.data.max_length))

    def encode(self, example: dict) -> list[dict]:
        """The window features of one example (see the module docstring)."""
        return self.encode_all([example])

    def encode_all(self, examples: list[dict], *, labels: bool = True) -> list[dict]:
        """Window features of every example, in example order. Besides the model inputs (and
        `start_positions`/`end_positions` when `labels`) each feature has `example_index` and
        `offsets`: per input token its (start, end) characters in the context, None outside the
        context. `collate` keeps only the model inputs."""
        encoded_contexts: dict[str, tuple[list[int], list[tuple[int, int]]]] = {}
        features = []
        for index, example in enumerate(examples):
            context = example["context"]
            if context not in encoded_contexts:
                enc = self.tokenizer.hf.encode(context, add_special_tokens=False)
                encoded_contexts[context] = (list(enc.ids), [tuple(o) for o in enc.offsets])
            ids, offsets = encoded_contexts[context]
            label = None
            if labels:
                answers = example.get("answers") or []
                # An unanswerable question (no gold answers) points at position 0 in every window.
                label = answer_token_span(context, answers[0], offsets) if answers else (-1, -1)
            for feature in self._windows(example["question"], ids, offsets, labels, label):
                feature["example_index"] = index
                features.append(feature)
        return features

    def _windows(self, question: str, ids: list[int], offsets: list[tuple[int, int]], labelled: bool,
                 span: tuple[int, int] | None) -> list[dict]:
        """`span`: the gold answer's first and last context token; (-1, -1) for no answer; None when the
        gold text is not in the context."""
        limit = self.max_input_tokens()
        if limit < 8:
            raise ConfigError(f"data.max_length {limit} leaves no room for a question and a context window",
                              "pass --data.max_length 128 or more")
        q = self.tokenizer.encode(question)[:limit // 2]
        bert = self.traits.input_format == "cls-sep"
        if bert:
            cls_id, sep_id = self.tokenizer.token_to_id("[CLS]"), self.tokenizer.token_to_id("[SEP]")
            if cls_id is None or sep_id is None:
                raise DataError("the tokenizer has no [CLS]/[SEP] tokens, which BERT-style models need",
                                "use the tokenizer the model was pretrained with (a wordpiece tokenizer from lmforge)")
            prefix, suffix = [cls_id] + q + [sep_id], [sep_id]
        else:
            eos = self.tokenizer.eos_id
            prefix, suffix = q + [eos], [eos]
        room = limit - len(prefix) - len(suffix)
        overlap = self.data.doc_stride if self.data.doc_stride < room else room // 2
        step = max(room - overlap, 1)
        features = []
        start = 0
        while True:
            end = min(start + room, len(ids))
            input_ids = prefix + ids[start:end] + suffix
            feature = {"input_ids": input_ids, "attention_mask": [1] * len(input_ids),
                       "offsets": [None] * len(prefix) + offsets[start:end] + [None] * len(suffix)}
            if bert:
                context_types = [1] * (end - start)
                if self.data.question_match:
                    asked = set(q)
                    context_types = [2 if t in asked else 1 for t in ids[start:end]]
                feature["token_type_ids"] = [0] * len(prefix) + context_types + [1] * len(suffix)
            if labelled:
                if span is None:  # the gold text is not in the context: nothing to learn from this example
                    feature["start_positions"] = feature["end_positions"] = IGNORE_INDEX
                elif start <= span[0] <= span[1] < end:
                    feature["start_positions"] = span[0] - start + len(prefix)
                    feature["end_positions"] = span[1] - start + len(prefix)
                else:
                    feature["start_positions"] = feature["end_positions"] = 0
            features.append(feature)
            if end >= len(ids):
                return features
            start += step

    def collate(self, features):
        return pad_batch([{k: f[k] for k in _MODEL_KEYS if k in f} for f in features], self.tokenizer.pad_id)

    # ------------------------------------------------------------------ objective
    def counts(self, batch):
        return {"qa": (batch["start_positions"] != IGNORE_INDEX).sum()}

    def __call__(self, model, batch):
        start, end = self._logits(model, batch)
        return {"qa": _span_loss(start, end, batch)}

    @staticmethod
    def _logits(model, batch) -> tuple[torch.Tensor, torch.Tensor]:
        start, end = model(batch["input_ids"], attention_mask=batch["attention_mask"],
                           token_type_ids=batch.get("token_type_ids"))
        # Padding is never an answer; keeping it out of the softmax makes the loss independent of batch padding.
        pad = batch["attention_mask"] == 0
        return start.float().masked_fill(pad, -1e4), end.float().masked_fill(pad, -1e4)

    # ------------------------------------------------------------------ evaluation and prediction
    def window_logits(self, model, features, batch_size) -> tuple[list[np.ndarray], list[np.ndarray], float]:
        """Start and end logits of every feature (trimmed to its length) and the loss per labelled window."""
        starts, ends, loss, units = [], [], 0.0, 0
        for i in range(0, len(features), batch_size):
            chunk = features[i:i + batch_size]
            batch = to_device(self.collate(chunk), model)
            with torch.no_grad():
                start, end = self._logits(model, batch)
            if "start_positions" in batch:
                loss += float(_span_loss(start, end, batch))
                units += int(self.counts(batch)["qa"])
            start, end = start.cpu().numpy(), end.cpu().numpy()
            for row, f in enumerate(chunk):
                n = len(f["input_ids"])
                starts.append(start[row, :n])
                ends.append(end[row, :n])
        return starts, ends, (loss / units if units else float("nan"))

    def answers(self, model, examples, features, batch_size) -> tuple[list[dict], float]:
        """The best span of every example ({"answer", "score", "start", "end"}) and the validation loss."""
        starts, ends, loss = self.window_logits(model, features, batch_size)
        by_example: list[list[int]] = [[] for _ in examples]
        for j, f in enumerate(features):
            by_example[f["example_index"]].append(j)
        out = []
        for example, rows in zip(examples, by_example):
            out.append(best_answer(example["context"], [features[j]["offsets"] for j in rows],
                                   [starts[j] for j in rows], [ends[j] for j in rows],
                                   max_answer_tokens=max_answer_tokens(example["context"])))
        return out, loss

    def evaluate(self, model, examples, features, *, batch_size):
        spans, val_loss = self.answers(model, examples, features, batch_size)
        scores = squad_scores({e["id"]: s["answer"] for e, s in zip(examples, spans)}, examples)
        return {"val_loss": val_loss, "exact_match": scores["exact_match"], "f1": scores["f1"]}

    def predict(self, model, examples, *, batch_size):
        """{"id", "answer"} per example, plus the span's "score" (probability of its start times its end
        within its window) and its "start"/"end" character offsets in the context."""
        features = self.encode_all(examples, labels=False)
        spans, _ = self.answers(model, examples, features, batch_size)
        return [{"id": e.get("id", str(i)), **s} for i, (e, s) in enumerate(zip(examples, spans))]

    def pipeline_examples(self, inputs=None, *, question=None, context=None):
        """From `question=..., context=...` (strings, or lists; a single one is paired with every item of
        the other), or one {"question", "context"} dict or a list of them."""
        if inputs is not None:
            single = isinstance(inputs, dict)
            items = [inputs] if single else list(inputs)
            if not all(isinstance(x, dict) and "question" in x and "context" in x for x in items):
                raise DataError("question answering needs a question and a context",
                                "call the pipeline with question=..., context=...")
            questions, contexts = [x["question"] for x in items], [x["context"] for x in items]
        else:
            if question is None or context is None:
                raise DataError("question answering needs a question and a context",
                                "call the pipeline with question=..., context=...")
            single = isinstance(question, str) and isinstance(context, str)
            questions = [question] if isinstance(question, str) else list(question)
            contexts = [context] if isinstance(context, str) else list(context)
            if len(questions) == 1 and len(contexts) > 1:
                questions = questions * len(contexts)
            elif len(contexts) == 1 and len(questions) > 1:
                contexts = contexts * len(questions)
            if len(questions) != len(contexts):
                raise DataError(f"{len(questions)} questions but {len(contexts)} contexts",
                                "pass one context per question, or a single context for all")
        examples = [{"id": str(i), "question": q, "context": c, "answers": []}
                    for i, (q, c) in enumerate(zip(questions, contexts))]
        return examples, single

    def pipeline_result(self, answer, example):
        return {"answer": answer["answer"], "score": answer["score"], "start": answer["start"], "end": answer["end"]}


def _span_loss(start: torch.Tensor, end: torch.Tensor, batch: dict) -> torch.Tensor:
    """(CE(start) + CE(end)) / 2 summed over the labelled windows."""
    ce_start = F.cross_entropy(start, batch["start_positions"], ignore_index=IGNORE_INDEX, reduction="sum")
    ce_end = F.cross_entropy(end, batch["end_positions"], ignore_index=IGNORE_INDEX, reduction="sum")
    return (ce_start + ce_end) / 2


# ---------------------------------------------------------------- span helpers
def answer_token_span(context: str, answer: dict, offsets: list[tuple[int, int]]) -> tuple[int, int] | None:
    """(first, last) context token of `answer`, or None when its text is not in the context.

    A given `answer_start` that does not point at the text is replaced by the nearest occurrence
    of the text (a few public files have shifted offsets)."""
    text, begin = answer["text"], int(answer["answer_start"])
    if not text.strip():
        return None
    if context[begin:begin + len(text)] != text:
        found = list(_occurrences(context, text))
        if not found:
            return None
        begin = min(found, key=lambda i: abs(i - begin))
    end = begin + len(text)
    # Whitespace at the edges of a gold answer belongs to no token.
    while begin < end and context[begin].isspace():
        begin += 1
    while end > begin and context[end - 1].isspace():
        end -= 1
    first = next((i for i, (s, e) in enumerate(offsets) if e > begin and e > s), None)
    last = next((i for i in range(len(offsets) - 1, -1, -1) if offsets[i][0] < end and offsets[i][1] > offsets[i][0]),
                None)
    if first is None or last is None or first > last:
        return None
    return first, last


def _occurrences(text: str, part: str):
    i = text.find(part)
    while i >= 0:
        yield i
        i = text.find(part, i + 1)


def max_answer_tokens(context: str) -> int:
    return MAX_ANSWER_TOKENS_CJK if is_cjk_text(context) else MAX_ANSWER_TOKENS


def best_answer(context: str, offsets: list[list], starts: list[np.ndarray], ends: list[np.ndarray], *,
                n_best: int = N_BEST, max_answer_tokens: int = MAX_ANSWER_TOKENS) -> dict:
    """The highest-scoring valid span over the windows of one example.

    `offsets[w][t]` is the (start, end) characters of token t of window w in `context`, None for
    tokens outside the context; `starts[w]`, `ends[w]` are that window's logits. A span is valid
    when it lies in the context part, start <= end and it has at most `max_answer_tokens` tokens.
    Returns {"answer", "score", "start", "end"} ("" and score 0.0 when no span is valid)."""
    best = None  # (logit sum, window, start token, end token)
    for w, (offs, s_logits, e_logits) in enumerate(zip(offsets, starts, ends)):
        inside = np.array([o is not None for o in offs], dtype=bool)
        if not inside.any():
            continue
        s_masked = np.where(inside, s_logits, -np.inf)
        e_masked = np.where(inside, e_logits, -np.inf)
        k = min(n_best, int(inside.sum()))
        top_s = np.argsort(-s_masked, kind="stable")[:k]
        top_e = np.argsort(-e_masked, kind="stable")[:k]
        for s in top_s:
            for e in top_e:
                if e < s or e - s + 1 > max_answer_tokens:
                    continue
                score = float(s_logits[s] + e_logits[e])
                if best is None or score > best[0]:
                    best = (score, w, int(s), int(e))
    if best is None:
        return {"answer": "", "score": 0.0, "start": 0, "end": 0}
    _, w, s, e = best
    begin, end = offsets[w][s][0], offsets[w][e][1]
    while begin < end and context[begin].isspace():
        begin += 1
    while end > begin and context[end - 1].isspace():
        end -= 1
    inside = np.array([o is not None for o in offsets[w]], dtype=bool)
    p_start = _softmax_at(starts[w], inside, s)
    p_end = _softmax_at(ends[w], inside, e)
    return {"answer": context[begin:end], "score": round(p_start * p_end, 6), "start": int(begin), "end": int(end)}


def _softmax_at(logits: np.ndarray, inside: np.ndarray, i: int) -> float:
    x = np.asarray(logits, dtype=np.float64)[inside]
    m = x.max()
    return float(math.exp(float(logits[i]) - m) / np.exp(x - m).sum())


def add_segment_type(bert) -> None:
    """Give a pretrained BERT a third segment type for `data.question_match`.

    The new row starts as a copy of segment 1 (the passage), so the model computes exactly what it
    did before until fine-tuning teaches it what a passage token that also occurs in the question means.
    """
    old = bert.embeddings.wtt
    new = torch.nn.Embedding(3, old.embedding_dim, device=old.weight.device, dtype=old.weight.dtype)
    with torch.no_grad():
        new.weight[:old.num_embeddings] = old.weight
        new.weight[old.num_embeddings:] = old.weight[-1]
    bert.embeddings.wtt = new
    bert.config.type_vocab_size = 3
