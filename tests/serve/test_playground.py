"""The web playground in headless Chromium: a typed message is sent and the reply streams into the page."""
import os
import time

import httpx
import pytest

from lmforge.serve.app import create_app
from live_server import LiveServer, make_gpt_run

CHROMIUM = "/usr/bin/chromium"
ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
        "--disable-sync", "--no-first-run"]

sync_api = pytest.importorskip("playwright.sync_api", reason="the playwright package is not installed")
if not os.access(CHROMIUM, os.X_OK):
    pytest.skip(f"no Chromium at {CHROMIUM} (install Debian's: apt-get install -y chromium)", allow_module_level=True)


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    run = make_gpt_run(tmp_path_factory.mktemp("playground") / "tiny")
    with LiveServer(create_app(run, model_name="tiny", max_slots=2)) as live:
        yield live


@pytest.fixture(scope="module")
def page():
    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=ARGS, headless=True)
        try:
            yield browser.new_page()
        finally:
            browser.close()


def test_chat_reply_streams_into_the_page(server, page):
    message, max_tokens = "hello there", 24
    expected = httpx.post(server.url + "/v1/chat/completions", timeout=30, json={
        "model": "tiny", "messages": [{"role": "user", "content": message}], "max_tokens": max_tokens,
        "temperature": 0}).json()["choices"][0]["message"]["content"]
    assert expected.strip(), "the test model should answer with visible text"
    engine = server.state.engine
    step = engine.step

    def slow_step():  # tokens then reach the page one by one, as from a real model
        time.sleep(0.03)
        return step()

    engine.step = slow_step
    try:
        page.goto(server.url + "/")
        page.wait_for_function("document.getElementById('model-name').textContent.startsWith('tiny')")
        page.eval_on_selector("#temperature", "el => { el.value = '0'; el.dispatchEvent(new Event('input')); }")
        page.fill("#max-tokens", str(max_tokens))
        # Count how often the reply's text changes: streaming shows it in several steps.
        page.evaluate("""() => {
            window.__updates = 0;
            new MutationObserver(() => { window.__updates += 1; })
                .observe(document.getElementById('messages'), {subtree: true, characterData: true, childList: true});
        }""")
        page.fill("#message", message)
        page.click("#send")
        page.wait_for_selector(".msg.assistant.done", timeout=30_000)
    finally:
        engine.__dict__.pop("step", None)
    assert page.text_content(".msg.user .content") == message
    assert page.text_content(".msg.assistant .content") == expected
    assert page.evaluate("window.__updates") > 3
    assert "done" in page.text_content("#status")
    assert page.is_hidden("#tasks-panel")


def test_the_default_max_tokens_fits_the_server_and_the_first_message_gets_a_reply(tmp_path_factory, page):
    # A 64-token context: the page's default of 128 new tokens would be refused with a 400.
    run = make_gpt_run(tmp_path_factory.mktemp("short") / "tiny", block_size=64)
    with LiveServer(create_app(run, model_name="short", max_slots=1)) as live:
        page.goto(live.url + "/")
        page.wait_for_function("document.getElementById('model-name').textContent.startsWith('short')")
        default = int(page.input_value("#max-tokens"))
        health = httpx.get(live.url + "/health").json()
        assert 1 <= default <= min(health["max_tokens_limit"], health["context_length"] // 2)
        page.fill("#message", "Hello")
        page.click("#send")
        page.wait_for_selector(".msg.assistant.done", timeout=30_000)
        assert page.query_selector(".msg.error") is None
        assert page.text_content("#status").startswith("done")
