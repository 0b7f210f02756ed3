"""2-process gloo DDP against 1 process with the same global batch, through the real CLI and torchrun."""
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from conftest import free_port, prepare_char_corpus

TEXT = ("It is a truth universally acknowledged, that a single man in possession of a good fortune, "
        "must be in want of a wife. 天下大势，分久必合，合久必分。\n") * 60


@pytest.fixture(scope="module")
def prepared(tmp_path_factory):
    return prepare_char_corpus(tmp_path_factory.mktemp("ddp"), TEXT)


def pretrain_cmd(prepared: Path, out: Path, batch_size: int) -> list[str]:
    return ["pretrain", "--data", str(prepared / "data"), "--model", "debug", "--model.block_size", "32",
            "--model.n_embd", "32", "--train.batch_size", str(batch_size), "--train.seq_len", "32",
            "--train.max_steps", "6", "--train.eval_interval", "3", "--train.eval_batches", "2",
            "--train.warmup_steps", "2", "--train.optimizer", "sgd", "--train.lr", "0.5",
            # SGD keeps float rounding differences of the all-reduce at rounding size (Adam divides by
            # tiny second moments and amplifies them).
            "--train.progress", "false",
            "--train.device", "cpu", "--out", str(out)]


@pytest.mark.skipif(not shutil.which("torchrun") and not Path(sys.executable).with_name("torchrun").exists(),
                    reason="torchrun not installed")
def test_two_process_ddp_equals_one_process_with_same_global_batch(prepared):
    torchrun = shutil.which("torchrun") or str(Path(sys.executable).with_name("torchrun"))
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    one = subprocess.run([sys.executable, "-m", "lmforge.cli", *pretrain_cmd(prepared, prepared / "one", 4)],
                         capture_output=True, text=True, env=env, timeout=300)
    assert one.returncode == 0, one.stderr[-2000:]
    two = subprocess.run([torchrun, "--nproc_per_node", "2", "--master_port", str(free_port()), "-m", "lmforge.cli",
                          *pretrain_cmd(prepared, prepared / "two", 2)],
                         capture_output=True, text=True, env=env, timeout=300)
    assert two.returncode == 0, two.stderr[-2000:]
    a = load_file(str(prepared / "one" / "model.safetensors"))
    b = load_file(str(prepared / "two" / "model.safetensors"))
    assert a.keys() == b.keys()
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=1e-4, atol=1e-5)
    # only rank 0 wrote the run directory's files
    assert (prepared / "two" / "summary.json").is_file()
