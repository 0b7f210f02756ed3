"""FSDP2 over 2 gloo processes against 1 process training on the same global batch, through the trainer.

The single process runs the global batch as micro-batches of the ranks' size, accumulated: each micro-batch's
arithmetic is then that of one rank, and what remains to compare is how the ranks' gradients are combined.
SGD without clipping: Adam and gradient clipping both divide out the gradients' scale, so they would hide
gradients that are summed over ranks instead of averaged; plain SGD steps are proportional to it.
"""
import json
import os

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from safetensors.torch import load_file

from conftest import free_port
from lmforge.config import TrainConfig
from lmforge.errors import ConfigError
from lmforge.models.registry import build_model
from lmforge.parallel import DistInfo, apply_activation_checkpointing
from lmforge.train.trainer import Trainer

VOCAB, SEQ, GLOBAL_BATCH, STEPS = 61, 16, 4, 50


class FixedBatches:
    """Rank `rank`'s share of a fixed sequence of global batches: each step's GLOBAL_BATCH rows are split
    over ranks, then over micro-batches, so that every layout sees the same rows per step."""

    def __init__(self, rank: int, world_size: int, micro_batch: int):
        # Eight sequences taken in turn: learnable, so that the runs compared really move their weights.
        sequences = torch.randint(0, VOCAB, (8, SEQ + 1), generator=torch.Generator().manual_seed(5))
        picks = (torch.arange(STEPS + 10)[:, None] * GLOBAL_BATCH + torch.arange(GLOBAL_BATCH)) % 8
        self.rows = sequences[picks]  # (steps, GLOBAL_BATCH, SEQ + 1)
        per_rank = GLOBAL_BATCH // world_size
        self.mine = range(rank * per_rank, (rank + 1) * per_rank)
        self.micro_batch, self.calls = micro_batch, 0

    def next_batch(self):
        micro_per_step = len(self.mine) // self.micro_batch
        step, micro = divmod(self.calls, micro_per_step)
        self.calls += 1
        start = self.mine.start + micro * self.micro_batch
        rows = self.rows[step, start:start + self.micro_batch]
        return {"input_ids": rows[:, :-1], "labels": rows[:, 1:]}

    def state_dict(self):
        return {"calls": self.calls}

    def load_state_dict(self, state):
        self.calls = state["calls"]


def train_config(**changes) -> TrainConfig:
    values = dict(optimizer="sgd", lr=0.1, momentum=0.0, grad_clip=None, warmup_steps=0, schedule="constant",
                  weight_decay=0.0, max_steps=STEPS, checkpoint_interval=STEPS, log_interval=STEPS,
                  progress=False, precision="fp32", device="cpu")
    return TrainConfig(**{**values, **changes})


def run(run_dir, rank: int, world_size: int, cfg: TrainConfig, micro_batch: int) -> list[float]:
    torch.manual_seed(0)
    model = build_model("llama-debug", vocab_size=VOCAB, block_size=SEQ, n_embd=32, intermediate_size=64)
    losses = []
    trainer = Trainer(model, FixedBatches(rank, world_size, micro_batch), cfg, run_dir,
                      dist=DistInfo(rank=rank, world_size=world_size),
                      on_step=lambda t: losses.append(t.state.last_train_loss))
    trainer.fit()
    return losses


def _worker(rank: int, world_size: int, port: int, run_dir: str, cfg: TrainConfig, micro_batch: int) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=world_size)
    try:
        losses = run(run_dir, rank, world_size, cfg, micro_batch)
        if rank == 0:
            with open(os.path.join(run_dir, "losses.json"), "w") as f:
                json.dump(losses, f)
    finally:
        dist.destroy_process_group()


def two_ranks(run_dir, cfg: TrainConfig, micro_batch: int) -> list[float]:
    run_dir.mkdir()
    mp.spawn(_worker, args=(2, free_port(), str(run_dir), cfg, micro_batch), nprocs=2, join=True)
    return json.loads((run_dir / "losses.json").read_text())


def one_process(run_dir, micro_batch: int, **changes):
    cfg = train_config(batch_size=micro_batch, global_batch_size=GLOBAL_BATCH, **changes)
    run_dir.mkdir()
    return run_dir, run(run_dir, 0, 1, cfg, micro_batch)


def assert_same_run(a, b, rel: float = 1e-6) -> None:
    (dir_a, losses_a), (dir_b, losses_b) = a, b
    assert len(losses_a) == len(losses_b) > 1
    assert losses_a[-1] < 0.95 * losses_a[0]  # it learned: the comparison is not between two idle runs
    for step, (x, y) in enumerate(zip(losses_a, losses_b)):
        assert abs(x - y) <= rel * abs(x), f"step {step + 1}: {x} vs {y}"
    weights_a, weights_b = load_file(str(dir_a / "model.safetensors")), load_file(str(dir_b / "model.safetensors"))
    assert weights_a.keys() == weights_b.keys()
    for key in weights_a:
        torch.testing.assert_close(weights_b[key], weights_a[key], rtol=rel, atol=rel, msg=key)


def test_two_rank_fsdp_equals_one_process_on_the_same_global_batch(tmp_path):
    losses = two_ranks(tmp_path / "two", train_config(parallel="fsdp", batch_size=2), 2)
    assert_same_run(one_process(tmp_path / "one", 2), (tmp_path / "two", losses))


def test_fsdp_with_accumulated_micro_batches_equals_one_process(tmp_path):
    """Micro-batches of 1 accumulated without synchronising, then reduced once, on each of 2 ranks.

    The ranks add their four gradients as (g0 + g1) + (g2 + g3), one process as ((g0 + g1) + g2) + g3: the
    rounding differs by about 1e-7 a step, which training amplifies (to 1e-4 by step 40), so the runs are
    compared over their first 15 steps."""
    cfg = train_config(parallel="fsdp", batch_size=1, global_batch_size=GLOBAL_BATCH, max_steps=15)
    losses = two_ranks(tmp_path / "two", cfg, 1)
    assert_same_run(one_process(tmp_path / "one", 1, max_steps=15), (tmp_path / "two", losses), rel=1e-5)


@pytest.mark.parametrize("mode", ["full", "selective"])
def test_activation_checkpointing_leaves_gradients_unchanged(mode):
    ids = torch.randint(0, VOCAB, (3, SEQ))
    grads = []
    for checkpointing in ("none", mode):
        torch.manual_seed(0)
        model = build_model("llama-debug", vocab_size=VOCAB, block_size=SEQ)
        apply_activation_checkpointing(model, checkpointing)
        model(ids, labels=ids).backward()
        grads.append({name: p.grad for name, p in model.named_parameters()})
    for name in grads[0]:
        torch.testing.assert_close(grads[1][name], grads[0][name], rtol=0, atol=0, msg=name)


def test_fsdp_refuses_a_model_without_transformer_blocks(tmp_path):
    model = build_model("lstm-debug", vocab_size=VOCAB)
    with pytest.raises(ConfigError, match="no transformer blocks"):
        Trainer(model, None, train_config(parallel="fsdp"), tmp_path)


def test_a_global_batch_the_processes_do_not_divide_is_refused(tmp_path):
    model = build_model("debug", vocab_size=VOCAB, block_size=SEQ)
    with pytest.raises(ConfigError, match="global_batch_size"):
        Trainer(model, None, train_config(batch_size=2, global_batch_size=6), tmp_path,
                dist=DistInfo(rank=0, world_size=4))


def test_former_boolean_checkpointing_switch_still_reads():
    assert TrainConfig(activation_checkpointing=True).activation_checkpointing == "full"
    assert TrainConfig(activation_checkpointing=False).activation_checkpointing == "none"
    with pytest.raises(ConfigError, match="activation_checkpointing"):
        TrainConfig(activation_checkpointing="some")
