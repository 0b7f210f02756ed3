"""FSDP2 over 2 gloo processes against 1 process training on the same global batch, through the trainer.

The single process runs the global batch as micro-batches of the ranks' size, accumulated: each micro-batch's
arithmetic is then that of one rank, and what remains to compare is how the ranks' gradients are combined
(`distributed_runs` says why the runs use plain SGD).
"""
import pytest
import torch
from safetensors.torch import load_file

from distributed_runs import SEQ, VOCAB, Job, on_two_ranks, run, train_config
from lmforge.config import TrainConfig
from lmforge.errors import ConfigError
from lmforge.models.registry import build_model
from lmforge.parallel import DistInfo, apply_activation_checkpointing, apply_fsdp
from lmforge.train.trainer import Trainer

ACCUMULATED_STEPS = 15


@pytest.fixture(scope="module")
def two_rank_runs(tmp_path_factory):
    """Both 2-rank FSDP runs on one process group (starting the processes is most of their cost)."""
    root = tmp_path_factory.mktemp("fsdp")
    jobs = [Job(root / "two", train_config(parallel="fsdp", batch_size=2)),
            Job(root / "two_accumulated", train_config(parallel="fsdp", batch_size=1, max_steps=ACCUMULATED_STEPS)),
            # Hybrid sharding at its smallest: 2 groups of 1 rank, replicas of each other.
            Job(root / "two_hybrid", train_config(parallel="fsdp", batch_size=2, shard_group_size=1))]
    return {job.run_dir.name: (job.run_dir, losses) for job, losses in zip(jobs, on_two_ranks(jobs))}


def one_process(run_dir, micro_batch: int, **changes):
    run_dir.mkdir()
    return run_dir, run(run_dir, 0, 1, train_config(batch_size=micro_batch, **changes))


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


def test_two_rank_fsdp_equals_one_process_on_the_same_global_batch(tmp_path, two_rank_runs):
    assert_same_run(one_process(tmp_path / "one", 2), two_rank_runs["two"])


def test_hybrid_sharded_fsdp_equals_one_process_on_the_same_global_batch(tmp_path, two_rank_runs):
    assert_same_run(one_process(tmp_path / "one", 2), two_rank_runs["two_hybrid"])


def test_gradients_summed_over_ranks_instead_of_averaged_would_fail_the_comparison(tmp_path, two_rank_runs):
    """The comparison above is sharp enough for the known hazard: one process whose gradients are twice
    too large (what summing over 2 ranks gives) ends far outside its tolerance."""
    doubled = one_process(tmp_path / "doubled", 2, lr=0.2)  # SGD: twice the gradient is twice the lr
    with pytest.raises(AssertionError):
        assert_same_run(doubled, two_rank_runs["two"])


def test_fsdp_with_accumulated_micro_batches_equals_one_process(tmp_path, two_rank_runs):
    """Micro-batches of 1 accumulated without synchronising, then reduced once, on each of 2 ranks.

    The ranks add their four gradients as (g0 + g1) + (g2 + g3), one process as ((g0 + g1) + g2) + g3: the
    rounding differs by about 1e-7 a step, which training amplifies (to 1e-4 by step 40), so the runs are
    compared over their first 15 steps."""
    single = one_process(tmp_path / "one", 1, max_steps=ACCUMULATED_STEPS)
    assert_same_run(single, two_rank_runs["two_accumulated"], rel=1e-5)


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
        Trainer(model, None, train_config(parallel="fsdp", global_batch_size=None), tmp_path)


def test_a_global_batch_the_processes_do_not_divide_is_refused(tmp_path):
    model = build_model("debug", vocab_size=VOCAB, block_size=SEQ)
    with pytest.raises(ConfigError, match="global_batch_size"):
        Trainer(model, None, train_config(batch_size=2, global_batch_size=6), tmp_path,
                dist=DistInfo(rank=0, world_size=4))


def test_a_shard_group_size_that_does_not_divide_the_processes_is_refused():
    with pytest.raises(ConfigError, match="shard_group_size"):
        apply_fsdp(build_model("llama-debug"), DistInfo(rank=0, world_size=4), shard_group_size=3)


def test_former_boolean_checkpointing_switch_still_reads():
    assert TrainConfig(activation_checkpointing=True).activation_checkpointing == "full"
    assert TrainConfig(activation_checkpointing=False).activation_checkpointing == "none"
    with pytest.raises(ConfigError, match="activation_checkpointing"):
        TrainConfig(activation_checkpointing="some")


@pytest.mark.parametrize("change, fragment", [({"shard_group_size": 0}, "train.shard_group_size must be > 0"),
                                              ({"checkpoint_format": "zip"}, "train.checkpoint_format must be one of"),
                                              ({"parallel": "tp"}, "train.parallel must be one of ddp, fsdp")])
def test_bad_scale_out_settings_are_refused(change, fragment):
    with pytest.raises(ConfigError, match=fragment):
        TrainConfig(**change)
