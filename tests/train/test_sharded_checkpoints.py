"""Sharded checkpoints (torch.distributed.checkpoint) written by 2 FSDP ranks, against an uninterrupted run in
one process that writes whole-weight checkpoints: resumed on 1 and on 2 ranks they end with its weights, a
rank killed in the middle of a save leaves the previous checkpoint to resume from, and `lmforge convert`
assembles one safetensors file from the shards."""
import os
import shutil
import signal

import pytest
import torch
import torch.multiprocessing as mp
from safetensors.torch import load_file
from torch.distributed.checkpoint import FileSystemWriter

from distributed_runs import Job, run, start_two_ranks, tiny_llama, train_config
from lmforge.data.tokenizers import train_tokenizer
from lmforge.errors import CheckpointError
from lmforge.interop.convert import convert
from lmforge.models.registry import load_model
from lmforge.parallel import load_sharded
from lmforge.train import checkpoint as ckpt
from lmforge.train.trainer import Trainer

SAVED_AT, TOTAL = 3, 6


def sharded(**changes):
    return train_config(**{"parallel": "fsdp", "batch_size": 2, "checkpoint_format": "sharded", "max_steps": TOTAL,
                            **changes})


def whole_weights(run_dir) -> dict[str, torch.Tensor]:
    """The newest sharded checkpoint's weights, read into a plain model in this process."""
    model = tiny_llama()
    load_sharded(ckpt.latest_checkpoint(run_dir) / ckpt.SHARDED, model)
    return model.state_dict()


def assert_same_weights(weights: dict, reference_dir, rel: float = 1e-6) -> None:
    reference = load_file(str(reference_dir / "model.safetensors"))
    assert set(reference) <= set(weights)
    for key, value in reference.items():
        torch.testing.assert_close(weights[key], value, rtol=rel, atol=rel, msg=key)


def die_in_second_save() -> None:
    """SIGKILL this rank right after it has written its shard of the second checkpoint: the other rank has
    written its own, and the checkpoint's metadata is never written."""
    write = FileSystemWriter.write_data
    calls = []

    def write_then_die(self, *args, **kwargs):
        written = write(self, *args, **kwargs)
        calls.append(1)
        if len(calls) == 2:
            os.kill(os.getpid(), signal.SIGKILL)
        return written

    FileSystemWriter.write_data = write_then_die


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """An uninterrupted run in one process (whole-weight checkpoints); then on one group of 2 ranks (starting
    processes is most of the cost): a run stopped after SAVED_AT steps, that run resumed, and a run whose
    rank 1 is killed in its second save, which ends the group."""
    root = tmp_path_factory.mktemp("sharded")
    (root / "uninterrupted").mkdir()
    run(root / "uninterrupted", 0, 1, train_config(batch_size=2, max_steps=TOTAL))
    group = start_two_ranks([Job(root / "saved", sharded(max_steps=SAVED_AT)),
                             Job(root / "resumed_on_2", sharded(), resume=True, copy_of=root / "saved"),
                             Job(root / "async_saved", sharded(max_steps=SAVED_AT, checkpoint_interval=1,
                                                               async_checkpoint=True)),
                             Job(root / "async_resumed", sharded(async_checkpoint=True), resume=True,
                                 copy_of=root / "async_saved"),
                             Job(root / "killed", sharded(max_steps=4, checkpoint_interval=2),
                                 patches=[(1, die_in_second_save)])])
    # Like torchrun, the group stops the surviving rank once one has died.
    with pytest.raises(mp.ProcessExitedException) as died:
        while not group.join(timeout=300):
            pass
    assert died.value.exit_code == -signal.SIGKILL and died.value.error_index == 1
    return root


def test_each_rank_writes_its_own_shard(runs):
    checkpoint = ckpt.latest_checkpoint(runs / "saved")
    assert checkpoint.name == f"step_{SAVED_AT:08d}"
    assert len(list((checkpoint / ckpt.SHARDED).glob("*.distcp"))) == 2
    assert not (runs / "saved" / "model.safetensors").exists()  # no rank assembled the whole model


def test_background_saves_on_2_ranks_are_complete_checkpoints_that_resume_to_the_uninterrupted_weights(runs):
    saved = runs / "async_saved" / "checkpoints"
    # One save per step, each completed (renamed into place) once the next started; the last at the end.
    assert sorted(p.name for p in saved.iterdir()) == [f"step_{s:08d}" for s in (SAVED_AT - 1, SAVED_AT)]
    assert len(list((ckpt.latest_checkpoint(runs / "async_saved") / ckpt.SHARDED).glob("*.distcp"))) == 2
    # Training went on while each save was written: what was saved is the state at its step.
    in_background, in_step = whole_weights(runs / "async_saved"), whole_weights(runs / "saved")
    for key in in_step:
        assert torch.equal(in_background[key], in_step[key]), key
    assert ckpt.latest_checkpoint(runs / "async_resumed").name == f"step_{TOTAL:08d}"
    assert_same_weights(whole_weights(runs / "async_resumed"), runs / "uninterrupted")


def test_a_background_save_in_one_process_equals_the_synchronous_one(tmp_path):
    losses_sync = run(tmp_path / "sync", 0, 1, sharded(checkpoint_interval=2))
    losses_async = run(tmp_path / "async", 0, 1, sharded(checkpoint_interval=2, async_checkpoint=True))
    assert losses_async == losses_sync
    sync_w, async_w = whole_weights(tmp_path / "sync"), whole_weights(tmp_path / "async")
    for key in sync_w:
        assert torch.equal(sync_w[key], async_w[key]), key
    saved = ckpt.latest_checkpoint(tmp_path / "async")
    assert saved.name == f"step_{TOTAL:08d}" and (saved / "rng.safetensors").is_file()
    # Resuming the background-saved run from its middle checkpoint redoes the same steps.
    shutil.rmtree(saved)
    redone = run(tmp_path / "async", 0, 1, sharded(checkpoint_interval=2, async_checkpoint=True), resume=True)
    assert redone == losses_sync[-len(redone):] and len(redone) == 2


def test_saved_on_2_ranks_resumes_on_2_ranks_to_the_uninterrupted_weights(runs):
    assert ckpt.latest_checkpoint(runs / "resumed_on_2").name == f"step_{TOTAL:08d}"
    assert_same_weights(whole_weights(runs / "resumed_on_2"), runs / "uninterrupted")


def test_saved_on_2_ranks_resumes_in_1_process_to_the_uninterrupted_weights(runs, tmp_path):
    shutil.copytree(runs / "saved", tmp_path / "run")
    losses = run(tmp_path / "run", 0, 1, sharded(), resume=True)
    assert len(losses) == TOTAL - SAVED_AT
    assert_same_weights(whole_weights(tmp_path / "run"), runs / "uninterrupted")


def test_a_rank_killed_mid_save_leaves_the_previous_checkpoint_usable(runs, tmp_path):
    shutil.copytree(runs / "killed", tmp_path / "run")
    run_dir = tmp_path / "run"
    assert (run_dir / "checkpoints" / "step_00000004.tmp").is_dir()  # the interrupted save
    assert ckpt.latest_checkpoint(run_dir).name == "step_00000002"
    losses = run(run_dir, 0, 1, sharded(), resume=True)
    assert len(losses) == TOTAL - 2
    assert_same_weights(whole_weights(run_dir), runs / "uninterrupted")


def test_convert_assembles_the_shards_into_one_safetensors_file(runs, tmp_path):
    run_dir = tmp_path / "run"
    shutil.copytree(runs / "resumed_on_2", run_dir)
    train_tokenizer("char", ["the quick brown fox"], 0).save(run_dir / "tokenizer.json")
    convert(run_dir, tmp_path / "hf", to="hf")
    assert (tmp_path / "hf" / "model.safetensors").is_file()
    convert(tmp_path / "hf", tmp_path / "back", to="lmforge")
    assert_same_weights(load_model(tmp_path / "back").state_dict(), runs / "uninterrupted")


def test_a_sharded_checkpoint_of_another_model_shape_is_refused(runs, tmp_path):
    shutil.copytree(runs / "saved", tmp_path / "run")
    trainer = Trainer(tiny_llama(intermediate_size=96), None, sharded(), tmp_path / "run")
    with pytest.raises(CheckpointError, match=r"holds blocks\.0\.mlp\.gate\.weight of shape \[64, 32\], the model has \[96, 32\]"):
        trainer.fit(resume=True)
