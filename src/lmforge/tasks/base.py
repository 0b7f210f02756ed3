"""What every application task provides, and the batch loader they share.

A task is a training objective (the trainer calls `counts` and `__call__` on its batches, exactly
as for pretraining) that also knows how to read its data, turn examples into model inputs,
score a validation set with its own metrics, and turn model outputs back into answers:

    read -> encode (per example) -> ExampleLoader (batches) -> trainer -> evaluate / predict
"""
from __future__ import annotations

import json
from abc import ABCMeta, abstractmethod
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from lmforge.config import AugmentConfig, BalanceConfig, DecodeConfig, MethodConfig, TaskDataConfig
from lmforge.data.formats import read_examples
from lmforge.errors import DataError
from lmforge.models.registry import TRAITS, FamilyTraits, traits_of
from lmforge.train.objectives import IGNORE_INDEX, Objective



@dataclass
class TaskSettings:
    """The recipe sections a task reads."""

    data: TaskDataConfig
    balance: BalanceConfig = field(default_factory=BalanceConfig)
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    decode: DecodeConfig = field(default_factory=DecodeConfig)
    method: MethodConfig = field(default_factory=MethodConfig)


class Task(Objective, metaclass=ABCMeta):
    """Base class of the application tasks (see the module docstring); each task implements
    `encode`, `evaluate` and `predict`."""

    name = "task"
    head = "sequence"            # sequence, token, span or lm (see lmforge.models.heads)
    reader_task = "classify"     # which example schema `read_examples` produces
    served_as_route = True       # the server offers it at /v1/<name> for a fine-tuned run
    main_metric = "accuracy"     # the figure reported first; higher is better

    def __init__(self, settings: TaskSettings, tokenizer, model_family: str, *, labels: list[str] | None = None,
                 extra: dict | None = None):
        self.settings, self.data = settings, settings.data
        self.tokenizer = tokenizer
        self.family = model_family
        self.traits = traits_of(model_family)
        self.labels = list(labels or [])
        self.extra = dict(extra or {})

    @classmethod
    def accepts(cls, traits: FamilyTraits) -> bool:
        """Whether a backbone with these traits can learn this task (any gradient-trained model by default)."""
        return traits.structure != "wrapper" and not traits.fitted_by_counting

    @classmethod
    def accepted_families(cls) -> list[str]:
        return [family for family, traits in TRAITS.items() if cls.accepts(traits)]

    @staticmethod
    def split_key(example: dict) -> str:
        """What `data.val_split: hash` groups by, so related examples never straddle the split."""
        return json.dumps(example, sort_keys=True, ensure_ascii=False)

    @classmethod
    def tokenizer_texts(cls, examples: list[dict]) -> list[str]:
        """The text a fresh model's tokenizer is trained on: every string in the training examples."""
        texts = []
        for e in examples:
            for value in e.values():
                if isinstance(value, str) and value:
                    texts.append(value)
                elif isinstance(value, list) and value and all(isinstance(v, str) for v in value):
                    texts.append(" ".join(value))
        return texts

    @classmethod
    def fresh_model_settings(cls, data: TaskDataConfig, family: str) -> dict:
        """Model config values a fresh model needs for these data settings (beyond the recipe's)."""
        return {}

    @classmethod
    def check_backbone(cls, backbone, data: TaskDataConfig) -> None:
        """Adapt `backbone` to these data settings where that is possible without losing what it
        learned; ConfigError when it cannot serve them."""

    @classmethod
    def context_needed(cls, data: TaskDataConfig) -> int:
        """Context length a fresh model is built with."""
        return data.max_length

    # ------------------------------------------------------------------ data
    def read(self, path: str, *, target_path: str | None = None, require_labels: bool = True) -> list[dict]:
        d = self.data
        kwargs = dict(task=self.reader_task, format=d.format, text_field=d.text_field,
                      text_pair_field=d.text_pair_field, label_field=d.label_field, source_field=d.source_field,
                      target_field=d.target_field, columns=d.columns, header=d.header, tag_column=d.tag_column,
                      encoding=d.encoding, require_labels=require_labels)
        if target_path is not None:
            kwargs["target_path"] = target_path
        return read_examples(path, **kwargs)

    def fit_labels(self, examples: list[dict]) -> list[str]:
        """The label set a head must predict, learned from the training examples (none for generative tasks)."""
        return []

    def augment(self, examples: list[dict], paraphrase=None) -> list[dict]:
        """Training examples plus augmented copies; `paraphrase` (texts -> texts) rewrites whole texts."""
        return examples

    def resample(self, examples: list[dict], seed: int) -> list[dict]:
        return examples

    @abstractmethod
    def encode(self, example: dict) -> dict:
        """Model inputs of one example as lists of ints (one example may give several, e.g. QA windows)."""

    def encode_all(self, examples: list[dict]) -> list[dict]:
        return [self.encode(e) for e in examples]

    def collate(self, features: list[dict]) -> dict[str, torch.Tensor]:
        """Right-pad each list field to the longest in the batch (`labels` with IGNORE_INDEX)."""
        return pad_batch(features, self.tokenizer.pad_id)

    def make_task_loader(self, features: list[dict], batch_size: int, *, seed: int, rank: int = 0,
                         world_size: int = 1) -> "ExampleLoader":
        return ExampleLoader(features, batch_size, self.collate, seed=seed, rank=rank, world_size=world_size)

    # ------------------------------------------------------------------ model side
    def model_extra(self) -> dict:
        """Settings stored with the model that prediction needs again."""
        return dict(self.extra)

    @abstractmethod
    def evaluate(self, model, examples: list[dict], features: list[dict], *, batch_size: int) -> dict:
        """Validation figures: at least `val_loss`, plus the task's metrics."""

    @abstractmethod
    def predict(self, model, examples: list[dict], *, batch_size: int) -> list[dict]:
        """One JSON-able answer per example, in order."""

    def pipeline_examples(self, inputs, **kwargs) -> tuple[list[dict], bool]:
        """Examples from what a pipeline caller passes (a text or a list of texts by default)."""
        single = isinstance(inputs, str)
        texts = [inputs] if single else list(inputs)
        return [{"text": t, "label": None} for t in texts], single

    def pipeline_result(self, answer: dict, example: dict):
        return answer

    def write_plots(self, figures: dict, run_dir: Path) -> None:
        """Task-specific plots (confusion matrix, ...) from the final evaluation."""

    # ------------------------------------------------------------------ helpers
    def eval_loss(self, model, features: list[dict], batch_size: int) -> float:
        """Loss per unit over `features` (summed over loss terms), as the trainer computes it."""
        sums: dict[str, float] = {}
        units: dict[str, float] = {}
        for start in range(0, len(features), batch_size):
            batch = to_device(self.collate(features[start:start + batch_size]), model)
            counts = self.counts(batch)
            for term, value in self(model, batch).items():
                sums[term] = sums.get(term, 0.0) + float(value)
                units[term] = units.get(term, 0.0) + float(counts[term])
        return sum(sums[t] / max(units[t], 1.0) for t in sums)


def pad_batch(features: list[dict], pad_id: int) -> dict[str, torch.Tensor]:
    out: dict[str, torch.Tensor] = {}
    for key in features[0]:
        values = [f[key] for f in features]
        if isinstance(values[0], (list, tuple)):
            width = max(len(v) for v in values)
            fill = IGNORE_INDEX if key.endswith("labels") else (0 if key in ("attention_mask", "token_type_ids")
                                                               else pad_id)
            arr = np.full((len(values), width), fill, dtype=np.int64)
            for i, v in enumerate(values):
                arr[i, :len(v)] = v
            out[key] = torch.from_numpy(arr)
        else:
            out[key] = torch.tensor(values)
    return out


def to_device(batch: dict[str, torch.Tensor], model) -> dict[str, torch.Tensor]:
    device = next(model.parameters()).device
    return {k: v.to(device) for k, v in batch.items()}


class ExampleLoader:
    """Shuffled batches of encoded examples, epoch after epoch, the same for the same seed.

    The order of epoch e is a permutation drawn from (seed, e), so the loader's whole state is
    its position: a resumed run sees exactly the batches an uninterrupted one would. Every rank
    draws the same global batch and keeps its own slice of it.
    """

    def __init__(self, features: list[dict], batch_size: int, collate, *, seed: int, rank: int = 0,
                 world_size: int = 1):
        if not features:
            raise DataError("no training examples to fine-tune on", "check data.train and the reader settings")
        self.features, self.batch_size, self.collate = features, batch_size, collate
        self.seed, self.rank, self.world_size = seed, rank, world_size
        self.position = 0  # examples drawn so far (global)
        self._epoch, self._order = -1, None

    def _order_of(self, epoch: int) -> np.ndarray:
        if epoch != self._epoch:
            self._epoch = epoch
            self._order = np.random.default_rng([self.seed, epoch]).permutation(len(self.features))
        return self._order

    def next_batch(self) -> dict[str, torch.Tensor]:
        n, global_batch = len(self.features), self.batch_size * self.world_size
        picked = []
        for i in range(self.position, self.position + global_batch):
            picked.append(int(self._order_of(i // n)[i % n]))
        self.position += global_batch
        mine = picked[self.rank * self.batch_size:(self.rank + 1) * self.batch_size]
        return self.collate([self.features[i] for i in mine])

    @property
    def epoch(self) -> float:
        return self.position / len(self.features)

    @property
    def num_examples(self) -> int:
        return len(self.features)

    def batch_of(self, indices: list[int]) -> dict[str, torch.Tensor]:
        """The batch of the examples at `indices` (Poisson-sampled DP training); no rows when it is empty."""
        if not indices:
            return {k: v[:0] for k, v in self.collate(self.features[:1]).items()}
        return self.collate([self.features[i] for i in indices])

    def state_dict(self) -> dict:
        return {"position": self.position, "seed": self.seed}

    def load_state_dict(self, state: dict) -> None:
        self.position = int(state["position"])


class LengthGroupedLoader(ExampleLoader):
    """`ExampleLoader` whose batches hold examples of similar length, so little compute goes to padding
    (sentence lengths vary tenfold in NER and translation corpora). Each epoch's order is still a
    function of (seed, epoch) alone: shuffle, sort windows of 50 batches by length, cut into batches,
    shuffle the batches. An example's length is its longest token sequence (source or target)."""

    window = 50

    def _order_of(self, epoch: int) -> np.ndarray:
        if epoch != self._epoch:
            rng = np.random.default_rng([self.seed, epoch])
            order = rng.permutation(len(self.features))
            size = self.batch_size * self.world_size
            lengths = [max(len(v) for v in f.values() if isinstance(v, list)) for f in self.features]
            batches = []
            for start in range(0, len(order), size * self.window):
                part = sorted(order[start:start + size * self.window].tolist(), key=lambda i: lengths[i])
                batches += [part[j:j + size] for j in range(0, len(part), size)]
            # Only the very last batch can be short; it stays last so every other batch stays whole.
            full = [b for b in batches if len(b) == size]
            picked = [full[i] for i in rng.permutation(len(full))] + [b for b in batches if len(b) != size]
            self._epoch, self._order = epoch, np.array([i for b in picked for i in b], dtype=np.int64)
        return self._order
