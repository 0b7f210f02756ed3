"""Training against the clock: the thread count a busy machine runs fastest on, and how a budget stop is reported."""
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from cli_run import assert_user_error, lmforge
from lmforge.config import TrainConfig
from lmforge.data.loaders import LMWindowLoader
from lmforge.models.registry import build_model
from lmforge.train.budget import TimeBudget
from lmforge.train.threads import ThreadTuner
from lmforge.train.trainer import Trainer


class BusyMachine:
    """A clock whose step time depends on the thread count in force, as on cores shared with other work."""

    def __init__(self, seconds_per_step: dict[int, float]):
        self.seconds_per_step, self.now = seconds_per_step, 0.0

    def step(self) -> None:
        self.now += self.seconds_per_step[torch.get_num_threads()]


def drive(tuner, machine, trainer, steps):
    for _ in range(steps):
        machine.step()
        trainer.state.step += 1
        tuner(trainer)


def test_thread_tuner_keeps_the_fastest_count_and_retimes_when_the_load_changes():
    before = torch.get_num_threads()
    machine = BusyMachine({2: 0.7, 1: 0.28})  # other processes busy: one thread is faster
    tuner = ThreadTuner(candidates=(2, 1), warmup_steps=3, probe_steps=4, window_steps=10, clock=lambda: machine.now)
    trainer = SimpleNamespace(state=SimpleNamespace(step=0))
    try:
        drive(tuner, machine, trainer, 30)
        assert tuner.chosen == 1 and torch.get_num_threads() == 1
        assert tuner.rates == pytest.approx({2: 1 / 0.7, 1: 1 / 0.28})
        assert tuner.describe() == "1 thread (timed: 1 thread 3.6 steps/s, 2 threads 1.4 steps/s)"
        machine.seconds_per_step = {2: 0.1, 1: 0.18}  # the other processes finished
        drive(tuner, machine, trainer, 40)
        assert tuner.chosen == 2 and torch.get_num_threads() == 2
        steady = dict(tuner.rates)
        drive(tuner, machine, trainer, 40)  # no drift: nothing is timed again
        assert tuner.rates == steady and tuner.chosen == 2
    finally:
        tuner.restore()
    assert torch.get_num_threads() == before


def test_time_budget_stop_is_reported_on_the_bar_and_in_the_summary(tmp_path, capsys):
    torch.manual_seed(0)
    model = build_model("debug", vocab_size=97, block_size=32, n_embd=32)
    tokens = np.tile(np.arange(97, dtype=np.uint16), 40)
    cfg = TrainConfig(batch_size=2, seq_len=16, max_steps=100_000, max_seconds=1.0, warmup_steps=2,
                      checkpoint_interval=100_000, eval_interval=100_000, log_interval=5, progress=True)
    trainer = Trainer(model, LMWindowLoader(tokens, 2, 16, seed=0), cfg, tmp_path, on_step=TimeBudget(1.0))
    summary = trainer.fit()
    assert summary["stop_reason"] == "max_seconds"
    assert summary["stop_message"].startswith(f"stopped at step {summary['steps']}: the 1 s time budget was reached")
    bars = capsys.readouterr()
    # The bar's total follows the steps the budget fits instead of the 100,000 configured.
    assert f"{summary['steps']}/{summary['steps']}" in bars.err and "/100000" not in bars.err.splitlines()[-1]
    assert summary["stop_message"] in bars.out


def test_a_fixed_thread_count_applies_to_training_only(tmp_path):
    before = torch.get_num_threads()
    seen = []
    torch.manual_seed(0)
    model = build_model("debug", vocab_size=97, block_size=32, n_embd=32)
    cfg = TrainConfig(batch_size=2, seq_len=16, max_steps=3, warmup_steps=1, checkpoint_interval=100,
                      eval_interval=100, progress=False, threads=1)
    tokens = np.tile(np.arange(97, dtype=np.uint16), 10)
    trainer = Trainer(model, LMWindowLoader(tokens, 2, 16, seed=0), cfg, tmp_path,
                      on_step=lambda t: seen.append(torch.get_num_threads()))
    assert trainer.fit()["threads"] == 1 and seen == [1, 1, 1]
    assert torch.get_num_threads() == before


@pytest.mark.parametrize("value", ["0", "fast", "-2"])
def test_bad_thread_counts_are_user_errors(value, tmp_path):
    assert_user_error(lmforge("pretrain", "--data", "python-docs", "--model", "debug", "--train.threads", value,
                              "--out", tmp_path / "r"), "threads")
    assert not (tmp_path / "r").exists()
