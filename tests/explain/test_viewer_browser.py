"""The explanation viewer in headless Chromium: it loads from a file with no network, switching the head
redraws the attention map, and hovering a token shows that token's score."""
import json
import os

import pytest

import lmforge.api as lf
from tiny_runs import task_run

CHROMIUM = "/usr/bin/chromium"
ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
        "--disable-sync", "--no-first-run"]

sync_api = pytest.importorskip("playwright.sync_api", reason="the playwright package is not installed")
if not os.access(CHROMIUM, os.X_OK):
    pytest.skip(f"no Chromium at {CHROMIUM} (install Debian's: apt-get install -y chromium)", allow_module_level=True)


@pytest.fixture(scope="module")
def viewer(tmp_path_factory):
    root = tmp_path_factory.mktemp("viewer")
    run = task_run(root / "run", "bert-debug")
    out = root / "out"
    lf.explain(run, text="the film was good", method="saliency", out=out)
    return out / "viewer.html", json.loads((out / "explanations.json").read_text())[0]


@pytest.fixture(scope="module")
def page():
    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=ARGS, headless=True)
        try:
            context = browser.new_context()
            requests = []
            context.on("request", lambda r: requests.append(r.url))
            yield context.new_page(), requests
        finally:
            browser.close()


def test_viewer_draws_switches_heads_and_shows_scores(viewer, page):
    path, record = viewer
    tab, requests = page
    errors = []
    tab.on("pageerror", lambda e: errors.append(str(e)))
    tab.goto(path.as_uri())
    tab.wait_for_selector("#tokens .token")
    assert errors == []
    assert all(url.startswith("file://") for url in requests), requests
    assert tab.eval_on_selector_all("#tokens .token", "els => els.length") == len(record["tokens"])
    assert tab.eval_on_selector_all("#head option", "els => els.map(e => e.value)") == ["mean", "0", "1", "2", "3"]
    assert tab.eval_on_selector_all("#layer option", "els => els.map(e => e.value)") == ["0", "1"]
    picture = lambda: tab.eval_on_selector("#attention", "c => c.toDataURL()")  # noqa: E731
    mean = picture()
    tab.select_option("#head", "2")
    head2 = picture()
    tab.select_option("#head", "3")
    assert len({mean, head2, picture()}) == 3, "each head should draw a different map"
    tab.select_option("#layer", "1")
    assert picture() not in (mean, head2)
    # The strongest-scored word is coloured, and hovering it shows its score.
    word = max(range(len(record["scores"])), key=lambda i: abs(record["scores"][i]))
    token = tab.locator("#tokens .token").nth(word)
    assert token.evaluate("el => getComputedStyle(el).backgroundColor") not in ("rgba(0, 0, 0, 0)", "transparent")
    token.hover()
    tab.wait_for_selector("#tooltip", state="visible")
    tip = tab.text_content("#tooltip")
    assert f"{record['scores'][word]:.4f}" in tip and record["tokens"][word] in tip
