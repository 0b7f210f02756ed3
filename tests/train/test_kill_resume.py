"""A `lmforge pretrain` process killed with SIGKILL mid-run resumes to exactly the weights of an
uninterrupted run: checkpoints are atomic and carry optimizer, RNG and data-cursor state."""
import os
import signal
import subprocess
import sys
import time

import pytest
import torch
from safetensors.torch import load_file

TEXT = "Now is the winter of our discontent made glorious summer by this sun of York.\n" * 120


def cmd(data, out, *extra):
    return [sys.executable, "-m", "lmforge.cli", "pretrain", "--data", str(data), "--model", "debug",
            "--model.block_size", "32", "--model.dropout", "0.1", "--train.batch_size", "4", "--train.seq_len", "32",
            "--train.max_steps", "60", "--train.checkpoint_interval", "5", "--train.eval_interval", "20",
            "--train.eval_batches", "2", "--train.progress", "false", "--train.warmup_steps", "5",
            "--train.device", "cpu", "--out", str(out), *extra]


@pytest.mark.skipif(sys.platform == "win32", reason="needs SIGKILL")
def test_sigkill_then_resume_matches_uninterrupted(tmp_path):
    from lmforge.data.shards import prepare_dataset

    (tmp_path / "t.txt").write_text(TEXT)
    prepare_dataset(str(tmp_path / "t.txt"), tmp_path / "data", tokenizer="char", progress=False)
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    full = subprocess.run(cmd(tmp_path / "data", tmp_path / "full"), env=env, capture_output=True, text=True,
                          timeout=300)
    assert full.returncode == 0, full.stderr[-2000:]

    proc = subprocess.Popen(cmd(tmp_path / "data", tmp_path / "cut"), env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    ckpts = tmp_path / "cut" / "checkpoints"
    deadline = time.time() + 120
    while time.time() < deadline and proc.poll() is None:
        done = [p for p in ckpts.glob("step_*") if not p.name.endswith((".tmp", ".old"))] if ckpts.exists() else []
        if any(p.name >= "step_00000015" for p in done):
            break
        time.sleep(0.01)
    assert proc.poll() is None, "the run finished before it could be interrupted"
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert not (tmp_path / "cut" / "summary.json").exists()

    resumed = subprocess.run(cmd(tmp_path / "data", tmp_path / "cut", "--resume"), env=env, capture_output=True,
                             text=True, timeout=300)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    a = load_file(str(tmp_path / "full" / "model.safetensors"))
    b = load_file(str(tmp_path / "cut" / "model.safetensors"))
    for k in a:
        assert torch.equal(a[k], b[k]), k
