"""Browser chat UI in a real headless browser (Debian's chromium driven by Playwright).

Waits are event-based: the page counts finished answers and records every change of the chat
with a MutationObserver, so a busy machine makes the tests slower, never wrong.

Also makes the screenshots in docs/: ``python -m tests.generation.test_ui [LORA_DIR]`` chats
with the embedded model (compare mode: base vs LORA_DIR when given) and saves them.
"""
import json
import shutil
import socket
import sys
import time
from pathlib import Path

import pytest

from sftkit.generation import GenerateConfig, Request, build_prompt, generate_answers, load_models

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
                 "--disable-sync", "--no-first-run"]
STEP_SECONDS = 0.03  # each forward pass is slowed this much, so streaming is visible to the browser
WAIT_MS = 300_000  # only guards against a hang

# Counts finished answers (the status line turning into "... tokens in ...") and records every text
# the chats show, as the browser renders them.
OBSERVE = """() => {
  window.finished = 0;
  window.snapshots = [];
  let was = '';
  const last = {};
  new MutationObserver(() => {
    const status = document.querySelector('#status');
    const now = status ? status.innerText : '';
    if (now.includes('tokens in') && !was.includes('tokens in')) window.finished += 1;
    was = now;
    for (const id of ['chat', 'chat_b']) {
      const bots = document.querySelectorAll('#' + id + ' .bot.message');
      const text = bots.length ? bots[bots.length - 1].innerText : '';
      if (bots.length && text !== last[id]) window.snapshots.push([id, bots.length, text]);
      last[id] = text;
    }
  }).observe(document.body, {subtree: true, childList: true, characterData: true});
}"""


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def start_server(config: GenerateConfig, models=None):
    from sftkit.generation.ui import serve

    models = models or load_models(config)
    demo = serve(models, config, block=False)
    return demo, f"http://{config.server_name}:{config.server_port}/"


def launch_browser(playwright):
    return playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)


def send(page, text, press_enter=False):
    page.fill("#message textarea", text)
    if press_enter:
        page.press("#message textarea", "Enter")
    else:
        page.click("#send")


def bot_texts(page, chat="#chat"):
    return page.locator(f"{chat} .bot.message").all_inner_texts()


def wait_finished(page, count):
    """Wait until the page has seen ``count`` answers finish; return the status line."""
    page.wait_for_function(f"window.finished >= {count}", timeout=WAIT_MS)
    return page.inner_text("#status")


@pytest.fixture(scope="module")
def ui(tiny_llama, two_adapters, tiny_reward_model):
    from playwright.sync_api import sync_playwright

    if not Path(CHROMIUM).exists():
        pytest.fail("chromium is not installed: run `make browser` (apt-get install chromium)")
    config = GenerateConfig(base_model=tiny_llama, local_files_only=True, max_new_tokens=24, repetition_penalty=1.0,
                            lora_weights=f"base=,tuned={two_adapters['tuned']}", score_model=tiny_reward_model,
                            server_port=free_port())
    models = load_models(config)
    inner = models.model.get_base_model()  # generate() runs the wrapped model's forward
    inner.register_forward_pre_hook(lambda module, args: time.sleep(STEP_SECONDS))
    demo, url = start_server(config, models)
    from sftkit.generation.scoring import load_scorer

    with sync_playwright() as playwright:
        browser = launch_browser(playwright)
        yield dict(config=config, models=models, url=url, browser=browser, scorer=load_scorer(config))
        browser.close()
    demo.close()


def open_page(ui, external):
    page = ui["browser"].new_page(viewport={"width": 1400, "height": 900})
    page.on("request", lambda request: None if request.url.startswith(ui["url"]) else external.append(request.url))
    page.goto(ui["url"])
    page.wait_for_selector("#message textarea")
    page.wait_for_selector("#status", state="attached")
    page.evaluate(OBSERVE)
    return page


def expected(ui, history, message, model="base", **settings):
    from dataclasses import replace

    config, models = replace(ui["config"], **settings), ui["models"]
    prompt = build_prompt(models.tokenizer, history, message, config, 512)
    answer = generate_answers(models, [Request(prompt.text, model)], config)[0]
    score = ui["scorer"].score([message], [answer.text])[0]
    return answer, score


def shown_answer(text: str) -> str:
    """The text a chat bubble shows (its innerText) without the score line under it and without
    whitespace, which the browser lays out its own way; every other character counts, so an answer
    shown with its markup mangled or escaped twice does not match."""
    return "".join(text.split("reward score")[0].split())


def plain(text: str) -> str:
    """An engine answer compared the way :func:`shown_answer` reads the page: the text of the HTML
    the chat is given for it (its Markdown rendered, any HTML in it escaped), without whitespace."""
    from html.parser import HTMLParser

    from sftkit.generation.ui import shown

    class Text(HTMLParser):
        def __init__(self):
            super().__init__(convert_charrefs=True)
            self.parts = []

        def handle_data(self, data):
            self.parts.append(data)

    parser = Text()
    parser.feed(shown(text))
    parser.close()
    return "".join("".join(parser.parts).split())


def test_messages_are_shown_as_the_characters_typed():
    """What the chat is given for a message shows its HTML-looking text as typed (no browser needed)."""
    from sftkit.generation.ui import shown

    typed = 'if a < b && c > "d": print(\'<div onclick="x()">&amp;</div>\')'
    assert plain(typed) == "".join(typed.split())
    assert "<div" not in shown(typed) and "&lt;div" in shown(typed)
    assert plain("**bold** and `a<b`") == "boldanda<b"  # Markdown is still rendered
    assert "<img" not in shown("![x](http://example.com/a.png)")


@pytest.mark.slow
def test_parameter_panel_shows_the_flag_defaults(ui):
    page = open_page(ui, [])
    config = ui["config"]
    assert page.input_value("#max_new_tokens input[type=number]") == str(config.max_new_tokens)
    assert float(page.input_value("#temperature input[type=number]")) == config.temperature
    assert float(page.input_value("#top_p input[type=number]")) == config.top_p
    assert int(page.input_value("#top_k input[type=number]")) == config.top_k
    assert int(page.input_value("#num_beams input[type=number]")) == config.num_beams
    assert float(page.input_value("#repetition_penalty input[type=number]")) == config.repetition_penalty
    assert page.is_checked("#do_sample input") == config.do_sample
    assert page.input_value("#model_a input") == "base"
    page.close()


@pytest.mark.slow
def test_chat_streams_the_engines_answer_with_its_score_then_regenerate_undo_and_clear(ui):
    external = []
    page = open_page(ui, external)
    want, score = expected(ui, [], "Hello there")
    assert want.new_tokens >= 6, "the tiny model should answer with several tokens"

    send(page, "Hello there")
    page.wait_for_selector("#chat .user.message")
    assert page.input_value("#message textarea") == ""
    status = wait_finished(page, 1)
    assert status.startswith(f"{want.new_tokens} tokens in") and f"score {score:.3f}" in status
    (shown,) = bot_texts(page)
    assert shown_answer(shown) == plain(want.text) and f"reward score {score:.3f}" in shown
    seen = [text for chat, _, text in page.evaluate("window.snapshots") if chat == "chat"]
    distinct = list(dict.fromkeys(shown_answer(t) for t in seen if t.strip()))
    assert len(distinct) >= 3, f"the answer should arrive in pieces, saw {distinct}"
    growing = [plain(want.text[:end]) for end in range(len(want.text) + 1)]  # every prefix, as the chat shows it
    assert all(snapshot in growing for snapshot in distinct), "each snapshot shows a prefix of the answer"
    assert [growing.index(snapshot) for snapshot in distinct] == sorted(growing.index(s) for s in distinct)

    page.click("#regenerate")
    wait_finished(page, 2)
    assert [shown_answer(t) for t in bot_texts(page)] == [plain(want.text)], "greedy: regenerated to the same answer"
    assert page.locator("#chat .user.message").count() == 1

    send(page, "And again", press_enter=True)
    wait_finished(page, 3)
    second, _ = expected(ui, [("Hello there", want.text)], "And again")
    assert [shown_answer(t) for t in bot_texts(page)] == [plain(want.text), plain(second.text)]

    page.click("#undo")
    page.wait_for_function("document.querySelectorAll('#chat .user.message').length === 1", timeout=WAIT_MS)
    assert len(bot_texts(page)) == 1

    page.click("#clear")
    page.wait_for_function("document.querySelectorAll('#chat .message').length === 0", timeout=WAIT_MS)
    assert page.inner_text("#status").strip() == ""
    send(page, "Hello there")  # after a clear the next answer starts a fresh conversation
    wait_finished(page, 4)
    assert [shown_answer(t) for t in bot_texts(page)] == [plain(want.text)]
    assert external == [], f"the page reached outside the server: {external}"
    page.close()


@pytest.mark.slow
def test_compare_streams_two_models_side_by_side_with_scores(ui, tmp_path):
    page = open_page(ui, [])
    page.click("#compare input")
    page.wait_for_selector("#chat_b", state="visible")
    assert page.input_value("#model_b input") == "tuned"
    question = "Who are you?"
    base, base_score = expected(ui, [], question, "base")
    tuned, tuned_score = expected(ui, [], question, "tuned")
    assert base.text != tuned.text
    send(page, question)
    status = wait_finished(page, 1)
    assert f"base: {base.new_tokens} tokens in" in status and f"tuned: {tuned.new_tokens} tokens in" in status
    (left,), (right,) = bot_texts(page, "#chat"), bot_texts(page, "#chat_b")
    assert shown_answer(left) == plain(base.text) and f"reward score {base_score:.3f}" in left
    assert shown_answer(right) == plain(tuned.text) and f"reward score {tuned_score:.3f}" in right
    # streamed together: the right answer grew before the left one was complete
    snapshots = page.evaluate("window.snapshots")
    first_right = next(i for i, (chat, _, text) in enumerate(snapshots) if chat == "chat_b" and text.strip())
    last_left_growth = max(i for i, (chat, _, text) in enumerate(snapshots)
                           if chat == "chat" and shown_answer(text) != plain(base.text))
    assert first_right < last_left_growth

    page.screenshot(path=str(tmp_path / "compare.png"))

    # export, clear, import: the same conversation on both sides
    with page.expect_download() as download:
        page.click("#export")
    exported = json.loads(Path(download.value.path()).read_text())
    assert exported["model"] == "base" and exported["messages"] == [{"human": question, "bot": base.text}]
    assert exported["compare"] == {"model": "tuned", "messages": [{"human": question, "bot": tuned.text}]}
    page.click("#clear")
    page.wait_for_function("document.querySelectorAll('#chat .message').length === 0", timeout=WAIT_MS)
    saved = tmp_path / "conversation.json"
    saved.write_text(json.dumps(exported))
    with page.expect_file_chooser() as chooser:
        page.click("#import")
    chooser.value.set_files(str(saved))
    page.wait_for_function("document.querySelectorAll('#chat_b .bot.message').length === 1", timeout=WAIT_MS)
    assert [shown_answer(t) for t in bot_texts(page, "#chat")] == [plain(base.text)]
    assert [shown_answer(t) for t in bot_texts(page, "#chat_b")] == [plain(tuned.text)]
    page.close()


@pytest.mark.slow
def test_empty_message_is_rejected_with_a_message(ui):
    from sftkit.generation.ui import EMPTY_MESSAGE

    page = open_page(ui, [])
    send(page, "   ")
    page.get_by_text(EMPTY_MESSAGE).first.wait_for(timeout=WAIT_MS)
    assert page.locator("#chat .message").count() == 0
    page.close()


@pytest.mark.slow
def test_two_tabs_asking_at_once_both_get_answers(ui):
    texts = ["Hello there", "What is the capital of France?"]
    pages = [open_page(ui, []), open_page(ui, [])]
    for page, text in zip(pages, texts):
        send(page, text)
    for page, text in zip(pages, texts):
        status = wait_finished(page, 1)
        want, _ = expected(ui, [], text)
        assert status.startswith(f"{want.new_tokens} tokens in")
        assert [shown_answer(t) for t in bot_texts(page)] == [plain(want.text)]
        assert page.locator("#chat .user.message").inner_text() == text
        page.close()


@pytest.mark.slow
def test_stop_button_ends_a_long_answer_and_the_server_keeps_serving(ui):
    page = open_page(ui, [])
    page.fill("#max_new_tokens input[type=number]", "400")
    page.press("#max_new_tokens input[type=number]", "Enter")
    story = "Write a very long poem about the sea"
    natural, _ = expected(ui, [], story, max_new_tokens=400)
    assert natural.new_tokens > 100, "the tiny model talks for 100+ tokens here"
    send(page, story)
    page.wait_for_function("window.snapshots.some(s => s[2].trim().length > 0)", timeout=WAIT_MS)
    page.click("#stop")
    status = wait_finished(page, 1)
    assert "stopped" in status and int(status.split()[0]) < natural.new_tokens
    page.fill("#max_new_tokens input[type=number]", "8")
    page.press("#max_new_tokens input[type=number]", "Enter")
    send(page, "Hello there")
    status = wait_finished(page, 2)
    assert "stopped" not in status
    page.close()


def screenshots(lora_dir: str | None = None, docs: str = "docs"):
    """Chat with the embedded model in the browser UI and save screenshots (compare mode with an adapter)."""
    from playwright.sync_api import sync_playwright

    lora = f"base=,tuned={lora_dir}" if lora_dir else None
    config = GenerateConfig(prompt_type="human_bot", max_new_tokens=48, server_port=free_port(), lora_weights=lora)
    demo, url = start_server(config)
    try:
        with sync_playwright() as playwright:
            browser = launch_browser(playwright)
            page = browser.new_page(viewport={"width": 1400, "height": 820})
            page.goto(url)
            page.wait_for_selector("#message textarea")
            page.wait_for_selector("#status", state="attached")
            page.evaluate(OBSERVE)
            if lora_dir:
                page.click("#compare input")
                page.wait_for_selector("#chat_b", state="visible")
            for n, text in enumerate(["Who are you?", "What is the capital of France?"], 1):
                send(page, text)
                wait_finished(page, n)
            path = f"{docs}/ui_compare.png" if lora_dir else f"{docs}/ui.png"
            page.screenshot(path=path)
            print(f"wrote {path}")
            browser.close()
    finally:
        demo.close()


if __name__ == "__main__":
    screenshots(*sys.argv[1:])
