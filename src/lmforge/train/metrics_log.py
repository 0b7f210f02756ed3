"""What a training run writes as it goes: metrics.jsonl (one JSON object per logged step), the running
figures of a log line, and plots/loss.png drawn from the log."""
from __future__ import annotations

import json
import time
from pathlib import Path

from lmforge.atomic import atomic_path


class MetricsLog:
    """Appends JSON lines; on resume drops lines logged after the checkpoint being resumed from."""

    def __init__(self, path: Path, *, enabled: bool, truncate_after: int):
        self.path, self.enabled = path, enabled
        if enabled and path.exists():
            kept = [line for line in path.read_text().splitlines()
                    if line.strip() and json.loads(line).get("step", 0) <= truncate_after]
            if truncate_after == 0:
                kept = []
            path.write_text("".join(line + "\n" for line in kept))

    def write(self, record: dict) -> None:
        if self.enabled:
            with open(self.path, "a") as f:
                f.write(json.dumps(record) + "\n")


class LogWindow:
    """Train loss (mean) and tokens/s since the last log line."""

    def __init__(self):
        self._reset()

    def _reset(self) -> None:
        self.tokens, self.loss, self.steps, self.start = 0, 0.0, 0, time.perf_counter()

    def add(self, tokens: int, loss: float) -> None:
        self.tokens, self.loss, self.steps = self.tokens + tokens, self.loss + loss, self.steps + 1

    def close(self) -> tuple[float, float]:
        """(mean loss, tokens per second) of the window, which then starts again."""
        now = time.perf_counter()
        figures = self.loss / max(self.steps, 1), self.tokens / max(now - self.start, 1e-9)
        self._reset()
        return figures


def read_metrics(run_dir: str | Path) -> list[dict]:
    path = Path(run_dir) / "metrics.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()] if path.exists() else []


def plot_losses(run_dir: str | Path) -> Path | None:
    """plots/loss.png: train and validation loss against step."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt


    records = read_metrics(run_dir)
    train = [(r["step"], r["train_loss"]) for r in records if "train_loss" in r]
    val = [(r["step"], r["val_loss"]) for r in records if "val_loss" in r]
    if not train and not val:
        return None
    fig, ax = plt.subplots(figsize=(7, 4))
    if train:
        ax.plot(*zip(*train), label="train", lw=1)
    if val:
        ax.plot(*zip(*val), "o-", label="validation", ms=3)
    ax.set_xlabel("step")
    ax.set_ylabel("loss (nats/token)")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    out = Path(run_dir) / "plots" / "loss.png"
    with atomic_path(out) as tmp:
        fig.savefig(tmp, format="png", dpi=110)
    plt.close(fig)
    return out
