"""What the CLI adds to a parser's own error: the closest real option to a mistyped one, and the
recipes that exist when `--config` names a file that does not."""
from __future__ import annotations

import difflib
import re
from pathlib import Path

from jsonargparse import ArgumentParser

from lmforge.errors import ConfigError

# Recipes ship in the repository's configs/ folder: found from the working directory or from the source tree.
_RECIPE_ROOTS = (Path("configs"), Path(__file__).resolve().parents[3] / "configs")


def option_hint(message: str, parser: ArgumentParser | None) -> str:
    """` (did you mean --x?)` for the first unrecognized option in a parser `message`, else ''."""
    found = re.search(r"unrecognized arguments:\s*(\S+)", message, re.IGNORECASE)
    if not found or parser is None or not found.group(1).startswith("--"):
        return ""
    given = found.group(1).split("=", 1)[0]
    options = [o for o in parser._option_string_actions if o.startswith("--")]
    close = difflib.get_close_matches(given, options, n=1, cutoff=0.6)
    return f" (did you mean {close[0]}?)" if close else ""


def check_config_paths(argv: list[str]) -> None:
    """A one-line error naming a `--config` file that does not exist, and the recipes that do."""
    for i, arg in enumerate(argv):
        if arg == "--config" and i + 1 < len(argv):
            path = argv[i + 1]
        elif arg.startswith("--config="):
            path = arg.split("=", 1)[1]
        else:
            continue
        if not Path(path).expanduser().is_file():
            raise ConfigError(f"config file {path} not found", _recipes_hint(path))


def _recipes_hint(given: str) -> str:
    """The recipe nearest to `given` by name, then the others (as many as fit on a line)."""
    for root in _RECIPE_ROOTS:
        recipes = sorted(str(p) for p in root.rglob("*.yaml")) if root.is_dir() else []
        if recipes:
            names = {Path(r).name: r for r in recipes}
            close = difflib.get_close_matches(Path(given).name, list(names), n=1, cutoff=0.5)
            first = f"did you mean {names[close[0]]}? " if close else ""
            shown = ", ".join(recipes[:6]) + (f" and {len(recipes) - 6} more" if len(recipes) > 6 else "")
            return f"{first}pass an existing YAML recipe, e.g. {shown}"
    return "pass the path of an existing YAML recipe"
