"""`lmforge federate`: FedAvg against centralised training on the same batch, the Dirichlet split's
properties, a client process killed mid-round, and the one-line errors. Every federation here is a real
Flower server with client processes on localhost."""
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

import lmforge.api as lf
from lmforge.cli import main
from lmforge.config import StartConfig, TaskDataConfig, TrainConfig
from lmforge.data.partition import partition_indices
from lmforge.runs.finetune import build_job

pytest.importorskip("flwr")

WORDS = "good great bad awful the movie plot was and a of it".split()
SRC = Path(__file__).resolve().parents[2] / "src"


def _lines(n: int, seed: int) -> list[str]:
    g = np.random.default_rng(seed)
    return [f"{i % 2} " + " ".join(WORDS[int(j)] for j in g.integers(0, len(WORDS), 6)) for i in range(n)]


def _data(tmp_path: Path, n: int) -> TaskDataConfig:
    (tmp_path / "train.txt").write_text("\n".join(_lines(n, 0)) + "\n")
    (tmp_path / "dev.txt").write_text("\n".join(_lines(8, 1)) + "\n")
    return TaskDataConfig(train=str(tmp_path / "train.txt"), valid=str(tmp_path / "dev.txt"), format="label_text",
                          max_length=12)


START = StartConfig(init="bert-debug", vocab_size=120, n_layer=1, n_embd=32, n_head=4, block_size=16, dropout=0.0,
                    classifier_dropout=0.0)


def _sgd(batch_size: int, steps: int) -> TrainConfig:
    # Plain SGD without clipping or decay: one step is linear in the gradient, so the size-weighted mean of the
    # clients' steps on their halves is the step on the whole batch.
    return TrainConfig(batch_size=batch_size, max_steps=steps, optimizer="sgd", lr=0.5, warmup_steps=0,
                       schedule="constant", weight_decay=0.0, grad_clip=None, precision="fp32", progress=False,
                       eval_interval=steps, checkpoint_interval=steps)


# ---------------------------------------------------------------- FedAvg against centralised training
@pytest.mark.parametrize("clients", [1, 2])
def test_fedavg_of_one_local_step_equals_centralised_training_on_the_same_batch(tmp_path, clients):
    n = 16
    data = _data(tmp_path, n)
    # Each client's batch is its whole shard; the centralised batch is the whole training set.
    fed = lf.federate("classify", data=data, model=START, out=tmp_path / "fed", train=_sgd(n // clients, 1),
                      federation=lf.FederateConfig(clients=clients, rounds=1, local_steps=1))
    central = lf.finetune("classify", data=data, model=START, out=tmp_path / "central", train=_sgd(n, 1))
    assert fed["rounds_completed"] == 1 and central["steps"] == 1
    assert fed["client_examples"] == [n // clients] * clients
    federated = load_file(tmp_path / "fed" / "model.safetensors")
    centralised = load_file(tmp_path / "central" / "model.safetensors")
    assert federated.keys() == centralised.keys()
    for key in centralised:
        torch.testing.assert_close(federated[key], centralised[key], rtol=1e-5, atol=1e-6, msg=key)
    # The step moved the model, so the equality above is not that of two untrained models.
    job, _ = build_job("classify", data=data, model=START, train=_sgd(n, 1))
    start = job.model.state_dict()
    assert max((federated[k] - start[k]).abs().max().item() for k in federated) > 1e-3
    record = fed["rounds"][-1]
    assert record["clients_trained"] == list(range(clients)) and record["failures"] == 0
    assert (tmp_path / "fed" / "plots" / "rounds.png").is_file()
    assert lf.predict(tmp_path / "fed", str(tmp_path / "dev.txt"), output=str(tmp_path / "p.jsonl")) == 8


# ---------------------------------------------------------------- DP-SGD on the clients
def test_private_clients_spend_their_budget_over_all_rounds_as_opacus_accounts_it(tmp_path):
    from opacus.accountants import PRVAccountant
    from opacus.accountants.utils import get_noise_multiplier

    n, clients, rounds, local_steps, batch = 32, 2, 2, 3, 4
    data = _data(tmp_path, n)
    train = TrainConfig(batch_size=batch, lr=1e-2, precision="fp32", progress=False)
    summary = lf.federate("classify", data=data, model=START, out=tmp_path / "fed", train=train,
                          federation=lf.FederateConfig(clients=clients, rounds=rounds, local_steps=local_steps),
                          privacy=lf.PrivacyConfig(epsilon=3.0))
    # The independent reference: Opacus's own noise search and accountant for one client's sampling rate,
    # over every step it takes in the federation.
    shard, delta = n // clients, 1 / (10 * (n // clients))
    rate = 1 / -(-shard // batch)
    sigma = get_noise_multiplier(target_epsilon=3.0, target_delta=delta, sample_rate=rate,
                                 steps=rounds * local_steps, accountant="prv")
    accountant = PRVAccountant()
    accountant.history = [(sigma, rate, rounds * local_steps)]
    expected = accountant.get_epsilon(delta)
    assert summary["epsilon"] == pytest.approx(expected, rel=0.01)
    assert summary["epsilon"] == pytest.approx(3.0, rel=0.02)
    assert set(summary["client_epsilon"]) == {0, 1}
    # Round 1 spent half the steps: the accountant's history carried into round 2's trainer.
    first, second = summary["rounds"][1]["epsilon"], summary["rounds"][2]["epsilon"]
    half = PRVAccountant()
    half.history = [(sigma, rate, local_steps)]
    assert first == pytest.approx(half.get_epsilon(delta), rel=0.01) and second > first * 1.2
    recipe = (tmp_path / "fed" / "config.yaml").read_text()
    assert "privacy:" in recipe and "epsilon: 3.0" in recipe


# ---------------------------------------------------------------- the Dirichlet split
def test_dirichlet_partition_is_a_disjoint_cover_with_shares_skewed_by_alpha():
    labels = [i % 3 for i in range(3000)]
    for alpha in (0.1, 0.5, 100.0):
        shards = partition_indices(labels, 10, how="dirichlet", alpha=alpha, seed=1)
        flat = sorted(i for s in shards for i in s)
        assert flat == list(range(3000)) and all(shards)
    assert partition_indices(labels, 10, how="dirichlet", alpha=0.5, seed=4) == \
        partition_indices(labels, 10, how="dirichlet", alpha=0.5, seed=4)

    def largest_class_share(alpha: float, seed: int) -> float:
        shards = partition_indices(labels, 10, how="dirichlet", alpha=alpha, seed=seed)
        return float(np.mean([np.bincount([labels[i] for i in s], minlength=3).max() / len(s) for s in shards]))

    # A symmetric Dirichlet's expected share is 1/K for every client; its spread grows as alpha falls.
    # E[max share] over 3 classes: about 1/3 for a near-IID alpha, near 1 when each client holds about one class.
    skewed = np.mean([largest_class_share(0.1, s) for s in range(5)])
    near_iid = np.mean([largest_class_share(100.0, s) for s in range(5)])
    assert skewed > 0.8 and near_iid < 0.45, (skewed, near_iid)
    shares = np.zeros(10)
    for seed in range(200):
        shards = partition_indices(labels, 10, how="dirichlet", alpha=0.5, seed=seed)
        shares += [sum(1 for i in s if labels[i] == 0) / 1000 for s in shards]
    np.testing.assert_allclose(shares / 200, np.full(10, 0.1), atol=0.03)
    iid = partition_indices(labels, 7, how="iid", seed=0)
    assert sorted(i for s in iid for i in s) == list(range(3000)) and {len(s) for s in iid} <= {428, 429}


# ---------------------------------------------------------------- a client dies
def test_a_client_killed_mid_round_leaves_the_federation_going(tmp_path):
    data = _data(tmp_path, 60)
    out = tmp_path / "run"
    cmd = [sys.executable, "-m", "lmforge.cli", "federate", "--task", "classify", "--data.train", data.train,
           "--data.valid", data.valid, "--data.format", "label_text", "--data.max_length", "12",
           "--model.init", "bert-debug", "--model.vocab_size", "120", "--model.n_layer", "1", "--model.n_embd", "32",
           "--model.n_head", "4", "--model.block_size", "16", "--train.batch_size", "8", "--clients", "3",
           "--rounds", "2", "--local_steps", "400", "--out", str(out)]
    env = {**os.environ, "PYTHONPATH": str(SRC), "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    log, deadline, killed = out / "clients" / "1.log", time.monotonic() + 240, None
    while time.monotonic() < deadline and killed is None and proc.poll() is None:
        line = next((x for x in log.read_text().splitlines() if "round 1: training" in x), None) \
            if log.is_file() else None
        if line:
            killed = int(line.split("(pid ")[1].split(")")[0])
            os.kill(killed, signal.SIGKILL)
        time.sleep(0.05)
    output = proc.communicate(timeout=300)[0]
    assert killed is not None and proc.returncode == 0, output
    assert "round 1: sent" not in log.read_text()  # it died during its local training
    assert "round 1: 1 of 3 clients failed (client 1 exited with status -9); the round goes on with the other 2" \
        in output, output
    summary = json.loads((out / "summary.json").read_text())
    assert summary["rounds_completed"] == 2 and summary["failed_clients"] == [1]
    first, second = summary["rounds"][1], summary["rounds"][2]
    assert first["clients_trained"] == [0, 2] and first["failures"] == 1
    assert second["clients_trained"] == [0, 2] and second["failures"] == 0
    assert (out / "model.safetensors").is_file()


# ---------------------------------------------------------------- bad input
@pytest.mark.parametrize("extra,message", [
    (["--clients", "61"], "61 clients but only 60 training examples"),
    (["--strategy", "fedsgd"], "unknown strategy 'fedsgd'"),
    (["--partition", "dirichlet", "--alpha", "0"], "alpha must be positive"),
    (["--fraction_fit", "0"], "fraction_fit must be in (0, 1]"),
    (["--clients", "4", "--privacy.epsilon", "8", "--privacy.delta", "0.1"], "smallest client's N = 15 examples"),
    (["--privacy.epsilon", "-1"], "privacy.epsilon must be a positive number"),
])
def test_bad_federation_input_is_one_error_line_with_exit_2(tmp_path, capsys, extra, message):
    data = _data(tmp_path, 60)
    with pytest.raises(SystemExit) as exit_info:
        main(["federate", "--task", "classify", "--data.train", data.train, "--data.valid", data.valid,
              "--data.format", "label_text", "--model.init", "bert-debug", "--model.vocab_size", "120",
              "--out", str(tmp_path / "run"), *extra])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and len(err.splitlines()) == 1 and message in err, err
    assert not (tmp_path / "run").exists()
