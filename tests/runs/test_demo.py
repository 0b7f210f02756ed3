"""`lmforge demo` end to end on a short budget: the run it leaves, the stop it reports, the threads it restores."""
import json

import torch

from lmforge.runs.demo import DEMO_PROMPTS, demo


def test_demo_on_a_short_budget_leaves_a_complete_run(tmp_path, capsys):
    threads = torch.get_num_threads()
    summary = demo(tmp_path / "demo", max_seconds=6)
    assert torch.get_num_threads() == threads
    assert summary["stop_reason"] == "max_seconds" and summary["val_loss"] < summary["initial_val_loss"]
    assert set(summary["samples"]) == set(DEMO_PROMPTS) and all(summary["samples"].values())
    assert json.loads((tmp_path / "demo" / "summary.json").read_text())["steps"] == summary["steps"]
    printed = capsys.readouterr().out
    assert f"stopped at step {summary['steps']}: the 6 s time budget was reached" in printed
    assert "trained on " in printed and "validation perplexity" in printed
