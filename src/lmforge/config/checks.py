"""The one-line check every config section validates its fields with."""
from lmforge.errors import ConfigError


def check(cond: bool, what: str, fix: str) -> None:
    if not cond:
        raise ConfigError(what, fix)
