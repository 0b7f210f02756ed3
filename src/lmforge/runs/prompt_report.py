"""The "prompt vs fine-tune" report of `lmforge prompt eval`: a Markdown table and a plot of accuracy against the
number of shots, plain and calibrated (mean ± std over seeds), with chance and the fine-tuned run's metric."""
from __future__ import annotations

from pathlib import Path

from lmforge.atomic import atomic_path


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


def plot_prompt_eval(result: dict, path: str | Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    shots = [row["shots"] for row in result["rows"]]
    fig, ax = plt.subplots(figsize=(6, 4))
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
    ax.set_title(f"{result['template']}: prompting vs fine-tuning", fontsize=10)
    ax.legend(fontsize=8)
    fig.tight_layout()
    with atomic_path(Path(path)) as tmp:
        fig.savefig(tmp, format="png", dpi=120)
    plt.close(fig)
