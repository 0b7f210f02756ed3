"""What every family's config shares: its dict format (`config.json`) and the checks of its values.

A family config is a dataclass deriving from `ModelConfig` that names its `family` (the "family"
key of its dict) and `display_name` (how error messages name the family). Error messages speak in
terms of the command-line options (`--model.<field>`) a user sets the fields with.
"""
from __future__ import annotations

from dataclasses import asdict, fields
from typing import ClassVar

from lmforge.errors import ConfigError


class ModelConfig:
    """Base of the family configs (which are dataclasses): `to_dict`/`from_dict` and value checks."""

    family: ClassVar[str]
    display_name: ClassVar[str]

    @property
    def variant(self) -> str:
        """What a results table calls the model: its family, or a finer kind within it (an RNN's cell)."""
        return self.family

    def to_dict(self) -> dict:
        return {"family": self.family, **asdict(self)}

    @classmethod
    def from_dict(cls, d: dict):
        """The config of dict `d` (as `to_dict` writes it); a key that is no field is an error."""
        known = {f.name for f in fields(cls)}
        unknown = set(d) - known - {"family"}
        if unknown:
            raise ConfigError(f"unknown {cls.display_name} config keys: {', '.join(sorted(unknown))}",
                              f"valid keys are {', '.join(sorted(known))}")
        return cls(**{k: v for k, v in d.items() if k in known})

    def require_positive(self, *names: str) -> None:
        for name in names:
            if getattr(self, name) <= 0:
                raise ConfigError(f"model.{name} must be positive, got {getattr(self, name)}",
                                  f"set --model.{name} to a positive integer")

    def require_choice(self, name: str, allowed: tuple[str, ...], *, suggest: str | None = None) -> None:
        """Field `name` must be one of `allowed`; the fix suggests `suggest`, else the first allowed value."""
        if getattr(self, name) not in allowed:
            raise ConfigError(f"model.{name} must be one of {', '.join(allowed)}, got {getattr(self, name)!r}",
                              f"pass --model.{name} {suggest or allowed[0]}")

    def require_dropout(self, *names: str) -> None:
        """Each of `names` is a probability in [0, 1), or None where the field may be unset."""
        for name in names:
            value = getattr(self, name)
            if value is not None and not 0.0 <= value < 1.0:
                raise ConfigError(f"model.{name} must be in [0, 1), got {value}", f"pass e.g. --model.{name} 0.1")

    def require_heads_divide_width(self, hint: str = "choose n_embd as a multiple of n_head") -> None:
        if self.n_embd % self.n_head:
            raise ConfigError(f"model.n_embd ({self.n_embd}) is not divisible by model.n_head ({self.n_head})",
                              hint)

    def require_layer_sizes(self, *names: str) -> None:
        """Each of `names` is None or one positive size per layer (what structured pruning leaves)."""
        for name in names:
            sizes = getattr(self, name)
            if sizes is None:
                continue
            if len(sizes) != self.n_layer or any(int(n) <= 0 for n in sizes):
                raise ConfigError(f"model.{name} must list one positive size for each of the {self.n_layer} layers, "
                                  f"got {sizes}", f"leave model.{name} unset (it is written by `lmforge prune`)")

    def layer_size(self, name: str, layer: int, default: int) -> int:
        """Layer `layer`'s entry of the per-layer list `name`, or `default` where the list is unset."""
        sizes = getattr(self, name)
        return default if sizes is None else int(sizes[layer])
