"""Checkpoints: safetensors weights + optimizer tensors, JSON trainer state, written atomically.

Layout inside a run directory::

    checkpoints/step_00000500/   model.safetensors, config.json, optimizer.safetensors, state.json
    checkpoints/best/            the same, for the lowest validation loss
    model.safetensors, config.json, state/   a copy of the latest checkpoint (what `load_model(RUN)` reads)

or, with `--train.checkpoint_format sharded` (torch.distributed.checkpoint, each rank writing its shards)::

    checkpoints/step_00000500/   sharded/ (.metadata, one __RANK_0.distcp per rank), config.json, rng.safetensors,
                                 state.json
    config.json                  a copy of the latest checkpoint's (`lmforge convert RUN` assembles the weights)

Each checkpoint directory is assembled under a temporary name and renamed into place, so a
process killed at any moment leaves either the previous checkpoint or the new one, never half.
"""
from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import torch
from safetensors.torch import load_file

from lmforge.atomic import save_safetensors_atomic, write_json_atomic
from lmforge.errors import CheckpointError
from lmforge.models.common.state import state_mismatch
from lmforge.parallel import is_complete
from lmforge.train.objective_params import split_objective_tensors

STEP_DIR = re.compile(r"^step_(\d{8})$")
SHARDED = "sharded"  # the torch.distributed.checkpoint folder inside a sharded checkpoint


def optimizer_to_tensors(sd: dict) -> tuple[dict[str, torch.Tensor], dict]:
    """Split an optimizer state dict into tensors (safetensors) and plain values (JSON)."""
    tensors, scalars = {}, {}
    for pid, state in sd["state"].items():
        for key, value in state.items():
            if isinstance(value, torch.Tensor):
                tensors[f"{pid}.{key}"] = value
            else:
                scalars[f"{pid}.{key}"] = value
    groups = [{k: (list(v) if isinstance(v, tuple) else v) for k, v in g.items()} for g in sd["param_groups"]]
    return tensors, {"param_groups": groups, "scalars": scalars}


def optimizer_from_tensors(tensors: dict[str, torch.Tensor], meta: dict) -> dict:
    """The optimizer state dict that `optimizer_to_tensors` split."""
    state: dict[int, dict] = {}
    for name, value in tensors.items():
        pid, key = name.split(".", 1)
        state.setdefault(int(pid), {})[key] = value
    for name, value in meta["scalars"].items():
        pid, key = name.split(".", 1)
        state.setdefault(int(pid), {})[key] = value
    groups = [{k: (tuple(v) if k == "betas" else v) for k, v in g.items()} for g in meta["param_groups"]]
    return {"state": state, "param_groups": groups}


def rng_state() -> dict[str, torch.Tensor]:
    states = {"rng.cpu": torch.get_rng_state()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        for i, s in enumerate(torch.cuda.get_rng_state_all()):
            states[f"rng.cuda.{i}"] = s
    return states


def restore_rng(tensors: dict[str, torch.Tensor]) -> None:
    torch.set_rng_state(tensors["rng.cpu"])
    cuda = [tensors[k] for k in sorted(tensors) if k.startswith("rng.cuda.")]
    if cuda and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(cuda)


def write_checkpoint(directory: Path, weights: dict[str, torch.Tensor], config: dict, optimizer_state: dict,
                     state: dict, extra: dict[str, torch.Tensor] | None = None) -> None:
    """Write a complete checkpoint to `directory` via a temporary sibling and one rename: `weights` (each tied
    tensor once), the model's `config` dict, an optimizer state dict and the trainer's `state`; `extra`
    tensors (an objective's own, prefixed `objective.`) go beside the optimizer's."""
    directory = Path(directory)
    tmp = temporary_for(directory)
    try:
        save_safetensors_atomic(weights, tmp / "model.safetensors", metadata={"format": "pt"})
        write_json_atomic(tmp / "config.json", config)
        opt_tensors, opt_meta = optimizer_to_tensors(optimizer_state)
        save_safetensors_atomic({**opt_tensors, **rng_state(), **(extra or {})}, tmp / "optimizer.safetensors")
        write_json_atomic(tmp / "state.json", {**state, "optimizer": opt_meta})
        _replace(tmp, directory)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def _replace(tmp: Path, directory: Path) -> None:
    old = directory.with_name(directory.name + ".old")
    if directory.exists():
        shutil.rmtree(old, ignore_errors=True)
        directory.rename(old)
    tmp.rename(directory)
    shutil.rmtree(old, ignore_errors=True)


def step_checkpoints(run_dir: Path) -> list[Path]:
    root = Path(run_dir) / "checkpoints"
    if not root.is_dir():
        return []
    return sorted(p for p in root.iterdir() if p.is_dir() and STEP_DIR.match(p.name))


def latest_checkpoint(run_dir: Path) -> Path | None:
    """Newest complete step checkpoint (an interrupted write leaves only a `.tmp` dir, which is skipped)."""
    for path in reversed(step_checkpoints(run_dir)):
        if all((path / f).is_file() for f in ("model.safetensors", "optimizer.safetensors", "state.json")):
            return path
        if is_sharded_checkpoint(path):
            return path
    return None


def is_sharded_checkpoint(path: Path) -> bool:
    return (path / "state.json").is_file() and is_complete(path / SHARDED)


def temporary_for(directory: Path) -> Path:
    """An empty sibling of `directory` to assemble it in."""
    tmp = directory.with_name(directory.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    return tmp


def finish_sharded(tmp: Path, directory: Path, config: dict, state: dict,
                   rng: dict[str, torch.Tensor] | None = None) -> None:
    """Complete a sharded checkpoint whose shards every rank has written into `tmp/sharded`: add the model
    config, trainer state and RNG (`rng`, captured when the save started, or the current one), then rename it
    to `directory` (replacing an older one of that name)."""
    write_json_atomic(tmp / "config.json", config)
    save_safetensors_atomic(rng if rng is not None else rng_state(), tmp / "rng.safetensors")
    write_json_atomic(tmp / "state.json", state)
    _replace(tmp, directory)


def read_sharded_state(path: Path) -> dict:
    """The trainer state of sharded checkpoint `path`; restores the RNG it saved."""
    try:
        state = json.loads((path / "state.json").read_text())
        restore_rng(load_file(str(path / "rng.safetensors")))
    except Exception as e:
        raise CheckpointError(f"checkpoint {path} is corrupt or unreadable ({type(e).__name__})",
                              f"delete {path} to resume from the previous checkpoint") from None
    return state


def prune_checkpoints(run_dir: Path, keep_last: int) -> None:
    for path in step_checkpoints(run_dir)[:-keep_last]:
        shutil.rmtree(path, ignore_errors=True)


def read_checkpoint(path: Path, expected: dict[str, torch.Tensor], *, optional=()) -> tuple[dict, dict, dict]:
    """(weights, optimizer state dict, trainer state) of checkpoint `path`, its weights checked against the
    model state dict `expected` (keys in `optional`, tied weights, may be absent); restores the RNG. The trainer
    state holds the objective's own tensors, if any, under "objective"."""
    try:
        state = json.loads((path / "state.json").read_text())
        weights = load_file(str(path / "model.safetensors"))
        extra = load_file(str(path / "optimizer.safetensors"))
    except Exception as e:
        raise CheckpointError(f"checkpoint {path} is corrupt or unreadable ({type(e).__name__})",
                              f"delete {path} to resume from the previous checkpoint") from None
    detail = state_mismatch(expected, weights, optional=optional)
    if detail:
        raise CheckpointError(f"weights in {path / 'model.safetensors'} do not match the model config ({detail})",
                              "resume with the model config the run was started with")
    objective, extra = split_objective_tensors(extra)
    opt_tensors = {k: v for k, v in extra.items() if not k.startswith("rng.")}
    optimizer_state = optimizer_from_tensors(opt_tensors, state.pop("optimizer"))
    if objective:
        state["objective"] = objective
    restore_rng({k: v for k, v in extra.items() if k.startswith("rng.")})
    return weights, optimizer_state, state


def publish(checkpoint: Path, run_dir: Path) -> None:
    """Copy a checkpoint's weights and state to the top of the run directory (the loadable model)."""
    run_dir = Path(run_dir)
    state_dir = run_dir / "state"
    state_dir.mkdir(exist_ok=True)
    for name, dest in (("model.safetensors", run_dir / "model.safetensors"), ("config.json", run_dir / "config.json"),
                       ("optimizer.safetensors", state_dir / "optimizer.safetensors"),
                       ("state.json", state_dir / "state.json")):
        tmp = dest.with_name(f".{dest.name}.tmp")
        shutil.copyfile(checkpoint / name, tmp)
        tmp.replace(dest)


def publish_config(checkpoint: Path, run_dir: Path) -> None:
    """Copy a sharded checkpoint's model config to the top of the run directory."""
    tmp = Path(run_dir) / ".config.json.tmp"
    shutil.copyfile(checkpoint / "config.json", tmp)
    tmp.replace(Path(run_dir) / "config.json")
