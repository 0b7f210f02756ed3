"""The "prompt vs fine-tune" report of `lmforge prompt eval`: a Markdown table and a plot of accuracy against the
number of shots, plain and calibrated (mean ± std over seeds), with chance and the fine-tuned run's metric."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Sequence

from lmforge.atomic import atomic_path, write_json_atomic, write_text_atomic
from lmforge.errors import ConfigError
from lmforge.runs.rundir import check_out


def markdown_table(result: dict) -> str:
    draws = result["seeds"] if result["selection"] != "nearest" or result["order"] == "random" else 1
    lines = [f"Prompted classification with `{result['model']}`, template `{result['template']}`, "
             f"{result['examples']} validation examples; exemplars: {result['selection']}, order {result['order']}"
             f" ({draws} draws per number of shots; zero shots needs none). Chance: {result['chance']:.4f}.", "",
             "| shots | accuracy (mean ± std) | calibrated (mean ± std) |", "|---|---|---|"]
    for row in result["rows"]:
        a, c = row["accuracy"], row["calibrated_accuracy"]
        lines.append(f"| {row['shots']} | {a['mean']:.4f} ± {a['std']:.4f} | {c['mean']:.4f} ± {c['std']:.4f} |")
    if result["finetuned"]:
        f = result["finetuned"]
        lines.append(f"| fine-tuned `{f['run']}` | {f['metric']} {f['value']:.4f} | |")
    return "\n".join(lines) + "\n"


def plot_prompt_eval(results: dict | Sequence[dict], path: str | Path) -> None:
    """Accuracy against shots (error bars: std over seeds), plain and calibrated, with chance and the fine-tuned
    metric as lines; one panel per result."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    results = [results] if isinstance(results, dict) else list(results)
    fig, axes = plt.subplots(1, len(results), figsize=(5.5 * len(results), 4), squeeze=False)
    for ax, result in zip(axes[0], results):
        shots = [row["shots"] for row in result["rows"]]
        for key, name in (("accuracy", "prompted"), ("calibrated_accuracy", "prompted, calibrated")):
            means = [row[key]["mean"] for row in result["rows"]]
            stds = [row[key]["std"] for row in result["rows"]]
            ax.errorbar(shots, means, yerr=stds, marker="o", capsize=4, label=name)
        ax.axhline(result["chance"], color="grey", linestyle=":", label="chance")
        if result["finetuned"]:
            f = result["finetuned"]
            ax.axhline(f["value"], color="black", linestyle="--", label=f"fine-tuned ({f['metric']})")
        ax.set_xticks(shots)
        ax.set_xlabel("shots")
        ax.set_ylabel("validation accuracy")
        ax.set_ylim(0, 1.02)
        ax.set_title(f"{result['template']}: prompting vs fine-tuning", fontsize=10)
        ax.legend(fontsize=8)
    fig.tight_layout()
    with atomic_path(Path(path)) as tmp:
        fig.savefig(tmp, format="png", dpi=120)
    plt.close(fig)


def combined_report(folders: Sequence[str | Path], out: str | Path) -> dict:
    """One "prompt vs fine-tune" table (OUT/prompt_vs_finetune.md and .json) and one plot (.png, a panel per
    task) from the folders of several `prompt eval` runs."""
    results = []
    for folder in folders:
        path = Path(folder) / "prompt_eval.json"
        if not path.is_file():
            raise ConfigError(f"{path} is missing", "pass folders written by `lmforge prompt eval`")
        results.append(json.loads(path.read_text()))
    out = check_out(out)
    lines = ["| template | examples | shots | accuracy (mean ± std) | calibrated (mean ± std) | chance | fine-tuned |",
             "|---|---|---|---|---|---|---|"]
    for r in results:
        fine = f"{r['finetuned']['value']:.4f}" if r["finetuned"] else "-"
        for row in r["rows"]:
            a, c = row["accuracy"], row["calibrated_accuracy"]
            lines.append(f"| {r['template']} | {r['examples']} | {row['shots']} | {a['mean']:.4f} ± {a['std']:.4f} | "
                         f"{c['mean']:.4f} ± {c['std']:.4f} | {r['chance']:.4f} | {fine} |")
    combined = {"results": results}
    write_json_atomic(out / "prompt_vs_finetune.json", combined)
    write_text_atomic(out / "prompt_vs_finetune.md", "\n".join(lines) + "\n")
    plot_prompt_eval(results, out / "prompt_vs_finetune.png")
    return combined
