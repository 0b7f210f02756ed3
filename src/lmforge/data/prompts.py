"""Prompt templates: named variables filled from each example, and the answer each exemplar shows.

A template is a query with `{variables}` (the example's fields, e.g. `{text}`), an optional instruction put
once at the top, the text between a query and its answer (`target_delimiter`) and between exemplars
(`example_separator`). A few-shot prompt is

    instruction + separator + exemplar_1 + separator + ... + exemplar_k + separator + query

where an exemplar is a filled query followed by the delimiter and its answer. Two kinds:

- `PromptTemplate` (classification by label likelihood): the answer is the label's verbaliser, the words
  each label is scored as;
- `GenerationTemplate` (summarization, translation, question answering): the answer is `answer` filled from
  the example (`{target}`, `{answer}`), and the model writes it for the query until a `stop` string.

Chain-of-thought formatting: with a `reasoning_trigger` ("Let's think step by step.") the query ends with
the trigger on a new line, the model writes its reasoning there (one line, greedy), and the answer is then
read after `answer_trigger` ("So the answer is"), as in Kojima et al. (2022). Exemplars that have a
`rationale` field show it after the trigger; the others show only the answer trigger and answer.

Templates come from YAML files (the fields of either class; `verbalizers` makes a classification template)
or from the built-in patterns named `TASK/PATTERN`: instruction, cloze, question-answer and chain-of-thought
(`cot`) patterns for sst2 and trec, and instruction, question-answer and chain-of-thought patterns for
summarize, translate and qa.
"""
from __future__ import annotations

import string
from abc import ABC, abstractmethod
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Mapping, Sequence

import yaml

from lmforge.errors import ConfigError


def _variables(name: str, text: str, what: str) -> tuple[str, ...]:
    try:
        names = [f for _, f, _, _ in string.Formatter().parse(text) if f is not None]
    except ValueError as e:
        raise ConfigError(f"template {name!r} has a malformed {what} ({e})",
                          "write variables as {name}, and a literal brace as {{ or }}") from None
    if any(not n.isidentifier() for n in names):
        raise ConfigError(f"template {name!r} has a variable that is not a plain name", "write variables as {name}")
    return tuple(dict.fromkeys(names))


def _fill(name: str, text: str, variables: Sequence[str], example: Mapping) -> str:
    missing = [v for v in variables if v not in example]
    if missing:
        raise ConfigError(f"template {name!r} uses {{{missing[0]}}}, which the example does not have "
                          f"(it has {', '.join(sorted(map(str, example))) or 'no fields'})",
                          "name only the example's fields in the template")
    return text.format_map({v: example[v] for v in variables})


@dataclass
class _Template(ABC):
    name: str
    query: str
    instruction: str = ""
    target_delimiter: str = " "
    example_separator: str = "\n\n"
    reasoning_trigger: str = ""
    answer_trigger: str = ""
    variables: tuple[str, ...] = field(init=False)

    def __post_init__(self) -> None:
        self.variables = _variables(self.name, self.query, "query")
        if self.answer_trigger and not self.reasoning_trigger:
            raise ConfigError(f"template {self.name!r} has an answer_trigger but no reasoning_trigger",
                              "add reasoning_trigger (e.g. \"Let's think step by step.\") or drop answer_trigger")

    @property
    def reasons(self) -> bool:
        return bool(self.reasoning_trigger)

    def fill(self, example: Mapping) -> str:
        """The query with the example's fields in it."""
        return _fill(self.name, self.query, self.variables, example)

    @abstractmethod
    def answer_of(self, example: Mapping) -> str:
        """The exemplar's answer: a label's verbaliser (classification) or the reference text (generation)."""

    def exemplar(self, example: Mapping) -> str:
        head = self.fill(example)
        if self.reasons:
            rationale = f" {example['rationale']}" if example.get("rationale") else ""
            head += f"\n{self.reasoning_trigger}{rationale}\n{self.answer_trigger}" if rationale else \
                f"\n{self.answer_trigger}"
        return head + self.target_delimiter + self.answer_of(example)

    def prompt(self, example: Mapping, shots: Sequence[Mapping] = ()) -> str:
        """What the model continues: instruction, exemplars, then the filled query (and, with chain-of-thought
        formatting, the reasoning trigger the model's reasoning follows)."""
        parts = ([self.instruction] if self.instruction else []) + [self.exemplar(s) for s in shots]
        query = self.fill(example) + (f"\n{self.reasoning_trigger}" if self.reasons else "")
        return self.example_separator.join([*parts, query])

    def after_reasoning(self, prompt: str, reasoning: str) -> str:
        """The text the answer follows once the model has written `reasoning` after `prompt`."""
        return f"{prompt}{reasoning}\n{self.answer_trigger}" if self.answer_trigger else prompt + reasoning


@dataclass
class PromptTemplate(_Template):
    """A query and the verbaliser each label is scored as (see the module docstring)."""

    verbalizers: dict[str, str] = field(default_factory=dict)
    label_split: str | None = None  # keep a label's part before this (TREC's "DESC:manner" -> "DESC")

    def __post_init__(self) -> None:
        super().__post_init__()
        self.verbalizers = {str(k): str(v) for k, v in (self.verbalizers or {}).items()}
        if len(self.verbalizers) < 2:
            raise ConfigError(f"template {self.name!r} has {len(self.verbalizers)} verbalizers",
                              "give a word for each of at least two labels under `verbalizers`")

    def label_of(self, example: Mapping) -> str:
        label = str(example["label"])
        return label.split(self.label_split)[0] if self.label_split else label

    def answer_of(self, example: Mapping) -> str:
        label = self.label_of(example)
        if label not in self.verbalizers:
            raise ConfigError(f"label {label!r} has no verbalizer in template {self.name!r}",
                              f"add it under `verbalizers` (it has {', '.join(self.verbalizers)})")
        return self.verbalizers[label]


@dataclass
class GenerationTemplate(_Template):
    """A query and the answer an exemplar shows (`answer`, filled from the example); the model's answer to the
    query ends at the first `stop` string."""

    answer: str = "{target}"
    stop: list[str] = field(default_factory=lambda: ["\n"])
    answer_variables: tuple[str, ...] = field(init=False)

    def __post_init__(self) -> None:
        super().__post_init__()
        self.answer_variables = _variables(self.name, self.answer, "answer")
        self.stop = [self.stop] if isinstance(self.stop, str) else list(self.stop or [])
        if not self.stop or any(not s for s in self.stop):
            raise ConfigError(f"template {self.name!r} needs non-empty stop strings", "e.g. stop: [\"\\n\"]")

    def answer_of(self, example: Mapping) -> str:
        return _fill(self.name, self.answer, self.answer_variables, example)


SST2_LABELS = {"0": "negative", "1": "positive"}
TREC_LABELS = {"ABBR": "abbreviation", "DESC": "description", "ENTY": "entity", "HUM": "person",
               "LOC": "location", "NUM": "number"}
STEP_BY_STEP = {"reasoning_trigger": "Let's think step by step.", "answer_trigger": "So the answer is"}


def _builtin(cls, task: str, patterns: dict[str, dict], **shared) -> dict:
    return {f"{task}/{name}": cls(f"{task}/{name}", **shared, **spec) for name, spec in patterns.items()}


BUILTIN_TEMPLATES: dict[str, PromptTemplate] = {
    **_builtin(PromptTemplate, "sst2", {
        "cloze": {"query": "Review: {text}\nSentiment:"},
        "instruction": {"instruction": "Say whether each movie review is positive or negative.",
                        "query": "Review: {text}\nAnswer:"},
        "qa": {"query": "Question: Is the following review positive or negative?\n{text}\nAnswer:"},
        "cot": {"query": "Review: {text}\nIs this review positive or negative?", **STEP_BY_STEP},
    }, verbalizers=SST2_LABELS),
    **_builtin(PromptTemplate, "trec", {
        "cloze": {"query": "Question: {text}\nAnswer type:"},
        "instruction": {"instruction": "Say what each question asks for: an abbreviation, a description, an "
                                       "entity, a person, a location or a number.",
                        "query": "Question: {text}\nType:"},
        "qa": {"query": "Q: What kind of answer does \"{text}\" ask for?\nA:"},
        "cot": {"query": "Question: {text}\nWhat kind of answer does it ask for?", **STEP_BY_STEP},
    }, verbalizers=TREC_LABELS, label_split=":"),
}

BUILTIN_GENERATION_TEMPLATES: dict[str, GenerationTemplate] = {
    **_builtin(GenerationTemplate, "summarize", {
        "instruction": {"instruction": "Summarize each dialogue in one sentence.",
                        "query": "Dialogue:\n{source}\nSummary:"},
        "qa": {"query": "{source}\nQuestion: What happened in this conversation?\nAnswer:"},
        "cot": {"query": "Dialogue:\n{source}\nWhat is this dialogue about?", **STEP_BY_STEP},
    }, answer="{target}"),
    **_builtin(GenerationTemplate, "translate", {
        "instruction": {"instruction": "Translate each sentence.", "query": "Source: {source}\nTranslation:"},
        "qa": {"query": "Question: How is \"{source}\" translated?\nAnswer:"},
        "cot": {"query": "Translate: {source}", **STEP_BY_STEP},
    }, answer="{target}"),
    **_builtin(GenerationTemplate, "qa", {
        "instruction": {"instruction": "Answer each question with a short span of its passage.",
                        "query": "Passage: {context}\nQuestion: {question}\nAnswer:"},
        "qa": {"query": "{context}\nQ: {question}\nA:"},
        "cot": {"query": "Passage: {context}\nQuestion: {question}", **STEP_BY_STEP},
    }, answer="{answer}"),
}

def load_template(name_or_path: str | Path, *, kind: str = "classify") -> PromptTemplate | GenerationTemplate:
    """A built-in template (`TASK/PATTERN`) or one read from a YAML file of the template's fields; `kind` is
    "classify" (a `PromptTemplate`) or "generate" (a `GenerationTemplate`)."""
    cls = PromptTemplate if kind == "classify" else GenerationTemplate
    key = str(name_or_path)
    builtins = BUILTIN_TEMPLATES if cls is PromptTemplate else BUILTIN_GENERATION_TEMPLATES
    if key in builtins:
        return builtins[key]
    path = Path(key)
    if not path.is_file():
        raise ConfigError(f"no prompt template {key!r}",
                          f"pass a YAML file or one of: {', '.join(sorted(builtins))}")
    try:
        spec = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as e:
        raise ConfigError(f"{path} is not valid YAML ({str(e).splitlines()[0]})", "fix the template file") from None
    allowed = {f.name for f in fields(cls) if f.init}
    required = ("query", "verbalizers") if cls is PromptTemplate else ("query",)
    if not isinstance(spec, dict) or any(r not in spec for r in required):
        raise ConfigError(f"{path} does not describe a prompt template", f"give at least {' and '.join(required)}")
    unknown = sorted(set(spec) - allowed)
    if unknown:
        raise ConfigError(f"{path}: unknown template field {unknown[0]!r}", f"use only: {', '.join(sorted(allowed))}")
    return cls(**{"name": path.stem, **spec})
