"""Training runs of one tiny llama on a fixed sequence of global batches, in one process or over gloo ranks.

Every layout (ranks x micro-batches) sees the same rows at each optimizer step, so runs on different world
sizes are comparable step by step, and a run resumed on another world size continues on the right rows.
SGD without clipping: Adam and gradient clipping both divide out the gradients' scale, so they would hide
gradients that are summed over ranks instead of averaged; plain SGD steps are proportional to it.
"""
import json
import os
import shutil
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from conftest import free_port
from lmforge.config import TrainConfig
from lmforge.models.registry import build_model
from lmforge.parallel import DistInfo
from lmforge.train.trainer import Trainer

VOCAB, SEQ, GLOBAL_BATCH, STEPS = 61, 16, 4, 50


class FixedBatches:
    """Rank `rank`'s share of a fixed sequence of global batches: each step's GLOBAL_BATCH rows are split
    over ranks, then over micro-batches. Its saved cursor counts optimizer steps, not calls, so that it
    means the same on any world size."""

    def __init__(self, rank: int, world_size: int, micro_batch: int):
        # Eight sequences taken in turn: learnable, so that the runs compared really move their weights.
        sequences = torch.randint(0, VOCAB, (8, SEQ + 1), generator=torch.Generator().manual_seed(5))
        picks = (torch.arange(STEPS + 10)[:, None] * GLOBAL_BATCH + torch.arange(GLOBAL_BATCH)) % 8
        self.rows = sequences[picks]  # (steps, GLOBAL_BATCH, SEQ + 1)
        per_rank = GLOBAL_BATCH // world_size
        self.mine = range(rank * per_rank, (rank + 1) * per_rank)
        self.micro_batch, self.calls = micro_batch, 0
        self.micro_per_step = per_rank // micro_batch

    def next_batch(self):
        step, micro = divmod(self.calls, self.micro_per_step)
        self.calls += 1
        start = self.mine.start + micro * self.micro_batch
        rows = self.rows[step, start:start + self.micro_batch]
        return {"input_ids": rows[:, :-1], "labels": rows[:, 1:]}

    def state_dict(self):
        return {"step": self.calls // self.micro_per_step}

    def load_state_dict(self, state):
        self.calls = state["step"] * self.micro_per_step


def train_config(**changes) -> TrainConfig:
    values = dict(optimizer="sgd", lr=0.1, momentum=0.0, grad_clip=None, warmup_steps=0, schedule="constant",
                  weight_decay=0.0, max_steps=STEPS, checkpoint_interval=STEPS, log_interval=STEPS,
                  progress=False, precision="fp32", device="cpu", global_batch_size=GLOBAL_BATCH)
    return TrainConfig(**{**values, **changes})


def tiny_llama(**overrides):
    return build_model("llama-debug", **{**dict(vocab_size=VOCAB, block_size=SEQ, n_embd=32, intermediate_size=64),
                                         **overrides})


def run(run_dir, rank: int, world_size: int, cfg: TrainConfig, *, resume: bool = False) -> list[float]:
    """Train in `run_dir` (resuming from its newest checkpoint when `resume`); the losses of the steps run."""
    torch.manual_seed(0)
    losses = []
    trainer = Trainer(tiny_llama(), FixedBatches(rank, world_size, cfg.batch_size), cfg, run_dir,
                      dist=DistInfo(rank=rank, world_size=world_size),
                      on_step=lambda t: losses.append(t.state.last_train_loss))
    trainer.fit(resume=resume)
    return losses


@dataclass
class Job:
    """One run of a rank group: in `run_dir`, first copied from `copy_of` when given."""

    run_dir: Path
    cfg: TrainConfig
    resume: bool = False
    copy_of: Path | None = None
    patches: list = field(default_factory=list)  # (rank, callable) run on that rank before training


def _worker(rank: int, world_size: int, port: int, jobs: list[Job]) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    # A short timeout: a rank whose peer died must fail quickly, not wait half an hour.
    dist.init_process_group("gloo", rank=rank, world_size=world_size, timeout=timedelta(seconds=60))
    try:
        for job in jobs:
            if rank == 0:
                if job.copy_of is not None:
                    shutil.copytree(job.copy_of, job.run_dir)
                job.run_dir.mkdir(parents=True, exist_ok=True)
            dist.barrier()
            for patch_rank, patch in job.patches:
                if patch_rank == rank:
                    patch()
            losses = run(job.run_dir, rank, world_size, job.cfg, resume=job.resume)
            if rank == 0:
                (job.run_dir / "losses.json").write_text(json.dumps(losses))
    finally:
        dist.destroy_process_group()


def on_two_ranks(jobs: list[Job]) -> list[list[float]]:
    """Run `jobs` one after the other on one group of 2 gloo processes; each job's losses."""
    mp.spawn(_worker, args=(2, free_port(), jobs), nprocs=2, join=True)
    return [json.loads((job.run_dir / "losses.json").read_text()) for job in jobs]


def start_two_ranks(jobs: list[Job]):
    """Like `on_two_ranks` without waiting: the two processes, for a test that kills or watches them."""
    return mp.start_processes(_worker, args=(2, free_port(), jobs), nprocs=2, join=False, start_method="spawn")
