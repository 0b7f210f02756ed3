"""Instruction tuning (supervised fine-tuning) of a decoder on Alpaca-style data.

Each example ``{"instruction", "input", "output"}`` becomes one single-turn exchange in the plain-text
chat template of `lmforge chat`:

    User: <instruction>(\\n<input>)\\nAssistant: <output><eos>

The prompt part (everything up to and including "Assistant:") is tokenized exactly as the chat loop
tokenizes it at inference time, so a tuned run answers correctly in `lmforge chat --model RUN`.
The loss covers only the reply tokens and the end-of-text token; prompt positions carry label -100.
Examples longer than ``data.max_length`` (or the model's context) keep the end of the prompt, as the
chat loop does for a too-long message, and at least half the length for the reply.

Reports ``val_loss`` / ``val_ppl`` (per reply token) and ROUGE-1/2/L of greedy replies against the
references on the first ``decode.eval_examples`` (default 50) validation examples; ROUGE-L is the
main figure. `predict` answers ``{"output": reply}``; replies end at end-of-text or at the next
"User:" turn.
"""
from __future__ import annotations

import contextlib
import math

import torch

from lmforge.errors import ConfigError
from lmforge.eval.generation import rouge
from lmforge.infer.chat import (
    TURN_STOP,
    fit_prompt,
    format_exchange,
    prompt_budget,
    user_message,
)
from lmforge.infer.generate import generate_completions
from lmforge.infer.sampling import SamplingParams
from lmforge.tasks.base import Task
from lmforge.tasks.registry import register_task
from lmforge.train.objectives import IGNORE_INDEX


DEFAULT_GENERATE_LIMIT = 50


@register_task("text-generation")
class ChatTask(Task):
    name = "chat"
    head = "lm"
    reader_task = "chat"
    served_as_route = False  # served by /v1/chat/completions instead

    @classmethod
    def accepts(cls, traits):
        # Replies are sampled token by token from a decoder's key/value cache.
        return traits.structure == "decoder" and traits.kv_cache
    main_metric = "rougeL"

    @staticmethod
    def split_key(example):
        # Duplicated instructions with different answers must land on the same side of the split.
        return f"{example.get('instruction', '')}\n{example.get('input', '')}"

    @classmethod
    def tokenizer_texts(cls, examples):
        # The template's own words ("User:", "Assistant:") get tokens of their own in a fresh vocabulary.
        texts = []
        for e in examples:
            prompt, reply = format_exchange(user_message(e["instruction"], e.get("input") or ""), e.get("output") or "")
            texts.append(prompt + reply)
        return texts

    # ------------------------------------------------------------------ data
    def max_tokens(self) -> int:
        """Tokens of prompt + reply + eos a training example may take."""
        return min(self.data.max_length, int(self.extra.get("block_size", self.data.max_length)))

    def prompt_ids(self, example: dict) -> list[int]:
        """The prompt the chat loop feeds the model for this example's instruction (and input)."""
        block = int(self.extra.get("block_size", self.data.max_length))
        budget = prompt_budget(block, self.settings.decode.max_new_tokens)
        return fit_prompt(self.tokenizer, [], user_message(example["instruction"], example.get("input") or ""),
                          None, budget)

    def encode(self, example):
        """{"input_ids", "labels"}: labels[t] is the target of position t (-100 on the prompt)."""
        user = user_message(example["instruction"], example.get("input") or "")
        prompt_text, reply_text = format_exchange(user, example.get("output") or "")
        prompt = self.tokenizer.encode(prompt_text)
        whole = self.tokenizer.encode(prompt_text + reply_text)
        # Byte-level BPE splits before the reply's leading space, so the prompt ids are a prefix of the whole;
        # other tokenizers may merge across the seam, and then the two parts are encoded apart.
        reply = whole[len(prompt):] if whole[:len(prompt)] == prompt else self.tokenizer.encode(reply_text)
        target = reply + [self.tokenizer.eos_id]
        limit = max(self.max_tokens(), 2)
        if len(prompt) + len(target) > limit:
            keep_prompt = min(len(prompt), max(limit - len(target), limit // 2))
            prompt = prompt[len(prompt) - keep_prompt:]
            target = target[:limit - len(prompt)]
        labels = [IGNORE_INDEX] * (len(prompt) - 1) + target
        return {"input_ids": (prompt + target)[:-1], "labels": labels}

    def encode_all(self, examples):
        # Nothing to learn from an exchange without a reply.
        return [self.encode(e) for e in examples if (e.get("output") or "").strip()]

    # ------------------------------------------------------------------ objective
    def counts(self, batch):
        return {"lm": (batch["labels"] != IGNORE_INDEX).sum()}

    def __call__(self, model, batch):
        return {"lm": model(batch["input_ids"], labels=batch["labels"])}

    # ------------------------------------------------------------------ evaluation and prediction
    def evaluate(self, model, examples, features, *, batch_size):
        val_loss = self.eval_loss(model, features, batch_size) if features else float("nan")
        figures = {"val_loss": val_loss, "val_ppl": val_loss if math.isnan(val_loss) else math.exp(min(val_loss, 50.0))}
        limit = int(self.settings.decode.eval_examples or self.extra.get("eval_generate_limit", DEFAULT_GENERATE_LIMIT))
        scored = [e for e in examples if (e.get("output") or "").strip()][:limit]
        if scored:
            replies = [a["output"] for a in self.predict(model, scored, batch_size=batch_size)]
            figures.update(rouge(replies, [e["output"].strip() for e in scored], lang="auto"))
            figures["generated"] = len(scored)
        return figures

    def sampling_params(self):
        d = self.settings.decode
        if d.num_beams != 1:
            raise ConfigError(f"decode.num_beams is {d.num_beams}, but chat replies are decoded greedily or sampled",
                              "pass --decode.num_beams 1 (and --decode.temperature > 0 to sample)")
        return SamplingParams(temperature=d.temperature, top_k=d.top_k, top_p=d.top_p or 1.0,
                              repetition_penalty=d.repetition_penalty, max_new_tokens=d.max_new_tokens,
                              stop=[TURN_STOP], seed=d.seed, no_repeat_ngram_size=d.no_repeat_ngram_size,
                              min_new_tokens=d.min_new_tokens)

    def predict(self, model, examples, *, batch_size):
        lm = getattr(model, "backbone", model)
        params = self.sampling_params()
        prompts = [self.prompt_ids(e) for e in examples]
        # Similar lengths batched together: every row of a batch decodes for as long as its longest prompt allows.
        order = sorted(range(len(prompts)), key=lambda i: len(prompts[i]))
        replies: list[str] = [""] * len(prompts)
        device = next(lm.parameters()).device
        # On CPU, autocast (validation during bf16 training) re-casts every weight at every decode step,
        # which costs more than the bf16 matmuls of a few rows save.
        with torch.autocast("cpu", enabled=False) if device.type == "cpu" else contextlib.nullcontext():
            for start in range(0, len(order), max(batch_size, 1)):
                rows = order[start:start + batch_size]
                done = generate_completions(lm, [prompts[i] for i in rows], params, eos_id=self.tokenizer.eos_id,
                                            tokenizer=self.tokenizer)
                for i, completion in zip(rows, done):
                    replies[i] = completion.text.strip()
        return [{"output": r} for r in replies]

    def pipeline_examples(self, inputs, **kwargs):
        """An instruction (str), an {"instruction", "input"} dict, or a list of either."""
        single = isinstance(inputs, (str, dict))
        items = [inputs] if single else list(inputs)
        examples = []
        for item in items:
            if isinstance(item, dict):
                examples.append({"instruction": str(item.get("instruction", "")), "input": str(item.get("input") or ""),
                                 "output": None})
            else:
                examples.append({"instruction": str(item), "input": "", "output": None})
        return examples, single

    def pipeline_result(self, answer, example):
        return answer["output"]
