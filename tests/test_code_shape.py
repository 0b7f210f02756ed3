"""The shape of the source tree: small files, short functions, lmforge imports at module top, one-way layers.

Long functions are allowed only for argument parsers and tables, each listed below with its reason.
A lazy import of an lmforge module is allowed only where listed below with its reason.
"""
import ast
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SRC = ROOT / "src" / "lmforge"
MAX_FILE_LINES = 400
MAX_FUNCTION_LINES = 60

# "path relative to src/lmforge:qualified name" -> why it may be longer than MAX_FUNCTION_LINES.
LONG_FUNCTIONS: dict[str, str] = {}

# "path relative to src/lmforge:qualified name" -> why it imports lmforge inside its body.
LAZY_LMFORGE_IMPORTS: dict[str, str] = {}

# The only third-party (or standard-library) packages imported inside a function, each with the reason:
# every other import is at the top of its module.
LAZY_IMPORTS: dict[str, str] = {
    "matplotlib": "about a second to import; only the commands that draw plots need it",
    "uvicorn": "only `lmforge serve` runs an HTTP server",
    "pyarrow": "only Parquet sources need it (and it is large to load)",
    "datasets": "optional: Hugging Face datasets saved with save_to_disk are read only when it is installed",
    "pydoc_data": "the built-in python-docs corpus: a megabyte of text loaded only when it is asked for",
    "sacrebleu": "BLEU, computed only by translation evaluation",
    "rouge_score": "ROUGE (it imports nltk), computed only by summarization and chat evaluation",
    "nltk": "word segmentation for Chinese QA scoring, slow to import",
    "seqeval": "entity scoring (it imports scikit-learn), computed only by NER evaluation",
    "onnx": "reading ONNX graphs, needed only by `lmforge export` (slow to import: it loads protobuf)",
    "lm_eval": "optional (the `harness` extra), seconds to import; only `lmforge eval harness` needs it",
    "captum": "attribution methods, used only by `lmforge explain` (slow to import: it loads matplotlib and scipy)",
    "scipy": "rank correlation, computed only by `lmforge explain eval` (scipy.stats is slow to import)",
    "opacus": "DP-SGD, loaded only by runs with --privacy (several seconds to import)",
    "flwr": "federated learning (Flower), seconds to import; only `lmforge federate` needs it",
}


def _sources() -> list[Path]:
    return sorted(SRC.rglob("*.py"))


def _name(path: Path) -> str:
    return path.relative_to(SRC).as_posix()


def _functions(tree: ast.AST, prefix: str = ""):
    """(qualified name, node) of every function and method, nested ones included, e.g. `Class.method.inner`."""
    for node in ast.iter_child_nodes(tree):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            qualname = f"{prefix}{node.name}"
            yield qualname, node
            yield from _functions(node, f"{qualname}.")
        elif isinstance(node, ast.ClassDef):
            yield from _functions(node, f"{prefix}{node.name}.")
        else:
            yield from _functions(node, prefix)


def _is_lmforge_import(node: ast.AST) -> bool:
    if isinstance(node, ast.Import):
        return any(alias.name == "lmforge" or alias.name.startswith("lmforge.") for alias in node.names)
    if isinstance(node, ast.ImportFrom):
        # `from . import x` inside a function is as lazy as `from lmforge.models import x`.
        return node.level > 0 or node.module == "lmforge" or (node.module or "").startswith("lmforge.")
    return False


def _parsed() -> list[tuple[str, ast.AST]]:
    return [(_name(path), ast.parse(path.read_text(), filename=str(path))) for path in _sources()]


def test_source_files_are_short():
    lengths = {_name(path): len(path.read_text().splitlines()) for path in _sources()}
    too_long = {name: n for name, n in lengths.items() if n > MAX_FILE_LINES}
    if too_long:
        listed = ", ".join(f"{name} ({n})" for name, n in sorted(too_long.items(), key=lambda item: -item[1]))
        pytest.fail(f"files over {MAX_FILE_LINES} lines (split each into modules with one job): {listed}",
                    pytrace=False)


def test_functions_are_short():
    too_long = {}
    for module, tree in _parsed():
        for qualname, node in _functions(tree):
            n = node.end_lineno - node.lineno + 1
            if n > MAX_FUNCTION_LINES:
                too_long[f"{module}:{qualname}"] = n
    unexplained = {key: n for key, n in too_long.items() if key not in LONG_FUNCTIONS}
    if unexplained:
        pytest.fail(f"functions over {MAX_FUNCTION_LINES} lines (split them, or list a parser or table in "
                    "LONG_FUNCTIONS with its reason): " + ", ".join(
                        f"{key} ({n})" for key, n in sorted(unexplained.items(), key=lambda item: -item[1])),
                    pytrace=False)


def _no_stale_entries(allow_list: str, stale: list[str]) -> None:
    if stale:
        pytest.fail(f"{allow_list} entries that no longer apply (remove them): {', '.join(stale)}", pytrace=False)


def test_long_function_allow_list_has_no_stale_entries():
    lengths = {f"{module}:{qualname}": node.end_lineno - node.lineno + 1
               for module, tree in _parsed() for qualname, node in _functions(tree)}
    _no_stale_entries("LONG_FUNCTIONS", [key for key in LONG_FUNCTIONS if lengths.get(key, 0) <= MAX_FUNCTION_LINES])


def _imports_in_functions():
    """(module:qualname, import node) of every import inside a function body; a nested function's imports
    are reported under its own name, not again under the enclosing one."""
    for module, tree in _parsed():
        for qualname, function in _functions(tree):
            nested = {id(n) for inner in ast.walk(function) if inner is not function
                      and isinstance(inner, (ast.FunctionDef, ast.AsyncFunctionDef)) for n in ast.walk(inner)}
            for node in ast.walk(function):
                if id(node) not in nested and isinstance(node, (ast.Import, ast.ImportFrom)):
                    yield f"{module}:{qualname}", node


def _lazy_lmforge_imports() -> dict[str, list[int]]:
    found: dict[str, list[int]] = {}
    for place, node in _imports_in_functions():
        if _is_lmforge_import(node):
            found.setdefault(place, []).append(node.lineno)
    return found


def _check_against_allow_list(found: dict, allow_list: dict, name: str, problem: str, describe) -> None:
    """Fail on what `found` holds beyond `allow_list` (and on allow-list entries nothing needs any more)."""
    unexplained = {key: value for key, value in found.items() if key not in allow_list}
    if unexplained:
        pytest.fail(f"{problem}: " + "; ".join(describe(key, value) for key, value in sorted(unexplained.items())),
                    pytrace=False)
    _no_stale_entries(name, [key for key in allow_list if key not in found])


def test_lmforge_imports_are_at_module_top():
    _check_against_allow_list(
        _lazy_lmforge_imports(), LAZY_LMFORGE_IMPORTS, "LAZY_LMFORGE_IMPORTS",
        "lmforge imports inside functions (move them to the top of the module; a cycle means a module sits in "
        "the wrong layer)", lambda key, lines: f"{key} (line {', '.join(map(str, sorted(lines)))})")


def _lazy_imports() -> dict[str, set[str]]:
    """Top-level package -> the functions that import it inside their body (lmforge excluded)."""
    found: dict[str, set[str]] = {}
    for place, node in _imports_in_functions():
        if isinstance(node, ast.ImportFrom) and node.level:
            continue
        names = [alias.name for alias in node.names] if isinstance(node, ast.Import) else [node.module or ""]
        for top in {name.split(".")[0] for name in names} - {"lmforge"}:
            found.setdefault(top, set()).add(place)
    return found


def test_lazy_imports_are_listed_with_a_reason():
    _check_against_allow_list(
        _lazy_imports(), LAZY_IMPORTS, "LAZY_IMPORTS",
        "imports inside functions (move them to the top of the module, or list a slow optional package in "
        "LAZY_IMPORTS with its reason)", lambda top, places: f"{top} in {', '.join(sorted(places))}")


def test_import_layers_hold():
    lint_imports = Path(sys.executable).parent / "lint-imports"
    if not lint_imports.exists():
        pytest.skip(f"import-linter is not installed next to {sys.executable} (pip install import-linter)")
    result = subprocess.run([str(lint_imports), "--no-cache", "--no-logo"], cwd=ROOT, capture_output=True, text=True,
                            timeout=300)
    if result.returncode != 0:
        pytest.fail(f"lint-imports exited {result.returncode}:\n{result.stdout}\n{result.stderr}", pytrace=False)


def _strongly_connected(graph: dict[str, set[str]]) -> list[list[str]]:
    """Groups of modules that import each other in a cycle (Tarjan's algorithm, iterative)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    groups: list[list[str]] = []
    for root in sorted(graph):
        if root in index:
            continue
        work = [(root, iter(sorted(graph[root])))]
        index[root] = low[root] = len(index)
        stack.append(root)
        on_stack.add(root)
        while work:
            node, edges = work[-1]
            nxt = next(edges, None)
            if nxt is not None:
                if nxt not in index:
                    index[nxt] = low[nxt] = len(index)
                    stack.append(nxt)
                    on_stack.add(nxt)
                    work.append((nxt, iter(sorted(graph.get(nxt, ())))))
                elif nxt in on_stack:
                    low[node] = min(low[node], index[nxt])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
            if low[node] == index[node]:
                group = []
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    group.append(member)
                    if member == node:
                        break
                if len(group) > 1:
                    groups.append(sorted(group))
    return groups


def test_no_import_cycles():
    grimp = pytest.importorskip("grimp")
    graph = grimp.build_graph("lmforge", cache_dir=None)
    # A package's __init__ importing its own submodules is how packages are built, not a cycle.
    edges = {m: {i for i in graph.find_modules_directly_imported_by(m) if not m.startswith(i + ".")
                 and not i.startswith(m + ".")} for m in graph.modules}
    cycles = _strongly_connected(edges)
    if cycles:
        pytest.fail("import cycles: " + "; ".join(" <-> ".join(c) for c in cycles), pytrace=False)


def test_cycle_finder_finds_a_cycle():
    assert _strongly_connected({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert _strongly_connected({"a": {"b"}, "b": set()}) == []
