"""Recipes, overrides and validation through the real CLI parser."""
from pathlib import Path

import pytest

from lmforge.cli import build_parser, normalize_argv
from lmforge.config import TrainConfig
from lmforge.errors import ConfigError
from lmforge.models.registry import preset_config

CONFIGS = Path(__file__).resolve().parents[1].joinpath("configs")
RECIPES = sorted(p for p in CONFIGS.rglob("*.yaml") if "finetune" not in p.parts)
FINETUNE_RECIPES = sorted(CONFIGS.joinpath("finetune").glob("*.yaml"))


def parse(*argv):
    parser = build_parser()
    ns = parser.parse_args(normalize_argv(list(argv)))
    return parser.instantiate(ns)[ns.verb]


@pytest.mark.parametrize("recipe", RECIPES, ids=lambda p: p.name)
def test_every_recipe_parses_and_names_a_real_preset(recipe):
    sections = parse("pretrain", "--config", str(recipe), "--out", "unused")
    assert isinstance(sections.train, TrainConfig)
    preset_config(sections.model.preset, **sections.model.overrides())


@pytest.mark.parametrize("recipe", FINETUNE_RECIPES, ids=lambda p: p.name)
def test_every_finetune_recipe_parses_and_starts_from_something_real(recipe):
    from lmforge.runs.rundir import resolve_model_path
    from lmforge.tasks import TASKS, task_class

    import yaml

    task = yaml.safe_load(recipe.read_text())["task"]
    sections = parse("finetune", "--config", str(recipe), "--out", "unused")
    assert task in TASKS and task_class(task).name == task
    assert isinstance(sections.train, TrainConfig) and sections.data.train
    init = sections.model.init
    if init.startswith("pkg:"):
        pytest.importorskip(init[4:].split("/")[0], reason=f"the recipe starts from {init}: pip install the test extra")
        assert resolve_model_path(init).is_dir()
    else:
        preset_config(init, **(sections.model.overrides or {}))  # the recipe's extra model settings are real fields


def test_cli_overrides_win_over_recipe_and_dashes_work():
    recipe = next(r for r in RECIPES if r.name == "debug.yaml")
    s = parse("pretrain", "--config", str(recipe), "--train.lr", "1e-4", "--train.max-steps", "7",
              "--model", "llama-debug", "--data", "some/dir", "--out", "x")
    assert s.train.lr == 1e-4 and s.train.max_steps == 7
    assert s.model.preset == "llama-debug" and s.data.path == "some/dir"
    assert s.train.batch_size == 16  # from the recipe


def test_recipe_with_invalid_value_names_field(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("train:\n  lr: -1\n")
    with pytest.raises(ConfigError, match="train.lr"):
        parse("pretrain", "--config", str(bad), "--out", "x")


def test_model_overrides_are_validated():
    with pytest.raises(ConfigError, match="n_embd"):
        preset_config("debug", n_embd=65)
    with pytest.raises(ConfigError, match="model.position"):
        preset_config("debug", position="alibi")
