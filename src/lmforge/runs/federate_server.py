"""The server side of `lmforge federate`: a Flower server in this process and one client process per shard.

The client manager waits until every client has joined before the first round (a client process that
exits first stops the run with its last log line); from then on each round samples `fraction_fit` of the
clients still connected, so a client that dies mid-round is one failure in that round's aggregation
(Flower's `accept_failures`) and is not waited for again.
"""
from __future__ import annotations

import logging
import os
import random
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch

from lmforge.errors import TrainingError

JOIN_TIMEOUT_SECONDS = 900.0


def trainable_names(model: torch.nn.Module) -> list[str]:
    """The parameters that train, in a fixed order: what a client receives and sends back."""
    return [name for name, p in model.named_parameters() if p.requires_grad]


def set_trainable(model: torch.nn.Module, names: list[str], arrays: list[np.ndarray]) -> None:
    params = dict(model.named_parameters())
    with torch.no_grad():
        for name, array in zip(names, arrays):
            params[name].copy_(torch.from_numpy(np.asarray(array)))


def get_trainable(model: torch.nn.Module, names: list[str]) -> list[np.ndarray]:
    params = dict(model.named_parameters())
    return [params[name].detach().cpu().numpy().copy() for name in names]


class ClientProcesses:
    """The client processes of one federation, each logging to RUN/clients/<i>.log."""

    def __init__(self, run_dir: Path, clients: int, address: str):
        self.run_dir, self.reported = run_dir, set()
        env = {**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1")}
        self.procs = []
        for i in range(clients):
            log = open(run_dir / "clients" / f"{i}.log", "w")
            cmd = [sys.executable, "-m", "lmforge.runs.federate_client", str(run_dir / "clients" / "spec.json"),
                   str(i), address]
            self.procs.append(subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env))
            log.close()

    def check_alive(self) -> None:
        """Stop (before the first round) when a client process has exited: its log says why."""
        for i, proc in enumerate(self.procs):
            if proc.poll() is not None:
                tail = (self.run_dir / "clients" / f"{i}.log").read_text(errors="replace").strip().splitlines()
                raise TrainingError(f"federated client {i} exited (status {proc.returncode}) before the first round: "
                                    f"{tail[-1] if tail else 'no output'}",
                                    f"see {self.run_dir / 'clients' / f'{i}.log'}")

    def newly_ended(self) -> list[tuple[int, int]]:
        """(client, exit status) of the processes that have ended since the last call."""
        ended = [(i, p.returncode) for i, p in enumerate(self.procs) if p.poll() is not None and i not in self.reported]
        self.reported.update(i for i, _ in ended)
        return ended

    def stop(self, *, wait: float = 30.0) -> None:
        """Let the clients leave on the server's goodbye; end those still running after `wait` seconds."""
        for proc in self.procs:
            try:
                proc.wait(timeout=wait)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


def client_manager(processes: ClientProcesses, expected: int, seed: int, on_joined):
    """A Flower client manager that waits for every client before the first round and afterwards samples
    among the connected ones."""
    from flwr.server.client_manager import SimpleClientManager  # Flower takes seconds to import

    class FederationClientManager(SimpleClientManager):
        def __init__(self):
            super().__init__()
            self.rng, self.joined = random.Random(seed), False

        def wait_for_everyone(self) -> None:
            if self.joined:
                return
            deadline = time.monotonic() + JOIN_TIMEOUT_SECONDS
            while not self.wait_for(expected, timeout=1):
                processes.check_alive()
                if time.monotonic() > deadline:
                    raise TrainingError(f"only {self.num_available()} of {expected} clients joined in "
                                        f"{JOIN_TIMEOUT_SECONDS:g} s", "see the logs in RUN/clients/")
            self.joined = True
            on_joined()

        def sample(self, num_clients, min_num_clients=None, criterion=None):
            proxies = self.all()
            picked = self.rng.sample(sorted(proxies), min(num_clients, len(proxies)))
            return [proxies[cid] for cid in picked]

    return FederationClientManager()


class RoundRecorder:
    """Mixed into a Flower strategy: each round's training outcome, and the global model kept up to date."""

    def setup(self, model, names, processes: ClientProcesses, log):
        self.model, self.names, self.processes, self.log = model, names, processes, log
        self.records: dict[int, dict] = {}
        self.epsilons: dict[int, float] = {}  # with DP clients: the latest epsilon each client reported

    def configure_fit(self, server_round, parameters, client_manager):
        client_manager.wait_for_everyone()  # before the strategy counts the clients to sample
        return super().configure_fit(server_round, parameters, client_manager)

    def aggregate_fit(self, server_round, results, failures):
        from flwr.common import parameters_to_ndarrays

        aggregated, metrics = super().aggregate_fit(server_round, results, failures)
        if aggregated is not None:
            set_trainable(self.model, self.names, parameters_to_ndarrays(aggregated))
        examples = sum(res.num_examples for _, res in results)
        loss = sum(res.metrics["train_loss"] * res.num_examples for _, res in results) / max(examples, 1)
        ended = self.processes.newly_ended()
        record = {"round": server_round, "clients_trained": sorted(int(r.metrics["client"]) for _, r in results),
                  "failures": len(failures), "failed_clients": [i for i, _ in ended],
                  "train_loss": loss if results else None}
        self.epsilons.update({int(r.metrics["client"]): float(r.metrics["epsilon"]) for _, r in results
                              if "epsilon" in r.metrics})
        if self.epsilons:
            # A client's privacy loss is its own examples'; the federation's guarantee is the weakest client's.
            record["epsilon"] = max(self.epsilons.values())
            record["client_epsilon"] = dict(sorted(self.epsilons.items()))
        self.records[server_round] = record
        if failures:
            who = ", ".join(f"client {i} exited with status {code}" for i, code in ended) or "no process exit seen"
            self.log(f"round {server_round}: {len(failures)} of {len(failures) + len(results)} clients failed ({who}); "
                     f"the round goes on with the other {len(results)}")
        return aggregated, metrics


def build_strategy(name: str, *, fraction_fit: float, proximal_mu: float, initial: list[np.ndarray], evaluate_fn):
    from flwr.common import ndarrays_to_parameters
    from flwr.server.strategy import FedAvg, FedProx

    base = FedProx if name == "fedprox" else FedAvg
    strategy_class = type(f"Recorded{base.__name__}", (RoundRecorder, base), {})
    options = dict(on_fit_config_fn=lambda server_round: {"server_round": server_round}, fraction_fit=fraction_fit,
                   fraction_evaluate=0.0, min_fit_clients=1, min_evaluate_clients=0, min_available_clients=1,
                   evaluate_fn=evaluate_fn, initial_parameters=ndarrays_to_parameters(initial))
    if base is FedProx:
        options["proximal_mu"] = proximal_mu
    return strategy_class(**options)


def free_address() -> str:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return f"127.0.0.1:{s.getsockname()[1]}"


def run_federation(job, state: dict, fed, run_dir: Path, run) -> list[dict]:
    """Serve `fed.rounds` rounds to `fed.clients` client processes; returns one record per round (round 0: the
    starting model), each with the global model's validation figures. The job's model ends as the final one."""
    import flwr

    model, names = job.model, trainable_names(job.model)
    task, valid = state["task"], state["examples"].valid
    evaluations: dict[int, dict] = {}
    say = lambda line: print(line, flush=True)  # noqa: E731

    def evaluate(server_round, arrays, config):
        set_trainable(model, names, arrays)
        model.eval()
        with torch.no_grad():
            figures = task.evaluate(model, valid, state["valid_features"], batch_size=state["eval_batch"])
        evaluations[server_round] = {k: v for k, v in figures.items() if isinstance(v, (int, float))}
        shown = f", {task.main_metric} {figures.get(task.main_metric, float('nan')):.4f}" \
            if task.main_metric in figures else ""
        say(f"round {server_round}: val loss {figures['val_loss']:.4f}{shown}")
        return float(figures["val_loss"]), {}

    logging.getLogger("flwr").setLevel(logging.ERROR)  # its per-round INFO lines; the run prints its own
    address = free_address()
    processes = ClientProcesses(run_dir, fed.clients, address)
    strategy = build_strategy(fed.strategy, fraction_fit=fed.fraction_fit, proximal_mu=fed.proximal_mu,
                              initial=get_trainable(model, names), evaluate_fn=evaluate)
    strategy.setup(model, names, processes, say)
    manager = client_manager(processes, fed.clients, fed.seed, on_joined=run.started)
    try:
        flwr.server.start_server(server_address=address, config=flwr.server.ServerConfig(num_rounds=fed.rounds),
                                 strategy=strategy, client_manager=manager)
    except BaseException:
        processes.stop(wait=0.0)
        raise
    processes.stop()
    return [{"round": r, **strategy.records.get(r, {}), **evaluations[r]} for r in sorted(evaluations)]
