"""User-facing errors: every mistake a user can make maps to one of these.

Each error carries *what* went wrong and *how to fix it*; the CLI prints
``error: <what> — <fix>`` on one line and exits with status 2.
"""
from __future__ import annotations


class LmforgeError(Exception):
    """Base class for mistakes the user can fix (bad path, bad config, bad data...)."""

    def __init__(self, what: str, fix: str = ""):
        self.what = what
        self.fix = fix
        super().__init__(str(self))

    def __str__(self) -> str:
        return f"{self.what} — {self.fix}" if self.fix else self.what


class ConfigError(LmforgeError):
    """An invalid configuration value or an unknown option/preset."""


class DataError(LmforgeError):
    """Missing, empty, unreadable or malformed input data."""


class CheckpointError(LmforgeError):
    """A run directory or checkpoint that cannot be loaded or resumed."""


class TrainingError(LmforgeError):
    """Training cannot continue (for example the loss became NaN/inf)."""
