"""Named-entity recognition (token classification): one tag per input token, scored per entity.

Examples are `{"tokens": [...], "tags": [...]}` in the data's tag scheme (`data.tag_scheme`: IOB2/BIO,
IOB1, BIOES or BMES); Chinese character-level data (BMES files) has one character per token.
Each token is encoded on its own and its subwords are laid end to end:

    BERT:      [CLS] w1_a w1_b w2_a ... [SEP]        labels: -100 L1 -100 L2 ... -100
    decoders:  w1_a w1_b ␣w2_a ... <eos>              (byte-level BPE: a space before every word
                                                       after the first, as in running text)

Only the first subword of a word carries its tag; the head's scores there are the word's. Inputs
longer than `data.max_length` tokens are cut at a word boundary and the words that did not fit
are tagged "O". A sentence's tags are the most probable sequence that is valid in the scheme
(Viterbi over the per-word probabilities with the scheme's transitions allowed, e.g. no I-PER
after O): the per-word argmax when that is already valid, otherwise a repaired one, so every
prediction decodes to whole entities. Scores (entity-level precision/recall/F1, token accuracy)
come from seqeval.
"""
from __future__ import annotations

import json

import numpy as np
import torch
import torch.nn.functional as F

from lmforge.data.tagging import spans_to_tags, tags_to_spans
from lmforge.errors import DataError
from lmforge.eval.generation import is_cjk_text
from lmforge.eval.sequence_labeling import entity_scores
from lmforge.tasks.base import LengthGroupedLoader, Task, pad_batch, to_device
from lmforge.tasks.registry import register_task
from lmforge.train.objectives import IGNORE_INDEX



@register_task("token-classification")
class NERTask(Task):
    name = "ner"
    head = "token"
    reader_task = "ner"
    main_metric = "f1"
    label_key = "labels"  # the batch entry holding the gold labels (distillation masks by it)

    @staticmethod
    def split_key(example: dict) -> str:
        return " ".join(example["tokens"])

    @classmethod
    def tokenizer_texts(cls, examples: list[dict]) -> list[str]:
        # The tokens as running text; the tags are not text the model reads.
        return [joiner(e["tokens"]).join(e["tokens"]) for e in examples if e.get("tokens")]

    def fit_labels(self, examples: list[dict]) -> list[str]:
        tags = {str(t) for e in examples for t in (e.get("tags") or [])}
        check_scheme(sorted(tags), self.data.tag_scheme)
        entity_tags = sorted(tags - {"O"})
        if not entity_tags:
            raise DataError("the training data has no entity tags (every token is O)",
                            "check data.train and data.tag_column (the column that holds the NER tags)")
        return ["O"] + entity_tags

    # ------------------------------------------------------------------ data
    def max_input_tokens(self) -> int:
        return min(self.data.max_length, int(self.extra.get("block_size", self.data.max_length)))

    def _space_prefix(self) -> bool:
        """Whether words need a leading space to be tokenised as inside running text (byte-level BPE)."""
        if not hasattr(self, "_prefix"):
            pre = json.loads(self.tokenizer.hf.to_str()).get("pre_tokenizer") or {}
            self._prefix = self.tokenizer.kind == "bpe" and '"ByteLevel"' in json.dumps(pre)
        return self._prefix

    def word_pieces(self, tokens: list[str]) -> list[list[int]]:
        """Subword ids of every token, each encoded alone (a token that encodes to nothing becomes UNK)."""
        if not tokens:
            return []
        spaced = self._space_prefix() and joiner(tokens) == " "
        words = [(" " + w if spaced and i else w) for i, w in enumerate(tokens)]
        pieces = [e.ids for e in self.tokenizer.hf.encode_batch(words, add_special_tokens=False)]
        unk = _unk_id(self.tokenizer)
        return [p if p or unk is None else [unk] for p in pieces]

    def align(self, tokens: list[str]) -> tuple[list[int], list[int], list[int]]:
        """(input ids, segment ids, position of each fitting word's first subword)."""
        if self.traits.input_format == "cls-sep":
            cls_id, sep_id = self.tokenizer.token_to_id("[CLS]"), self.tokenizer.token_to_id("[SEP]")
            if cls_id is None or sep_id is None:
                raise DataError("the tokenizer has no [CLS]/[SEP] tokens, which BERT-style models need",
                                "use the tokenizer the model was pretrained with (a wordpiece tokenizer from lmforge)")
            head, tail = [cls_id], [sep_id]
        else:
            head, tail = [], [self.tokenizer.eos_id]
        budget = max(self.max_input_tokens() - len(head) - len(tail), 1)
        ids, starts = list(head), []
        for pieces in self.word_pieces(tokens):
            room = budget - (len(ids) - len(head))
            if room <= 0 or not pieces:
                break
            starts.append(len(ids))
            ids += pieces[:room]  # the last word may lose trailing subwords; its first one is what counts
        ids += tail
        return ids, [0] * len(ids), starts

    def encode(self, example: dict) -> dict:
        ids, types, starts = self.align(example["tokens"])
        feature = {"input_ids": ids, "attention_mask": [1] * len(ids)}
        if self.traits.segment_ids:
            feature["token_type_ids"] = types
        tags = example.get("tags")
        if tags is not None and self.labels:
            index = {t: i for i, t in enumerate(self.labels)}
            labels = [IGNORE_INDEX] * len(ids)
            for position, tag in zip(starts, tags):
                labels[position] = index.get(str(tag), IGNORE_INDEX)
            feature["labels"] = labels
        feature["word_starts"] = starts
        return feature

    def collate(self, features: list[dict]) -> dict[str, torch.Tensor]:
        return pad_batch([{k: v for k, v in f.items() if k != "word_starts"} for f in features], self.tokenizer.pad_id)

    def make_task_loader(self, features, batch_size, *, seed, rank=0, world_size=1):
        return LengthGroupedLoader(features, batch_size, self.collate, seed=seed, rank=rank, world_size=world_size)

    # ------------------------------------------------------------------ objective
    def counts(self, batch):
        return {"tok": (batch["labels"] != IGNORE_INDEX).sum()}

    def __call__(self, model, batch):
        logits = model(batch["input_ids"], attention_mask=batch["attention_mask"],
                       token_type_ids=batch.get("token_type_ids"))
        return {"tok": F.cross_entropy(logits.float().reshape(-1, logits.size(-1)), batch["labels"].reshape(-1),
                                       ignore_index=IGNORE_INDEX, reduction="sum")}

    # ------------------------------------------------------------------ evaluation and prediction
    def word_logits(self, model, features: list[dict], batch_size: int) -> tuple[list[torch.Tensor], float, int]:
        """Logits (words that fit, labels) per feature, plus the summed loss and count over labelled words."""
        order = sorted(range(len(features)), key=lambda i: len(features[i]["input_ids"]))  # less padding
        out: list[torch.Tensor | None] = [None] * len(features)
        loss, units = 0.0, 0
        with torch.no_grad():
            for start in range(0, len(order), batch_size):
                chunk = [features[i] for i in order[start:start + batch_size]]
                batch = to_device(self.collate(chunk), model)
                logits = model(batch["input_ids"], attention_mask=batch["attention_mask"],
                               token_type_ids=batch.get("token_type_ids")).float()
                if "labels" in batch:
                    loss += float(F.cross_entropy(logits.reshape(-1, logits.size(-1)), batch["labels"].reshape(-1),
                                                  ignore_index=IGNORE_INDEX, reduction="sum"))
                    units += int((batch["labels"] != IGNORE_INDEX).sum())
                logits = logits.cpu()
                for row, (i, f) in enumerate(zip(order[start:start + batch_size], chunk)):
                    out[i] = logits[row, f["word_starts"]]
        return out, loss, units

    def decode(self, word_logits: torch.Tensor, n_tokens: int) -> list[str]:
        """One valid tag per token: the most probable valid sequence over the words that fit (the
        per-word argmax whenever that is valid), "O" for the rest."""
        tags = best_valid_tags(word_logits.float().log_softmax(-1).numpy(), self.labels, self.data.tag_scheme)
        tags += ["O"] * (n_tokens - len(tags))
        return repair_tags(tags, self.data.tag_scheme)

    def evaluate(self, model, examples, features, *, batch_size):
        logits, loss, units = self.word_logits(model, features, batch_size)
        gold = [list(e["tags"]) for e in examples]
        pred = [self.decode(lg, len(e["tokens"])) for lg, e in zip(logits, examples)]
        scores = entity_scores(gold, pred, self.data.tag_scheme)
        figures = {"val_loss": loss / units if units else float("nan")}
        figures.update({k: float(scores[k]) for k in ("precision", "recall", "f1", "accuracy", "macro_f1")})
        figures.update({f"f1_{kind}": float(s["f1"]) for kind, s in sorted(scores["per_type"].items())})
        return figures

    def predict(self, model, examples, *, batch_size):
        features = [self.encode({**e, "tags": None}) for e in examples]
        logits, _, _ = self.word_logits(model, features, batch_size)
        return [{"tokens": list(e["tokens"]), "tags": self.decode(lg, len(e["tokens"]))}
                for lg, e in zip(logits, examples)]

    def pipeline_examples(self, inputs, is_split_into_words: bool | None = None):
        """A text (split on whitespace; text with CJK characters: one token per non-space character),
        a token list, or a list of either. A list of strings is one token list unless some string holds
        whitespace or `is_split_into_words=False` says it is a list of texts."""
        if isinstance(inputs, str):
            return [{"tokens": split_text(inputs), "tags": None}], True
        items = list(inputs)
        if all(isinstance(x, str) for x in items):
            as_words = is_split_into_words
            if as_words is None:
                as_words = bool(items) and not any(any(ch.isspace() for ch in x) for x in items)
            if as_words:
                return [{"tokens": items, "tags": None}], True
            return [{"tokens": split_text(x), "tags": None} for x in items], False
        examples = []
        for x in items:
            if isinstance(x, str):
                examples.append({"tokens": split_text(x), "tags": None})
            elif isinstance(x, (list, tuple)) and all(isinstance(t, str) for t in x):
                examples.append({"tokens": list(x), "tags": None})
            else:
                raise DataError(f"cannot tag {type(x).__name__} input", "pass a text, a list of tokens, or a list of those")
        return examples, False

    def pipeline_result(self, answer, example):
        tokens, tags = answer["tokens"], answer["tags"]
        glue = joiner(tokens)
        entities = [{"type": kind, "start": start, "end": end, "text": glue.join(tokens[start:end])}
                    for kind, start, end in tags_to_spans(tags, self.data.tag_scheme)]
        return {"tokens": tokens, "tags": tags, "entities": entities}


# ---------------------------------------------------------------- helpers
def joiner(tokens: list[str]) -> str:
    """How tokens join into running text: nothing between single CJK characters, else a space."""
    if tokens and all(len(t) == 1 for t in tokens):
        if is_cjk_text("".join(tokens)):
            return ""
    return " "


def split_text(text: str) -> list[str]:
    """Tokens of a raw text: whitespace-separated words, or characters for text with CJK characters."""
    if is_cjk_text(text):
        return [ch for ch in text if not ch.isspace()]
    return text.split()


def check_scheme(tags: list[str], scheme: str) -> None:
    """DataError naming the first tag that `scheme` cannot hold."""
    for tag in tags:
        try:
            tags_to_spans([tag], scheme)
        except DataError:
            hint = "BMES" if tag[:2] in ("M-", "E-", "S-") else "IOB2"
            raise DataError(f"tag {tag!r} is not a {scheme} tag", f"set data.tag_scheme to the data's scheme "
                            f"(e.g. --data.tag_scheme {hint})") from None


def best_valid_tags(log_probs: np.ndarray, labels: list[str], scheme: str) -> list[str]:
    """The valid tag sequence with the highest total log-probability (log_probs: (words, labels))."""
    if not len(log_probs):
        return []
    allowed, first, last = _transitions(tuple(labels), str(scheme).upper())
    score = log_probs[0] + first
    back = np.zeros(log_probs.shape, dtype=np.int64)
    for t in range(1, len(log_probs)):
        step = score[:, None] + allowed            # (previous, next)
        back[t] = step.argmax(0)
        score = step.max(0) + log_probs[t]
    k = int((score + last).argmax())
    path = [k]
    for t in range(len(log_probs) - 1, 0, -1):
        k = int(back[t, k])
        path.append(k)
    return [labels[i] for i in reversed(path)]


_transition_cache: dict[tuple, tuple[np.ndarray, np.ndarray, np.ndarray]] = {}


def _transitions(labels: tuple[str, ...], scheme: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Additive masks (0 allowed, -inf not): label -> label, at the first word, at the last word
    (a sentence starts and ends as if next to an "O")."""
    key = (labels, scheme)
    if key not in _transition_cache:
        def mask(flags) -> np.ndarray:
            return np.where(np.array(flags, dtype=bool), 0.0, -np.inf)

        _transition_cache[key] = (mask([[_can_follow(a, b, scheme) for b in labels] for a in labels]),
                                  mask([_can_follow("O", b, scheme) for b in labels]),
                                  mask([_can_follow(a, "O", scheme) for a in labels]))
    return _transition_cache[key]


def _can_follow(prev: str, cur: str, scheme: str) -> bool:
    """Whether tag `cur` may come right after tag `prev` in `scheme`."""
    p, p_type = ("O", None) if prev == "O" else (prev[0], prev[2:])
    c, c_type = ("O", None) if cur == "O" else (cur[0], cur[2:])
    same = p != "O" and p_type == c_type
    if scheme in ("BMES", "BIOES"):
        inner = "M" if scheme == "BMES" else "I"
        if p in ("B", inner):  # an entity is open: it must go on or close
            return c in (inner, "E") and same
        return c in ("O", "B", "S")
    if scheme == "IOB1":  # B- only separates two adjacent entities of one type
        return c != "B" or (p in ("B", "I") and same)
    return c != "I" or (p in ("B", "I") and same)  # IOB2 / BIO


def repair_tags(tags: list[str], scheme: str) -> list[str]:
    """The closest valid sequence of `scheme`: read entities leniently (an I-/M-/E- that continues
    nothing starts one) and write them back, which leaves valid sequences unchanged."""
    return spans_to_tags(tags_to_spans(tags, scheme), len(tags), scheme)


def _unk_id(tokenizer) -> int | None:
    for token in ("[UNK]", "<unk>"):
        i = tokenizer.token_to_id(token)
        if i is not None:
            return i
    return None
