"""Browser chat UI in a real headless browser (Debian's chromium driven by Playwright).

Also makes docs/ui.png: ``python -m tests.test_ui`` chats with the embedded model and screenshots it.
"""
import shutil
import socket
import sys
import time
from pathlib import Path

import pytest

from sftkit.generation import GenerateConfig, build_prompt, generate_answers, load_models

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
                 "--disable-sync", "--no-first-run"]
STEP_SECONDS = 0.03  # each forward pass is slowed this much, so streaming is visible to the browser


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def start_server(config: GenerateConfig, models=None):
    from sftkit.generation.ui import serve

    models = models or load_models(config)
    started = time.monotonic()
    demo = serve(models, config, block=False)
    return demo, f"http://{config.server_name}:{config.server_port}/", time.monotonic() - started


def launch_browser(playwright):
    return playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)


def send(page, text, press_enter=False):
    page.fill("#message textarea", text)
    if press_enter:
        page.press("#message textarea", "Enter")
    else:
        page.click("#send")


def bot_messages(page):
    return page.locator("#chat .bot.message")


def wait_for_answer(page, count, timeout=60):
    """Wait until the status line reports the ``count``-th finished answer; return the texts seen meanwhile."""
    seen = []
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        bots = bot_messages(page)
        if bots.count() >= count:
            text = bots.nth(count - 1).inner_text()
            if text and (not seen or seen[-1] != text):
                seen.append(text)
        # Each streamed update clears the status line; the last one fills it in.
        status = page.inner_text("#status")
        if "tokens in" in status and seen and seen[-1] == bots.nth(count - 1).inner_text():
            return seen, status
        time.sleep(0.02)
    raise AssertionError(f"no answer {count} within {timeout} s; saw {seen}")


@pytest.fixture(scope="module")
def ui(tiny_llama):
    from playwright.sync_api import sync_playwright

    if not Path(CHROMIUM).exists():
        pytest.fail("chromium is not installed: run `make browser` (apt-get install chromium)")
    config = GenerateConfig(base_model=tiny_llama, local_files_only=True, max_new_tokens=24,
                            repetition_penalty=1.0, server_port=free_port())
    models = load_models(config)
    model, tokenizer = models.model, models.tokenizer
    model.register_forward_pre_hook(lambda module, args: time.sleep(STEP_SECONDS))
    demo, url, launch_seconds = start_server(config, models)
    with sync_playwright() as playwright:
        browser = launch_browser(playwright)
        yield dict(config=config, model=model, tokenizer=tokenizer, url=url, browser=browser,
                   launch_seconds=launch_seconds)
        browser.close()
    demo.close()


def open_page(ui, external):
    page = ui["browser"].new_page()
    page.on("request", lambda request: None if request.url.startswith(ui["url"]) else external.append(request.url))
    page.goto(ui["url"])
    page.wait_for_selector("#message textarea")
    return page


def expected_tokens(ui, history, message):
    config, model, tokenizer = ui["config"], ui["model"], ui["tokenizer"]
    prompt = build_prompt(tokenizer, history, message, config, 512)
    return generate_answers(model, tokenizer, [prompt.text], config)[0]


@pytest.mark.slow
def test_chat_streams_then_undo_and_clear(ui):
    external = []
    page = open_page(ui, external)
    assert ui["launch_seconds"] < 30, "launch must not wait on the network"
    expected = expected_tokens(ui, [], "Hello there")
    assert expected.new_tokens >= 6, "the tiny model should answer with several tokens"

    send(page, "Hello there")
    page.wait_for_selector("#chat .user.message")
    assert page.input_value("#message textarea") == ""
    seen, status = wait_for_answer(page, 1)
    assert len(seen) >= 3, f"the answer should arrive in pieces, saw {seen}"
    assert all(len(a) <= len(b) for a, b in zip(seen, seen[1:]))
    assert status.startswith(f"{expected.new_tokens} tokens in")

    send(page, "And again", press_enter=True)
    wait_for_answer(page, 2)
    assert bot_messages(page).count() == 2 and page.locator("#chat .user.message").count() == 2

    page.click("#undo")
    page.wait_for_function("document.querySelectorAll('#chat .user.message').length === 1")
    assert bot_messages(page).count() == 1

    page.click("#clear")
    page.wait_for_function("document.querySelectorAll('#chat .message').length === 0")
    assert page.inner_text("#status").strip() == ""
    # after a clear the next answer starts a fresh conversation
    send(page, "Hello there")
    _, status = wait_for_answer(page, 1)
    assert status.startswith(f"{expected.new_tokens} tokens in")
    assert external == [], f"the page reached outside the server: {external}"
    page.close()


@pytest.mark.slow
def test_empty_message_is_rejected_with_a_message(ui):
    from sftkit.generation.ui import EMPTY_MESSAGE

    page = open_page(ui, [])
    send(page, "   ")
    page.get_by_text(EMPTY_MESSAGE).first.wait_for(timeout=10_000)
    assert page.locator("#chat .message").count() == 0
    page.close()


@pytest.mark.slow
def test_two_tabs_asking_at_once_both_get_answers(ui):
    pages = [open_page(ui, []), open_page(ui, [])]
    for page, text in zip(pages, ["Hello there", "What is the capital of France?"]):
        send(page, text)
    for page, text in zip(pages, ["Hello there", "What is the capital of France?"]):
        _, status = wait_for_answer(page, 1)
        assert status.startswith(f"{expected_tokens(ui, [], text).new_tokens} tokens in")
        assert page.locator("#chat .user.message").inner_text() == text
        page.close()


@pytest.mark.slow
def test_stop_button_ends_a_long_answer_and_the_server_keeps_serving(ui):
    page = open_page(ui, [])
    page.fill("#max_new_tokens input[type=number]", "400")
    page.press("#max_new_tokens input[type=number]", "Enter")
    send(page, "Tell me a long story")
    bot_messages(page).first.wait_for()
    started = time.monotonic()
    page.click("#stop")
    _, status = wait_for_answer(page, 1)
    assert "stopped" in status and int(status.split()[0]) < 400
    assert time.monotonic() - started < 400 * STEP_SECONDS / 2
    page.fill("#max_new_tokens input[type=number]", "8")
    page.press("#max_new_tokens input[type=number]", "Enter")
    send(page, "Hello there")
    _, status = wait_for_answer(page, 2)
    assert "stopped" not in status
    page.close()


def screenshot(path="docs/ui.png"):
    """Chat with the embedded model in the browser UI and save a screenshot of the conversation."""
    from playwright.sync_api import sync_playwright

    config = GenerateConfig(prompt_type="chat", max_new_tokens=80, server_port=free_port())
    demo, url, _ = start_server(config)
    try:
        with sync_playwright() as playwright:
            browser = launch_browser(playwright)
            page = browser.new_page(viewport={"width": 1280, "height": 800})
            page.goto(url)
            for n, text in enumerate(["What is the capital of France?", "Name three things to see there."], 1):
                send(page, text)
                wait_for_answer(page, n, timeout=180)
            page.screenshot(path=path)
            browser.close()
    finally:
        demo.close()
    print(f"wrote {path}")


if __name__ == "__main__":
    screenshot(*sys.argv[1:])
