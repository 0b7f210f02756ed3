"""The playground's Explain tab in headless Chromium: it asks the server to explain a served classifier's answer
and draws it as the explain viewer does: switching the head redraws the attention map, and hovering a token
shows that token's score, the one `/v1/explain` returns."""
import os

import httpx
import pytest

from lmforge.serve.app import create_app
from live_server import LiveServer, make_gpt_run, make_task_run

CHROMIUM = "/usr/bin/chromium"
ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
        "--disable-sync", "--no-first-run"]
TEXT = "the film was good and the acting was great"

sync_api = pytest.importorskip("playwright.sync_api", reason="the playwright package is not installed")
if not os.access(CHROMIUM, os.X_OK):
    pytest.skip(f"no Chromium at {CHROMIUM} (install Debian's: apt-get install -y chromium)", allow_module_level=True)


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    root = tmp_path_factory.mktemp("playground_explain")
    app = create_app(make_gpt_run(root / "gpt"), model_name="tiny", max_slots=1,
                     task_models={"classify": make_task_run(root / "classify")})
    with LiveServer(app) as live:
        yield live


@pytest.fixture(scope="module")
def page():
    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=ARGS, headless=True)
        try:
            yield browser.new_page()
        finally:
            browser.close()


def test_explain_tab_draws_switches_heads_and_shows_scores(server, page):
    expected = httpx.post(server.url + "/v1/explain", json={"task": "classify", "input": TEXT, "method": "saliency"},
                          timeout=60).json()["data"][0]
    errors = []
    page.on("pageerror", lambda e: errors.append(str(e)))
    page.goto(server.url + "/")
    page.wait_for_function("document.getElementById('model-name').textContent.startsWith('tiny')")
    page.click("#tab-explain")
    assert page.is_visible("#explain-panel") and page.is_hidden("#chat-panel")
    assert page.eval_on_selector_all("#explain-task option", "els => els.map(e => e.value)") == ["classify"]
    page.select_option("#explain-method", "saliency")
    page.fill("#explain-input", TEXT)
    page.click("#run-explain")
    page.wait_for_selector("#explain-view", state="visible", timeout=60_000)
    view = page.frame_locator("#explain-view")
    view.locator("#tokens .token").first.wait_for(timeout=30_000)
    assert errors == [] and page.is_hidden("#explain-error")
    assert view.locator("#tokens .token").count() == len(expected["tokens"])
    assert view.locator("#head option").evaluate_all("els => els.map(e => e.value)") == ["mean", "0", "1", "2", "3"]
    picture = lambda: view.locator("#attention").evaluate("c => c.toDataURL()")  # noqa: E731
    mean = picture()
    view.locator("#head").select_option("1")
    head1 = picture()
    view.locator("#head").select_option("2")
    assert len({mean, head1, picture()}) == 3, "each head should draw a different map"
    word = max(range(len(expected["scores"])), key=lambda i: abs(expected["scores"][i]))
    token = view.locator("#tokens .token").nth(word)
    assert token.evaluate("el => getComputedStyle(el).backgroundColor") not in ("rgba(0, 0, 0, 0)", "transparent")
    token.hover()
    view.locator("#tooltip").wait_for(state="visible")
    tip = view.locator("#tooltip").text_content()
    assert f"{expected['scores'][word]:.4f}" in tip and expected["tokens"][word] in tip


def test_explain_errors_show_in_the_tab(server, page):
    page.goto(server.url + "/")
    page.wait_for_function("document.getElementById('model-name').textContent.startsWith('tiny')")
    page.click("#tab-explain")
    page.fill("#explain-input", TEXT)
    page.fill("#explain-target", "maybe")
    page.click("#run-explain")
    page.wait_for_selector("#explain-error", state="visible", timeout=60_000)
    assert "is not a label of this run" in page.text_content("#explain-error")
