"""One client of `lmforge federate`, a process of its own: `python -m lmforge.runs.federate_client SPEC CLIENT ADDRESS`.

It builds the recipe's model and its own shard of the training examples (SPEC, written by the server), joins
the Flower server at ADDRESS, and for every round it is sampled in: takes the global trainable parameters,
trains them for the spec's local steps with lmforge's trainer, and sends them back with its shard size.
FedProx rounds (the server sends `proximal_mu`) add mu/2 |w - w_global|^2 to the local loss.
With privacy options each client trains with DP-SGD on its own shard (record-level privacy for its examples):
one budget covers all its rounds, so the noise is chosen for rounds x local steps, and the accountant's
history and the Poisson sampler's cursor carry from one round's trainer to the next.
"""
from __future__ import annotations

import json
import os
import shutil
import sys
import tempfile
import time

import flwr
import torch

from lmforge.config import AugmentConfig, BalanceConfig, DecodeConfig, MethodConfig, PrivacyConfig, StartConfig, \
    TaskDataConfig, TrainConfig
from lmforge.runs.federate_server import get_trainable, set_trainable, trainable_names
from lmforge.runs.finetune import build_job
from lmforge.train.privacy import noise_for_budget
from lmforge.train.trainer import Trainer


class ProximalObjective:
    """The task's loss plus FedProx's proximal term mu/2 |w - w_global|^2 over the trainable parameters."""

    def __init__(self, objective, model: torch.nn.Module, names: list[str], mu: float):
        self.objective, self.mu = objective, mu
        params = dict(model.named_parameters())
        self.pairs = [(params[n], params[n].detach().clone()) for n in names]

    def counts(self, batch):
        # The proximal term is one unit per step, whatever the batch holds.
        return {**self.objective.counts(batch), "proximal": torch.ones((), dtype=torch.long)}

    def __call__(self, model, batch):
        distance = sum(((p - start) ** 2).sum() for p, start in self.pairs)
        return {**self.objective(model, batch), "proximal": 0.5 * self.mu * distance}


class LocalTrainer(Trainer):
    """The one trainer for a round's local steps: the server keeps the model, so no checkpoints are written."""

    def save(self):
        return None


class FederatedClient(flwr.client.NumPyClient):
    def __init__(self, index: int, spec: dict):
        self.index = index
        sections = {"data": TaskDataConfig(**spec["data"]), "model": StartConfig(**spec["model"]),
                    "method": MethodConfig(**spec["method"]), "balance": BalanceConfig(**spec["balance"]),
                    "augment": AugmentConfig(**spec["augment"]), "decode": DecodeConfig(**spec["decode"])}
        self.train = TrainConfig(**spec["train"])
        self.shard = spec["shards"][index]
        self.job, _ = build_job(spec["task"], train=self.train, shard=self.shard, **sections)
        self.names = trainable_names(self.job.model)
        privacy = spec.get("privacy")
        self.privacy = noise_for_budget(PrivacyConfig(**privacy), len(self.shard), self.train.batch_size,
                                        spec["privacy_steps"]) if privacy else None
        self.private_state: tuple[dict, dict] | None = None  # accountant history, sampler cursor
        self.work = tempfile.mkdtemp(prefix=f"lmforge-client{index}-")
        say(f"client {index} (pid {os.getpid()}): {len(self.shard)} examples, {len(self.names)} trainable tensors")

    def get_parameters(self, config):
        return get_trainable(self.job.model, self.names)

    def fit(self, parameters, config):
        round_no = config.get("server_round", "?")
        set_trainable(self.job.model, self.names, parameters)
        mu = float(config.get("proximal_mu", 0.0))
        objective = ProximalObjective(self.job.objective, self.job.model, self.names, mu) if mu > 0 \
            else self.job.objective
        say(f"client {self.index} (pid {os.getpid()}) round {round_no}: training {self.train.max_steps} steps")
        start = time.perf_counter()
        trainer = LocalTrainer(self.job.model, self.job.loader, self.train, self.work, objective=objective,
                               privacy=self.privacy)
        if trainer.privacy is not None and self.private_state is not None:
            trainer.privacy.load_state_dict(self.private_state[0])
            trainer.loader.load_state_dict(self.private_state[1])
        loss = float(trainer.fit()["train_loss"])
        seconds = time.perf_counter() - start
        metrics = {"client": self.index, "train_loss": loss, "seconds": seconds}
        if trainer.privacy is not None:
            self.private_state = trainer.privacy.state_dict(), trainer.loader.state_dict()
            trainer.privacy.detach()
            metrics["epsilon"] = trainer.privacy.epsilon()
        spent = f", epsilon {metrics['epsilon']:.3f}" if "epsilon" in metrics else ""
        say(f"client {self.index} round {round_no}: sent (train loss {loss:.4f}, {seconds:.1f} s{spent})")
        return get_trainable(self.job.model, self.names), len(self.shard), metrics


def say(line: str) -> None:
    print(line, flush=True)


def main(argv: list[str]) -> None:
    spec_path, index, address = argv[0], int(argv[1]), argv[2]
    with open(spec_path) as f:
        spec = json.load(f)
    client = FederatedClient(index, spec)
    try:
        flwr.client.start_client(server_address=address, client=client.to_client(), insecure=True)
    finally:
        shutil.rmtree(client.work, ignore_errors=True)
    say(f"client {index}: the server closed the federation")


if __name__ == "__main__":
    main(sys.argv[1:])
