"""Running the `lmforge` command in a subprocess, and the shape every user error must have:
one `error:` line on stderr, exit status 2, no traceback."""
import os
import subprocess
import sys


def lmforge(*args, cwd=None, timeout=240, threads: int = 2, launcher=None) -> subprocess.CompletedProcess:
    """`python -m lmforge.cli ARGS` (or `LAUNCHER lmforge.cli ARGS`, e.g. torchrun) with `threads` CPU threads."""
    env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
    cmd = [*(launcher or [sys.executable, "-m"]), "lmforge.cli", *map(str, args)]
    return subprocess.run(cmd, capture_output=True, text=True, cwd=cwd, env=env, timeout=timeout)


def assert_user_error(result: subprocess.CompletedProcess, *fragments: str) -> None:
    assert result.returncode == 2, (result.returncode, result.stderr[-1500:])
    lines = [line for line in result.stderr.strip().splitlines() if line.strip()]
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("error: ")
    assert "Traceback" not in result.stderr
    for fragment in fragments:
        assert fragment in lines[0], lines[0]


def with_threads(threads: int):
    """`lmforge` with a fixed CPU thread count (one per process keeps multi-process tests off each other's cores)."""

    def run(*args, **kw) -> subprocess.CompletedProcess:
        return lmforge(*args, threads=threads, **kw)

    return run


def write_corpus(tmp_path_factory, name: str, text: str):
    """A fresh folder holding `corpus.txt` with `text`, for a module's CLI runs."""
    root = tmp_path_factory.mktemp(name)
    (root / "corpus.txt").write_text(text)
    return root
