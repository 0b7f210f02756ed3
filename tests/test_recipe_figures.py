"""Every fine-tuning recipe records the figure it reaches in the form benchmarks/recipes.py checks."""
import importlib.util
from pathlib import Path

import pytest
import yaml

from lmforge.tasks.registry import task_class

ROOT = Path(__file__).resolve().parents[1]
RECIPES = sorted((ROOT / "configs" / "finetune").glob("*.yaml"))


def recipes_script():
    spec = importlib.util.spec_from_file_location("recipes_benchmark", ROOT / "benchmarks" / "recipes.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("path", RECIPES, ids=lambda p: p.stem)
def test_recipe_records_its_main_metric_with_a_noise_band(path):
    expect = recipes_script().recorded(path)
    assert expect is not None, f"{path.name} has no '# expect: METRIC VALUE ± BAND (SECONDS s, MACHINE)' line"
    task = yaml.safe_load(path.read_text())["task"]
    assert expect["metric"] == task_class(task).main_metric
    assert expect["band"] > 0 and expect["value"] > 0


def test_expect_line_parsing_and_verdicts(tmp_path):
    script = recipes_script()
    path = tmp_path / "r.yaml"
    path.write_text("# about\n# expect: rougeL 0.181 ± 0.02 (1,177 s, 2-core CPU)\ntask: summarize\n")
    expect = script.recorded(path)
    assert expect == {"metric": "rougeL", "value": 0.181, "band": 0.02, "seconds": 1177.0}
    inside = script.row("r", expect, {"metric": "rougeL", "value": 0.195, "seconds": 100})
    outside = script.row("r", expect, {"metric": "rougeL", "value": 0.15, "seconds": 100})
    assert inside["ok"] and not outside["ok"] and outside["ratio"] == pytest.approx(0.15 / 0.181)
    assert not script.row("r", expect, {"metric": "rouge1", "value": 0.18, "seconds": 1})["ok"]
    path.write_text("task: summarize\n")
    assert script.recorded(path) is None
    unrecorded = script.row("r", None, {"metric": "rougeL", "value": 0.2, "seconds": 1})
    assert not unrecorded["ok"] and unrecorded["measured"] == 0.2 and "no '# expect:" in unrecorded["error"]
