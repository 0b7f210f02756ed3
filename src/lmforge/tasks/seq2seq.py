"""Sequence to sequence: translation (BLEU, chrF) and summarization (ROUGE-1/2/L).

Inputs per family:

* T5 (encoder-decoder): the encoder reads `source <eos>` (at most `data.max_length` tokens); the
  decoder reads `<start> target` and predicts `target <eos>` (at most `data.max_target_length`
  tokens), `<start>` being the model's decoder start token (T5's pad token).
* GPT (decoder only): one sequence `prompt source <eos> target <eos>`, where `prompt` is
  `data.prompt` and the first `<eos>` separates the source from the target. Only the target and
  its closing `<eos>` carry loss; the prompt and source are context.

The loss term `lm` is summed over target tokens. Evaluation reports the validation loss per target
token, then generates for `decode.eval_examples` (200) validation examples spread evenly over the set
(all of them when there are fewer) with the `decode.*` settings (T5: greedy or beam search; GPT:
greedy or sampling) and scores them against the references: translation with BLEU and chrF
(sacrebleu; `data.target_lang` zh, or auto-detected Chinese, uses its zh tokenizer), summarization
with ROUGE-1/2/L F-measures (0..1; CJK characters count as words). `generated_examples` says how
many were scored and `samples` shows the first few.
"""
from __future__ import annotations

from abc import abstractmethod
from dataclasses import replace

import torch

from lmforge.errors import ConfigError
from lmforge.eval.generation import bleu, rouge
from lmforge.infer.generate import generate
from lmforge.infer.sampling import SamplingParams
from lmforge.infer.seq2seq import TargetRules, generate_seq2seq
from lmforge.parallel import unwrap
from lmforge.tasks.base import LengthGroupedLoader, Task, to_device
from lmforge.tasks.registry import register_task
from lmforge.train.objectives import IGNORE_INDEX, token_cross_entropy_sum


EVAL_GENERATE_LIMIT = 200
_SAMPLES = 5  # generated examples kept in the evaluation figures for a reader to look at


class Seq2SeqTask(Task):
    """What translation and summarization share: layouts, loss, generation; subclasses score."""

    head = "lm"
    reader_task = "seq2seq"

    @classmethod
    def accepts(cls, traits):
        # An encoder-decoder reads the source and writes the target; a cached decoder continues source <eos>.
        return traits.structure == "encoder-decoder" or (traits.structure == "decoder" and traits.kv_cache)

    @property
    def decoder_only(self) -> bool:
        return self.traits.structure == "decoder"

    @staticmethod
    def split_key(example: dict) -> str:
        # One source may come with several targets (Tatoeba): they must land on the same side.
        return example["source"]

    @classmethod
    def context_needed(cls, data) -> int:
        return data.max_length + data.max_target_length

    # ------------------------------------------------------------------ data
    def _limits(self) -> tuple[int, int]:
        """(most source-side tokens, most target tokens incl. eos) for this model's context."""
        block = int(self.extra.get("block_size", self.context_needed(self.data)))
        target = max(1, min(self.data.max_target_length, block // 2))
        if self.decoder_only:
            return min(self.data.max_length, block - target), target
        return min(self.data.max_length, block), target

    def _prompt_ids(self) -> list[int]:
        return self.tokenizer.encode(self.data.prompt) if self.data.prompt else []

    def encode(self, example: dict) -> dict:
        tok, eos = self.tokenizer, self.tokenizer.eos_id
        source_limit, target_limit = self._limits()
        target = example.get("target")
        target_ids = tok.encode(target)[:target_limit - 1] + [eos] if target is not None else None
        if not self.decoder_only:
            ids = tok.encode(example["source"])[:source_limit - 1] + [eos]
            feature = {"input_ids": ids, "attention_mask": [1] * len(ids)}
            if target_ids is not None:
                feature["decoder_input_ids"] = [self.decoder_start_id] + target_ids[:-1]
                feature["labels"] = target_ids
            return feature
        prompt = self._prompt_ids()
        room = source_limit - len(prompt) - 1
        if room < 0:
            raise ConfigError(f"data.prompt takes {len(prompt)} tokens, more than the {source_limit} the source "
                              "side may use", "shorten data.prompt or raise data.max_length")
        context = prompt + tok.encode(example["source"])[:room] + [eos]
        if target_ids is None:
            return {"input_ids": context}
        # labels[t] is the token after position t: the target starts after the separator eos.
        return {"input_ids": context + target_ids[:-1],
                "labels": [IGNORE_INDEX] * (len(context) - 1) + target_ids}

    def encode_all(self, examples: list[dict]) -> list[dict]:
        self._check_decode()
        return [self.encode(e) for e in examples]

    @property
    def decoder_start_id(self) -> int:
        # T5 starts decoding from its pad token; the model's own id replaces it in the loss if it differs.
        return int(self.extra.get("decoder_start_token_id", self.tokenizer.pad_id))

    def _check_decode(self) -> None:
        if self.decoder_only and self.settings.decode.num_beams > 1:
            raise ConfigError("beam search is implemented for encoder-decoder (t5) models only",
                              "pass --decode.num_beams 1 (greedy or sampling) for a gpt model")

    # ------------------------------------------------------------------ objective
    def counts(self, batch):
        return {"lm": (batch["labels"] != IGNORE_INDEX).sum()}

    def make_task_loader(self, features, batch_size, *, seed, rank=0, world_size=1):
        # Decoder-only rows keep plain shuffling: on the copy test, length-sorted batches left a small
        # GPT far behind after 100 steps (BLEU 5 vs > 50); the encoder-decoder learns as well either way.
        if self.decoder_only:
            return super().make_task_loader(features, batch_size, seed=seed, rank=rank, world_size=world_size)
        return LengthGroupedLoader(features, batch_size, self.collate, seed=seed, rank=rank, world_size=world_size)

    def __call__(self, model, batch):
        # Label smoothing shapes training only: validation loss stays the plain per-token loss.
        smoothing = self.settings.method.label_smoothing if model.training else 0.0
        if "decoder_input_ids" in batch:
            start = unwrap(model).backbone.config.decoder_start_token_id
            decoder_input_ids = batch["decoder_input_ids"]
            if start is not None and int(decoder_input_ids[0, 0]) != start:
                decoder_input_ids = decoder_input_ids.clone()
                decoder_input_ids[:, 0] = start
            if model.training and self.settings.method.decoder_input_dropout > 0:
                decoder_input_ids = self._drop_decoder_inputs(decoder_input_ids, batch["labels"])
            logits = model(batch["input_ids"], attention_mask=batch["attention_mask"],
                           decoder_input_ids=decoder_input_ids)
            return {"lm": token_cross_entropy_sum(logits, batch["labels"], smoothing)}
        if smoothing:
            return {"lm": token_cross_entropy_sum(model(batch["input_ids"]), batch["labels"], smoothing)}
        return {"lm": model(batch["input_ids"], labels=batch["labels"])}

    def _drop_decoder_inputs(self, decoder_input_ids: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """Word dropout on the decoder's inputs (B, T): each token after the start token is replaced by [UNK] (the
        padding token for a vocabulary without one, such as byte-level BPE) with probability
        `method.decoder_input_dropout` (padding, where the label is ignored, stays), so the decoder cannot lean on
        its own history alone and reads the source through cross-attention."""
        unk = self.tokenizer.unk_id if self.tokenizer.unk_id is not None else self.tokenizer.pad_id
        dropped = torch.rand(decoder_input_ids.shape, device=decoder_input_ids.device) \
            < self.settings.method.decoder_input_dropout
        dropped[:, 0] = False
        dropped &= labels != IGNORE_INDEX
        return decoder_input_ids.masked_fill(dropped, unk)

    # ------------------------------------------------------------------ generation
    def generate_ids(self, model, examples: list[dict], *, batch_size: int) -> list[list[int]]:
        """Generated target token ids (eos excluded) for each example's source, in order."""
        self._check_decode()
        features = [self.encode({"source": e["source"], "target": None}) for e in examples]
        order = sorted(range(len(features)), key=lambda i: len(features[i]["input_ids"]))
        out: list[list[int]] = [[] for _ in features]
        decode = self.settings.decode
        backbone = model.backbone
        for start in range(0, len(order), batch_size):
            rows = order[start:start + batch_size]
            chunk = [features[i] for i in rows]
            if not self.decoder_only:
                batch = to_device(self.collate(chunk), model)
                rules = TargetRules(repetition_penalty=decode.repetition_penalty,
                                    no_repeat_ngram_size=decode.no_repeat_ngram_size,
                                    min_new_tokens=decode.min_new_tokens)
                ids = generate_seq2seq(backbone, batch["input_ids"], decode.max_new_tokens,
                                       attention_mask=batch["attention_mask"], eos_id=self.tokenizer.eos_id,
                                       num_beams=decode.num_beams, length_penalty=decode.length_penalty, rules=rules)
            else:
                params = SamplingParams(temperature=decode.temperature, top_k=decode.top_k,
                                        top_p=decode.top_p or 1.0, repetition_penalty=decode.repetition_penalty,
                                        max_new_tokens=decode.max_new_tokens, seed=decode.seed + start,
                                        no_repeat_ngram_size=decode.no_repeat_ngram_size,
                                        min_new_tokens=decode.min_new_tokens)
                ids = generate(backbone, [f["input_ids"] for f in chunk], params, eos_id=self.tokenizer.eos_id)
            for i, row in zip(rows, ids):
                out[i] = list(row)
        return out

    def generate_texts(self, model, examples: list[dict], *, batch_size: int) -> list[str]:
        return [self.tokenizer.decode(ids).strip() for ids in self.generate_ids(model, examples,
                                                                                batch_size=batch_size)]

    # ------------------------------------------------------------------ evaluation and prediction
    @abstractmethod
    def score(self, predictions: list[str], references: list[str]) -> dict:
        """The task's metrics of generated texts against their references."""

    def metric_lang(self) -> str:
        """The language argument of the metric functions: zh, en or auto (detect from the references)."""
        lang = (self.data.target_lang or "auto").lower()
        if lang.startswith(("zh", "cmn", "yue")):
            return "zh"
        if lang == "auto" or lang.startswith(("ja", "ko")):
            return "auto"
        return "en"

    def evaluate(self, model, examples, features, *, batch_size):
        val_loss = self.eval_loss(model, features, batch_size) if features else float("nan")
        scored = generation_subset([e for e in examples if e.get("target") is not None],
                                   int(self.settings.decode.eval_examples or self.extra.get("eval_generate_limit", EVAL_GENERATE_LIMIT)))
        figures = {"val_loss": val_loss, "generated_examples": len(scored)}
        if scored:
            predictions = self.generate_texts(model, scored, batch_size=batch_size)
            figures.update(self.score(predictions, [e["target"] for e in scored]))
            figures["samples"] = [{"source": e["source"], "reference": e["target"], "output": p}
                                  for e, p in zip(scored[:_SAMPLES], predictions)]
        return figures

    def predict(self, model, examples, *, batch_size):
        texts = self.generate_texts(model, examples, batch_size=batch_size)
        return [{"output": t} for t in texts]

    def pipeline_examples(self, inputs, **kwargs):
        single = isinstance(inputs, str)
        texts = [inputs] if single else list(inputs)
        return [{"source": t, "target": None} for t in texts], single

    def pipeline_result(self, answer, example):
        return answer["output"]

    def with_decode(self, **settings) -> "Seq2SeqTask":
        """This task with some `decode.*` settings changed (e.g. num_beams), sharing the tokenizer."""
        changed = replace(self.settings, decode=replace(self.settings.decode, **settings))
        return type(self)(changed, self.tokenizer, self.family, labels=self.labels, extra=self.extra)


def generation_subset(examples: list[dict], limit: int) -> list[dict]:
    """At most `limit` examples spread evenly over the list, first one included: validation files
    are often sorted (Tatoeba by sentence length), so the first `limit` alone would be the easiest."""
    n = len(examples)
    if n <= limit:
        return list(examples)
    return [examples[i * n // limit] for i in range(limit)]


@register_task("translation")
class TranslationTask(Seq2SeqTask):
    name = "translate"
    main_metric = "bleu"

    def score(self, predictions, references):
        s = bleu(predictions, references, lang=self.metric_lang())
        return {"bleu": s["bleu"], "chrf": s["chrf"], "brevity_penalty": s["brevity_penalty"],
                "hyp_len": s["hyp_len"], "ref_len": s["ref_len"], "bleu_signature": s["bleu_signature"]}


@register_task("summarization")
class SummarizationTask(Seq2SeqTask):
    name = "summarize"
    main_metric = "rougeL"

    def score(self, predictions, references):
        lang = self.metric_lang()
        return rouge(predictions, references, lang="zh" if lang == "zh" else "auto")
