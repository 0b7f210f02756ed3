"""The `Subject` of an explanation for a run: its model, the tokenised text, and the target's probability F.

Fine-tuned classifiers explain a class (default: the predicted one), taggers one word's tag, and language
models the next token. Every input is checked before any work: a text longer than the model's context, a
label the run does not have, or a target that does not fit the run is a one-line error.
"""
from __future__ import annotations

from pathlib import Path

import torch
import torch.nn as nn

from lmforge.errors import ConfigError
from lmforge.explain.subject import Subject, token_embedding
from lmforge.models.registry import load_model, traits_of
from lmforge.runs.rundir import is_task_model, load, load_task_run
from lmforge.tasks.classification import encode_text_input
from lmforge.tasks.ner import split_text

UNLIMITED = 1 << 30
EXPLAINED_TASKS = ("classify", "ner")  # fine-tuned tasks whose outputs explain reads


class ExplainedRun:
    """A loaded run and what its inputs are: "classify", "ner" or "next-token"."""

    def __init__(self, run_dir: str | Path, *, device: str = "cpu", loaded: tuple | None = None):
        """`loaded`: the run's (model, task) already in memory, as a server holds its task models; shared, not
        copied (explaining leaves the model as it found it)."""
        self.run_dir = Path(run_dir)
        model = loaded[0] if loaded is not None else load_model(self.run_dir, device=device)
        if is_task_model(model) and model.config.head != "lm":
            self.model, self.task = loaded or load_task_run(self.run_dir, device=device)
            if self.task.name not in EXPLAINED_TASKS:
                raise ConfigError(f"{self.run_dir} is a fine-tuned {self.task.name} model; explain reads classifiers, "
                                  "taggers (ner) and language models", "pass a classify, ner or language-model run")
            self.kind, self.tokenizer = self.task.name, self.task.tokenizer
            self.traits = self.model.backbone_traits
        else:
            self.model, self.tokenizer = load(self.run_dir, device=device)
            self.kind, self.task, self.traits = "next-token", None, traits_of(self.model)
        self.model.eval()
        config = self.model.config.backbone if self.task is not None else self.model.config.to_dict()
        self.context = int(config.get("block_size", 512))

    @property
    def labels(self) -> list[str]:
        return list(self.task.labels) if self.task is not None else []

    def display(self, ids: list[int]) -> list[str]:
        return [self.tokenizer.decode([i]) or self.tokenizer.id_to_token(i) or "" for i in ids]

    def check_length(self, n: int) -> None:
        if n > self.context:
            raise ConfigError(f"the text is {n} tokens, longer than the model's context of {self.context}",
                              "shorten the text (explanations never truncate what they explain)")

    def subject(self, text: str, target: str | None = None) -> Subject:
        if self.kind == "classify":
            return self._class_subject(text, target)
        if self.kind == "ner":
            return self._tag_subject(text, target)
        return self._next_token_subject(text, target)

    # ------------------------------------------------------------------ per kind
    def _class_subject(self, text: str, target: str | None) -> Subject:
        ids, types = encode_text_input(self.tokenizer, self.traits, text, None, UNLIMITED)
        self.check_length(len(ids))
        special = [i in self._special_ids() for i in ids]
        extra = self._segments(types)

        def probabilities(batch: torch.Tensor) -> torch.Tensor:  # (B, T') -> (B, labels)
            ones = torch.ones_like(batch)
            return torch.softmax(self.model(batch, attention_mask=ones, **extra(batch)).float(), dim=-1)

        label = self._label(target, lambda: int(probabilities(self._ids(ids)).argmax(-1)))
        focus = {"pooler": [0], "last": [len(ids) - 1], "mean": list(range(len(ids)))}[self.model.pooling]
        return self._make(ids, special, lambda b: probabilities(b)[:, label], focus,
                          {"kind": "class", "label": self.labels[label]})

    def _tag_subject(self, text: str, target: str | None) -> Subject:
        words = split_text(text)
        pieces = self.task.word_pieces(words)
        budget = sum(len(p) for p in pieces) + (2 if self.traits.segment_ids else 1)
        self.check_length(budget)
        ids, types, starts = self.task.align(words) if budget <= self.task.max_input_tokens() else \
            self._aligned(pieces)
        special = [i in self._special_ids() for i in ids]
        extra = self._segments(types)

        def probabilities(batch: torch.Tensor) -> torch.Tensor:  # (B, T') -> (B, T', tags)
            ones = torch.ones_like(batch)
            return torch.softmax(self.model(batch, attention_mask=ones, **extra(batch)).float(), dim=-1)

        predicted = probabilities(self._ids(ids))[0, starts].argmax(-1).tolist()
        word, label = self._word_and_tag(target, words, predicted)
        position = starts[word]
        return self._make(ids, special, lambda b: probabilities(b)[:, position, label], [position],
                          {"kind": "tag", "label": self.labels[label], "word": words[word], "word_index": word,
                           "position": position})

    def _next_token_subject(self, text: str, target: str | None) -> Subject:
        ids = self.tokenizer.encode(text)
        if not ids:
            raise ConfigError("the text is empty", "pass some text to explain")
        self.check_length(len(ids))
        decoder_start = None
        if self.traits.structure == "encoder-decoder":
            ids = ids + [self.tokenizer.eos_id]
            decoder_start = torch.tensor([[self.model.config.decoder_start_token_id]])

        def probabilities(batch: torch.Tensor) -> torch.Tensor:  # (B, T') -> (B, vocab)
            if decoder_start is None:
                return torch.softmax(self.model(batch)[:, -1].float(), dim=-1)
            start = decoder_start.expand(batch.shape[0], 1)
            return torch.softmax(self.model(batch, decoder_input_ids=start)[:, -1].float(), dim=-1)

        token = self._token(target, lambda: int(probabilities(self._ids(ids)).argmax(-1)))
        special = [i in self._special_ids() for i in ids]
        stack = "encoder.self" if decoder_start is not None else "self"
        return self._make(ids, special, lambda b: probabilities(b)[:, token], [len(ids) - 1],
                          {"kind": "next-token", "token": self.tokenizer.decode([token]), "token_id": token},
                          stack=stack)

    # ------------------------------------------------------------------ pieces
    def _make(self, ids, special, score, focus, target, stack: str | None = None) -> Subject:
        baseline = [i if s else self.tokenizer.pad_id for i, s in zip(ids, special)]
        stack = stack or ("encoder.self" if self.traits.structure == "encoder-decoder" else "self")
        return Subject(self.model, self._ids(ids), self.display(ids), score, self._ids(baseline),
                       token_embedding(self.model), focus, special, stack, target)

    def _ids(self, ids: list[int]) -> torch.Tensor:
        return torch.tensor([ids], device=next(self.model.parameters()).device)

    def _special_ids(self) -> set[int]:
        names = {"[CLS]", "[SEP]", "[PAD]"}
        found = {self.tokenizer.token_to_id(n) for n in names} | {self.tokenizer.eos_id}
        return {i for i in found if i is not None}

    def _segments(self, types: list[int]):
        if not self.traits.segment_ids:
            return lambda batch: {}
        return lambda batch: {"token_type_ids": torch.zeros_like(batch)}

    def _aligned(self, pieces: list[list[int]]):
        ids, starts = [], []
        for p in pieces:
            starts.append(len(ids) + (1 if self.traits.segment_ids else 0))
            ids += p
        if self.traits.segment_ids:
            ids = [self.tokenizer.token_to_id("[CLS]")] + ids + [self.tokenizer.token_to_id("[SEP]")]
        else:
            ids = ids + [self.tokenizer.eos_id]
        return ids, [0] * len(ids), starts

    def _label(self, target: str | None, predicted) -> int:
        if target is None:
            return predicted()
        if target not in self.labels:
            raise ConfigError(f"--target {target!r} is not a label of this run (its labels: "
                              f"{', '.join(self.labels)})", "pass one of its labels, or leave --target out")
        return self.labels.index(target)

    def _word_and_tag(self, target: str | None, words: list[str], predicted: list[int]) -> tuple[int, int]:
        """(word index, tag index): `TAG` = the first word predicted TAG (else word 0), `TAG@N` = word N."""
        if target is None:
            word = next((i for i, t in enumerate(predicted) if self.labels[t] != "O"), 0)
            return word, predicted[word]
        tag, _, at = target.partition("@")
        label = self._label(tag, lambda: 0)
        if at:
            if not at.isdigit() or int(at) >= len(words):
                raise ConfigError(f"--target {target!r}: word {at} is not one of the text's {len(words)} words",
                                  "write TAG@N with N from 0")
            return int(at), label
        return next((i for i, t in enumerate(predicted) if t == label), 0), label

    def _token(self, target: str | None, predicted) -> int:
        if target is None:
            return predicted()
        ids = self.tokenizer.encode(target)
        if len(ids) != 1:
            raise ConfigError(f"--target {target!r} is not one token of this run's vocabulary ({len(ids)} tokens); "
                              f"{self.run_dir} is a language model, so --target names the next token",
                              "pass a single token, or a fine-tuned classifier run to explain a label")
        return ids[0]
