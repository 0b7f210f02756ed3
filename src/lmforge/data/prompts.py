"""Prompt templates for classification by label likelihood: named variables filled from each example.

A template is a query with `{variables}` (the example's fields, e.g. `{text}`), the words each label is
scored as (its verbaliser), an optional instruction put once at the top, the text between a query and its
answer (`target_delimiter`) and between exemplars (`example_separator`). A few-shot prompt is

    instruction + separator + exemplar_1 + separator + ... + exemplar_k + separator + query

where an exemplar is a filled query followed by the delimiter and its label's verbaliser. Templates come
from YAML files (the same fields as `PromptTemplate`) or from the built-in patterns, named `TASK/PATTERN`
(`sst2/cloze`, `trec/instruction`, ...): an instruction, a cloze and a question-answer pattern per task.
"""
from __future__ import annotations

import string
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Mapping, Sequence

import yaml

from lmforge.errors import ConfigError

SST2_LABELS = {"0": "negative", "1": "positive"}
TREC_LABELS = {"ABBR": "abbreviation", "DESC": "description", "ENTY": "entity", "HUM": "person",
               "LOC": "location", "NUM": "number"}


@dataclass
class PromptTemplate:
    """A query with `{variables}`, and the verbaliser each label is scored as (see the module docstring)."""

    name: str
    query: str
    verbalizers: dict[str, str]
    instruction: str = ""
    target_delimiter: str = " "
    example_separator: str = "\n\n"
    label_split: str | None = None  # keep a label's part before this (TREC's "DESC:manner" -> "DESC")
    variables: tuple[str, ...] = field(init=False)

    def __post_init__(self) -> None:
        self.verbalizers = {str(k): str(v) for k, v in (self.verbalizers or {}).items()}
        if len(self.verbalizers) < 2:
            raise ConfigError(f"template {self.name!r} has {len(self.verbalizers)} verbalizers",
                              "give a word for each of at least two labels under `verbalizers`")
        try:
            names = [f for _, f, _, _ in string.Formatter().parse(self.query) if f is not None]
        except ValueError as e:
            raise ConfigError(f"template {self.name!r} has a malformed query ({e})",
                              "write variables as {name}, and a literal brace as {{ or }}") from None
        if any(not n.isidentifier() for n in names):
            raise ConfigError(f"template {self.name!r} has a variable that is not a plain name",
                              "write variables as {name}")
        self.variables = tuple(dict.fromkeys(names))

    def label_of(self, example: Mapping) -> str:
        label = str(example["label"])
        return label.split(self.label_split)[0] if self.label_split else label

    def fill(self, example: Mapping) -> str:
        """The query with the example's fields in it."""
        missing = [v for v in self.variables if v not in example]
        if missing:
            raise ConfigError(f"template {self.name!r} uses {{{missing[0]}}}, which the example does not have "
                              f"(it has {', '.join(sorted(map(str, example))) or 'no fields'})",
                              "name only the example's fields in the template's query")
        return self.query.format_map({v: example[v] for v in self.variables})

    def exemplar(self, example: Mapping) -> str:
        label = self.label_of(example)
        if label not in self.verbalizers:
            raise ConfigError(f"label {label!r} has no verbalizer in template {self.name!r}",
                              f"add it under `verbalizers` (it has {', '.join(self.verbalizers)})")
        return self.fill(example) + self.target_delimiter + self.verbalizers[label]

    def prompt(self, example: Mapping, shots: Sequence[Mapping] = ()) -> str:
        """The text a label's verbaliser is scored after: instruction, exemplars, then the filled query."""
        parts = ([self.instruction] if self.instruction else []) + [self.exemplar(s) for s in shots]
        return self.example_separator.join([*parts, self.fill(example)])


def _builtin(task: str, labels: dict[str, str], patterns: dict[str, dict], **extra) -> dict[str, PromptTemplate]:
    return {f"{task}/{name}": PromptTemplate(f"{task}/{name}", verbalizers=labels, **fields_, **extra)
            for name, fields_ in patterns.items()}


BUILTIN_TEMPLATES: dict[str, PromptTemplate] = {
    **_builtin("sst2", SST2_LABELS, {
        "cloze": {"query": "Review: {text}\nSentiment:"},
        "instruction": {"instruction": "Say whether each movie review is positive or negative.",
                        "query": "Review: {text}\nAnswer:"},
        "qa": {"query": "Question: Is the following review positive or negative?\n{text}\nAnswer:"},
    }),
    **_builtin("trec", TREC_LABELS, {
        "cloze": {"query": "Question: {text}\nAnswer type:"},
        "instruction": {"instruction": "Say what each question asks for: an abbreviation, a description, an "
                                       "entity, a person, a location or a number.",
                        "query": "Question: {text}\nType:"},
        "qa": {"query": "Q: What kind of answer does \"{text}\" ask for?\nA:"},
    }, label_split=":"),
}


def load_template(name_or_path: str | Path) -> PromptTemplate:
    """A built-in template (`TASK/PATTERN`) or one read from a YAML file of `PromptTemplate`'s fields."""
    key = str(name_or_path)
    if key in BUILTIN_TEMPLATES:
        return BUILTIN_TEMPLATES[key]
    path = Path(key)
    if not path.is_file():
        raise ConfigError(f"no prompt template {key!r}",
                          f"pass a YAML file or one of: {', '.join(sorted(BUILTIN_TEMPLATES))}")
    try:
        spec = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as e:
        raise ConfigError(f"{path} is not valid YAML ({str(e).splitlines()[0]})", "fix the template file") from None
    allowed = {f.name for f in fields(PromptTemplate) if f.init}
    if not isinstance(spec, dict) or "query" not in spec or "verbalizers" not in spec:
        raise ConfigError(f"{path} does not describe a prompt template", "give at least `query` and `verbalizers`")
    unknown = sorted(set(spec) - allowed)
    if unknown:
        raise ConfigError(f"{path}: unknown template field {unknown[0]!r}", f"use only: {', '.join(sorted(allowed))}")
    return PromptTemplate(**{"name": path.stem, **spec})
