"""The self-contained HTML viewer: the explanations and attention maps embedded as JSON in one page, which
draws them itself (no network): text and head/layer selectors, tokens coloured by score, hover for values."""
from __future__ import annotations

import json
from importlib.resources import files
from pathlib import Path

import numpy as np

from lmforge.atomic import write_text_atomic

PLACEHOLDER = "/*EXPLANATION_DATA*/"


def viewer_html(records: list[dict], maps: list[dict[str, np.ndarray]]) -> str:
    """The page for `records` (explanations.json's entries) with their maps {kind: (L, H, T, S)}."""
    examples = [{**{k: v for k, v in r.items() if k != "rollout"},
                 "attention": {kind: np.round(m, 4).tolist() for kind, m in per_text.items()}}
                for r, per_text in zip(records, maps)]
    # "</" inside the JSON would end the <script> element early.
    data = json.dumps({"examples": examples}, ensure_ascii=False).replace("</", "<\\/")
    template = files("lmforge.explain").joinpath("static/viewer.html").read_text(encoding="utf-8")
    return template.replace(PLACEHOLDER, data)


def write_viewer(path: Path, records: list[dict], maps: list[dict[str, np.ndarray]]) -> Path:
    return write_text_atomic(path, viewer_html(records, maps))
