"""Re-run fine-tuning recipes from a clean state and check their figures against the ones they record.

    python benchmarks/recipes.py [--names sst2 dialogsum ...] [--full] [--keep DIR]

Each recipe in `configs/finetune/` records what it reaches in one machine-readable comment line:

    # expect: rougeL 0.181 ± 0.02 (177 s, 2-core CPU)

that is: the main validation metric, the figure, its noise band, and the wall time it took. This
script trains each named recipe with `lmforge finetune` into a fresh directory (nothing resumed,
nothing cached), reads the main metric from the run's `summary.json`, and prints a table of
recorded against measured figures. `--full` runs `NAME-full.yaml` where a recipe has one: the
budget sized to reach the task's quality figure rather than a few CPU minutes.

It exits with status 1 when a measured figure is off its recorded one by more than the band, so
the figures quoted in recipe comments and in the README stay reproducible. Data is read from
`$LMFORGE_DATA_DIR`; a recipe whose data is missing is reported as skipped.

The last line printed is one JSON object (see the benchmark contract in the README): per recipe the
recorded and measured figures, and `ratio`, the lowest measured / recorded over the recipes run.
"""
from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
RECIPES = ROOT / "configs" / "finetune"
# Quick budgets that fit a few CPU minutes each; the default set when --names is not given.
DEFAULT_NAMES = ("trec", "chnsenticorp", "dialogsum")
NO_FIGURE = {"metric": "", "value": None, "band": None, "seconds": None}
EXPECT = re.compile(r"^#\s*expect:\s*(?P<metric>\w+)\s+(?P<value>[-\d.]+)\s*(?:±|\+-)\s*(?P<band>[\d.]+)"
                    r"(?:\s*\((?P<seconds>[\d,]+)\s*s\b[^)]*\))?", re.MULTILINE)


def recorded(path: Path) -> dict | None:
    """The `# expect:` line of a recipe: metric, value, band and seconds; None when it has none."""
    match = EXPECT.search(path.read_text())
    if match is None:
        return None
    seconds = match["seconds"]
    return {"metric": match["metric"], "value": float(match["value"]), "band": float(match["band"]),
            "seconds": float(seconds.replace(",", "")) if seconds else None}


def recipe_path(name: str, full: bool) -> Path:
    plain = RECIPES / f"{name}.yaml"
    if not plain.exists():
        known = ", ".join(sorted(p.stem for p in RECIPES.glob("*.yaml") if not p.stem.endswith("-full")))
        raise SystemExit(f"error: no recipe {plain} — pick one of: {known}")
    longer = RECIPES / f"{name}-full.yaml"
    return longer if full and longer.exists() else plain


def data_present(path: Path) -> str | None:
    """None when the recipe's data files exist under $LMFORGE_DATA_DIR, else why not."""
    root = os.environ.get("LMFORGE_DATA_DIR")
    if not root:
        return "LMFORGE_DATA_DIR is not set"
    data = yaml.safe_load(path.read_text()).get("data", {})
    for key in ("train", "valid", "train_target", "valid_target"):
        if isinstance(data.get(key), str) and not (Path(root) / data[key]).exists():
            return f"{Path(root) / data[key]} is missing"
    return None


def run(path: Path, out: Path) -> dict:
    command = [sys.executable, "-m", "lmforge", "finetune", "--config", str(path), "--out", str(out)]
    started = time.perf_counter()
    result = subprocess.run(command, cwd=ROOT, capture_output=True, text=True)
    if result.returncode != 0:
        tail = (result.stderr or result.stdout).strip().splitlines()[-1:] or ["(no output)"]
        return {"error": f"exit status {result.returncode}: {tail[0]}"}
    summary = json.loads((out / "summary.json").read_text())
    metric = summary["main_metric"]
    return {"metric": metric, "value": summary[metric], "seconds": time.perf_counter() - started}


def row(name: str, expect: dict | None, got: dict) -> dict:
    if "error" in got or "skipped" in got:
        return {"recipe": name, **(expect or NO_FIGURE), "measured": None, "ok": "skipped" in got, **got}
    if expect is None:
        # Measured all the same, so that the figure to record is on screen.
        return {"recipe": name, **NO_FIGURE, "metric": got["metric"], "measured": got["value"],
                "measured_seconds": round(got["seconds"]), "ok": False,
                "error": "no '# expect: METRIC VALUE ± BAND (SECONDS s, MACHINE)' line in the recipe"}
    if got["metric"] != expect["metric"]:
        return {"recipe": name, **expect, "measured": None, "ok": False,
                "error": f"the recipe's main metric is {got['metric']}, its expect line names {expect['metric']}"}
    off = abs(got["value"] - expect["value"])
    return {"recipe": name, **expect, "measured": got["value"], "measured_seconds": round(got["seconds"]),
            "ok": off <= expect["band"], "ratio": got["value"] / expect["value"] if expect["value"] else None}


def table(rows: list[dict]) -> str:
    lines = [f"{'recipe':24s} {'metric':10s} {'recorded':>16s} {'measured':>9s} {'seconds':>15s}  verdict"]
    for r in rows:
        recorded_text = "none" if r["value"] is None else f"{r['value']:.3f} ± {r['band']:.3f}"
        measured = "" if r.get("measured") is None else f"{r['measured']:.3f}"
        seconds = f"{r.get('measured_seconds', '-')} / {r['seconds']:.0f}" if r.get("seconds") else \
            f"{r.get('measured_seconds', '-')} / -"
        verdict = r.get("skipped") or r.get("error") or ("within band" if r["ok"] else "OFF")
        lines.append(f"{r['recipe']:24s} {r['metric']:10s} {recorded_text:>16s} {measured:>9s} {seconds:>15s}  {verdict}")
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], allow_abbrev=False)
    parser.add_argument("--names", nargs="+", default=list(DEFAULT_NAMES), help="recipe names in configs/finetune")
    parser.add_argument("--full", action="store_true", help="run NAME-full.yaml where a recipe has one")
    parser.add_argument("--keep", type=Path, help="keep the run directories under this folder")
    args = parser.parse_args()
    paths = {name: recipe_path(name, args.full) for name in args.names}
    expects = {name: recorded(path) for name, path in paths.items()}
    rows = []
    with tempfile.TemporaryDirectory(prefix="lmforge-recipes-") as scratch:
        base = args.keep or Path(scratch)
        for name, path in paths.items():
            missing = data_present(path)
            out = base / path.stem
            if out.exists():
                raise SystemExit(f"error: {out} already exists — pass an empty --keep folder")
            got = {"skipped": f"skipped: {missing}"} if missing else run(path, out)
            rows.append(row(path.stem, expects[name], got))
            print(table(rows[-1:]).splitlines()[-1], flush=True)
    print()
    print(table(rows))
    ratios = [r["ratio"] for r in rows if r.get("ratio") is not None]
    failed = [r["recipe"] for r in rows if not r["ok"]]
    print(json.dumps({"benchmark": "recipes", "full": args.full, "rows": rows, "off_band": failed,
                      "ratio": min(ratios) if ratios else None}))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
