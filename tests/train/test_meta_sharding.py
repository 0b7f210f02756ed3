"""Models built on the meta device and sharded before they get memory: the 7B recipe on a simulated world of 8
ranks (PyTorch's fake process group: collectives do nothing, so only layouts and memory are checked), and
the trainer giving a meta-built model's shards memory and values."""
import resource
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import yaml
from torch.distributed.tensor import DTensor
from torch.testing._internal.distributed.fake_pg import FakeStore

from distributed_runs import tiny_llama, train_config
from lmforge.config import ModelSpec, TrainConfig
from lmforge.errors import ConfigError
from lmforge.models.gpt import count_parameters
from lmforge.models.registry import build_model
from lmforge.parallel import DistInfo, apply_activation_checkpointing, apply_fsdp, materialize
from lmforge.train.trainer import Trainer

RECIPES = Path(__file__).resolve().parents[2] / "configs" / "pretrain"


@pytest.fixture
def fake_world():
    def start(world_size: int) -> DistInfo:
        dist.init_process_group("fake", store=FakeStore(), rank=0, world_size=world_size)
        return DistInfo(rank=0, world_size=world_size)

    yield start
    dist.destroy_process_group()


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def test_the_7b_recipe_shards_its_model_over_8_ranks_without_allocating_it(fake_world):
    recipe = yaml.safe_load((RECIPES / "llama-7b-fsdp.yaml").read_text())
    train, spec = TrainConfig(**recipe["train"]), ModelSpec(**recipe["model"])
    assert (train.parallel, train.checkpoint_format) == ("fsdp", "sharded")
    info = fake_world(8)
    before = peak_rss_mb()
    model = build_model(spec.preset, device="meta", **spec.overrides())
    apply_activation_checkpointing(model, train.activation_checkpointing)
    apply_fsdp(model, info, precision=train.precision)
    parameters = list(model.parameters())
    assert all(isinstance(p, DTensor) and p.is_meta for p in parameters)
    whole = sum(p.numel() for p in parameters)
    assert whole == 6_738_415_616  # Llama 2 7B
    assert sum(p.to_local().numel() for p in parameters) == pytest.approx(whole / 8, rel=1e-3)
    assert peak_rss_mb() - before < 200  # 27 GB of fp32 weights were never allocated


def test_the_trainer_gives_a_meta_built_model_memory_for_its_shards_only(fake_world):
    info = fake_world(2)
    model = tiny_llama()
    with torch.device("meta"):
        meta_model = tiny_llama()
    trainer = Trainer(meta_model, None, train_config(parallel="fsdp", batch_size=2), "unused", dist=info)
    for (name, shard), (_, reference) in zip(trainer.model.named_parameters(), model.named_parameters()):
        local = shard.to_local()
        assert not local.is_meta and local.shape[0] == -(-reference.shape[0] // 2), name
        assert torch.isfinite(local).all(), name
        if reference.dim() >= 2:  # initialised as the model initialises itself: N(0, 0.02), scaled projections
            assert local.std().item() == pytest.approx(reference.std().item(), rel=0.25), name
        else:
            assert torch.equal(local, reference[:local.shape[0]]), name  # norms start at one
    assert count_parameters(trainer.model) == count_parameters(model)


def test_a_model_with_buffers_is_not_materialised_from_the_meta_device():
    model = build_model("debug", position="sinusoidal", device="meta")
    with pytest.raises(ConfigError, match="buffers"):
        materialize(model, torch.device("cpu"))


def test_hybrid_sharding_shards_within_groups_and_replicates_across_them(fake_world):
    info = fake_world(8)
    model = build_model("llama-1b", device="meta")
    apply_fsdp(model, info, shard_group_size=4)  # 2 nodes of 4
    parameters = list(model.parameters())
    assert all(p.device_mesh.mesh_dim_names == ("replicate", "shard") for p in parameters)
    assert all(p.device_mesh.shape == (2, 4) for p in parameters)
    whole = sum(p.numel() for p in parameters)
    assert sum(p.to_local().numel() for p in parameters) == pytest.approx(whole / 4, rel=1e-3)
