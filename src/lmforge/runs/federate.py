"""Federated fine-tuning: `lmforge federate --config recipe.yaml --clients N --rounds R --out RUN`.

    the recipe's training examples -> N shards (IID or Dirichlet label skew) -> a Flower server in this
      process + N client processes on localhost -> each round: the sampled clients train the global model
      for `local_steps` steps of lmforge's trainer on their own shard -> FedAvg / FedProx averages them,
      weighted by shard size -> the server scores the global model on the validation split
    -> RUN: a normal fine-tuned run directory (model, tokenizer, config.yaml), metrics.jsonl with one record
       per round, plots/rounds.png, summary.json, clients/<i>.log

Only the trainable parameters travel (with LoRA: the adapters and the head). Every client builds the same
starting model from the recipe and its seed, and fits the labels on the whole training set, so a client
whose shard lacks a class still has the global head. A client that fails or dies during a round is left
out of that round's average and of later rounds; the run records it and goes on while a client is left.
Each round's local training starts a fresh optimizer at the recipe's learning rate without warmup or decay.
With `privacy` each client trains with DP-SGD on its own shard (see lmforge.runs.federate_client); every
round records the largest epsilon a client has spent so far, and the summary the final one.
"""
from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, replace
from pathlib import Path

from lmforge.atomic import RunDirectory, write_json_atomic, write_text_atomic
from lmforge.config import (AugmentConfig, BalanceConfig, DecodeConfig, MethodConfig, PrivacyConfig, StartConfig,
                            TaskDataConfig, TrainConfig, to_yaml)
from lmforge.data.partition import PARTITIONS, label_counts, partition_indices
from lmforge.errors import ConfigError
from lmforge.models.registry import save_model
from lmforge.runs.federate_server import run_federation
from lmforge.runs.finetune import build_job, read_train_examples
from lmforge.runs.rundir import check_out, check_run_dir
from lmforge.runs.starts import check_start
from lmforge.tasks import task_class

STRATEGIES = ("fedavg", "fedprox")


@dataclass
class FederateConfig:
    """How the federation runs: its clients, rounds, aggregation and data split."""

    clients: int = 2
    rounds: int = 3
    strategy: str = "fedavg"             # fedavg, or fedprox (local loss + mu/2 |w - w_global|^2)
    partition: str = "iid"               # iid, or dirichlet (label skew, see --alpha)
    alpha: float = 0.5                   # Dirichlet concentration: smaller is more skewed
    fraction_fit: float = 1.0            # share of the connected clients trained each round
    local_steps: int = 10                # optimizer steps each sampled client takes per round
    proximal_mu: float = 0.01            # FedProx's proximal weight mu
    seed: int = 0                        # the split and the clients' sampling

    def __post_init__(self):
        checks = [
            (self.strategy in STRATEGIES, f"unknown strategy {self.strategy!r}",
             f"pass --strategy {' or --strategy '.join(STRATEGIES)}"),
            (self.partition in PARTITIONS, f"unknown partition {self.partition!r}",
             f"pass --partition {' or --partition '.join(PARTITIONS)}"),
            (isinstance(self.clients, int) and self.clients >= 1, f"clients must be at least 1, got {self.clients}",
             "pass e.g. --clients 4"),
            (isinstance(self.rounds, int) and self.rounds >= 1, f"rounds must be at least 1, got {self.rounds}",
             "pass e.g. --rounds 5"),
            (isinstance(self.local_steps, int) and self.local_steps >= 1,
             f"local_steps must be at least 1, got {self.local_steps}", "pass e.g. --local_steps 10"),
            (0.0 < self.fraction_fit <= 1.0, f"fraction_fit must be in (0, 1], got {self.fraction_fit}",
             "pass e.g. --fraction_fit 0.5"),
            (math.isfinite(self.alpha) and self.alpha > 0, f"alpha must be positive, got {self.alpha}",
             "pass e.g. --alpha 0.5 (smaller: more skewed)"),
            (math.isfinite(self.proximal_mu) and self.proximal_mu >= 0,
             f"proximal_mu must be >= 0, got {self.proximal_mu}", "pass e.g. --proximal_mu 0.01"),
        ]
        for ok, what, fix in checks:
            if not ok:
                raise ConfigError(what, fix)


def federate(task: str, *, data: TaskDataConfig, model: StartConfig, out: str | Path,
             federation: FederateConfig | None = None, method: MethodConfig | None = None,
             train: TrainConfig | None = None, balance: BalanceConfig | None = None,
             augment: AugmentConfig | None = None, decode: DecodeConfig | None = None,
             privacy: PrivacyConfig | None = None) -> dict:
    """Federated fine-tuning of `model` for `task` into the run directory `out` (see the module docstring);
    returns the summary: the final global model's validation metrics and each round's record. `privacy` with
    an epsilon or a noise multiplier makes every client train with DP-SGD; epsilon is then each client's
    budget over all the rounds."""
    fed, train = federation or FederateConfig(), train or TrainConfig()
    sections = {"data": data, "model": model, "method": method or MethodConfig(), "balance": balance or BalanceConfig(),
                "augment": augment or AugmentConfig(), "decode": decode or DecodeConfig()}
    cls = task_class(task)
    if not data.train:
        raise ConfigError("data.train is not set", "pass --data.train FILE (or set it in the recipe)")
    if train.parallel != "ddp" or train.grad_accum != 1:
        raise ConfigError("federated clients train in one process with one micro-batch per step",
                          "drop --train.parallel and --train.grad_accum")
    check_out(out)
    check_start(model, cls)
    run_dir = check_run_dir(out, resume=False)
    examples = read_train_examples(task, data)
    shards = partition_indices(_labels(examples, fed.partition), fed.clients, how=fed.partition, alpha=fed.alpha,
                               seed=fed.seed)
    private = privacy is not None and privacy.enabled
    if private:
        _check_private_shards(privacy, shards)
    local = replace(train, max_steps=fed.local_steps, warmup_steps=0, schedule="constant", max_seconds=None,
                    eval_interval=fed.local_steps, checkpoint_interval=fed.local_steps, progress=False, threads=1,
                    early_stopping_patience=None)
    with RunDirectory(run_dir) as run:
        job, state = build_job(task, train=local, **sections)
        run_dir.mkdir(parents=True, exist_ok=True)
        (run_dir / "clients").mkdir(exist_ok=True)
        spec = {"task": task, "shards": shards, "train": asdict(local),
                **{name: asdict(section) for name, section in sections.items()},
                "privacy": asdict(privacy) if private else None, "privacy_steps": fed.rounds * fed.local_steps}
        write_json_atomic(run_dir / "clients" / "spec.json", spec)
        rounds = run_federation(job, state, fed, run_dir, run)
        recipe = {"task": task, **sections, "train": train, "federation": fed,
                  **({"privacy": privacy} if private else {})}
        write_text_atomic(run_dir / "config.yaml", to_yaml(recipe))
        job.save_tokenizer(run_dir)
        save_model(job.model, run_dir)
    return _finish(run_dir, rounds, fed, cls.main_metric, examples, shards)


def _check_private_shards(privacy: PrivacyConfig, shards: list[list[int]]) -> None:
    smallest = min(len(s) for s in shards)
    if smallest == 0:
        raise ConfigError("a client's shard is empty, and DP-SGD needs examples to sample",
                          "use fewer --clients or a larger --alpha")
    if privacy.delta is not None and privacy.delta >= 1.0 / smallest:
        raise ConfigError(f"privacy.delta ({privacy.delta:g}) must be below 1 / N = {1 / smallest:.3g} for the "
                          f"smallest client's N = {smallest:,} examples", f"pass e.g. --privacy.delta {0.1 / smallest:.1g}")


def _labels(examples: list[dict], partition: str) -> list[str]:
    if partition == "dirichlet" and any(e.get("label") is None for e in examples):
        raise ConfigError("a Dirichlet partition splits by label, and these training examples have none",
                          "use --partition iid for this task")
    return [str(e.get("label")) for e in examples]


def _finish(run_dir: Path, rounds: list[dict], fed: FederateConfig, metric: str, examples: list, shards: list) -> dict:
    with open(run_dir / "metrics.jsonl", "w") as f:
        for record in rounds:
            f.write(json.dumps(record) + "\n")
    last = rounds[-1]
    labels = [str(e.get("label")) for e in examples]
    summary = {"federation": asdict(fed), "rounds_completed": sum(1 for r in rounds if r["round"] > 0),
               "main_metric": metric, metric: last.get(metric), "val_loss": last.get("val_loss"),
               "train_examples": len(examples), "client_examples": [len(s) for s in shards],
               "client_labels": label_counts(labels, shards) if fed.partition == "dirichlet" else None,
               "failed_clients": sorted({c for r in rounds for c in r.get("failed_clients", [])}),
               **({"epsilon": rounds[-1]["epsilon"], "client_epsilon": rounds[-1]["client_epsilon"]}
                  if "epsilon" in rounds[-1] else {}),
               "rounds": rounds}
    write_json_atomic(run_dir / "summary.json", summary)
    plot_rounds(rounds, metric, run_dir / "plots" / "rounds.png")
    return summary


def plot_rounds(rounds: list[dict], metric: str, path: Path) -> None:
    """The global model's validation loss and main metric after each round."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    path.parent.mkdir(parents=True, exist_ok=True)
    xs = [r["round"] for r in rounds]
    fig, axes = plt.subplots(1, 2, figsize=(8, 3.2))
    for ax, key in zip(axes, ("val_loss", metric)):
        ax.plot(xs, [r.get(key) for r in rounds], "o-")
        ax.set_xlabel("round")
        ax.set_ylabel(key)
        ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
