"""Browser chat UI (gradio 6): chat with history, a model picker, compare mode, reward scores.

* **Model picker**: the base model and every adapter of ``--lora_weights`` (one load, no reload).
* **Compare**: one message, two answers side by side (say base and fine-tuned), generated as one
  batch of two rows and streamed together.
* **Regenerate / Undo / Clear / Stop**, and **Export / Import** of the conversation as JSON.
* With ``--score_model`` each answer shows its reward-model score (the grade stage's scorer).

Text is shown as text: every message (typed, generated or imported) is rendered here as Markdown
with raw HTML escaped and images turned into links (:func:`shown`), so no message can restyle the
page, add a form, or make the browser fetch anything.

One model serves every browser tab: answers go through gradio's queue one at a time, so two tabs
asking at once both get answers (the second waits for the first). The Stop button and the light
actions (undo, clear, accepting a message) run outside that queue so they work while a tab streams.
The page loads nothing from the internet (gradio 6 ships its fonts; analytics stay off). The
callbacks are the methods of :class:`ChatUi`, which a test can call without a browser.
"""
from __future__ import annotations

import functools
import html
import json
import math
import os
import tempfile
import threading
from dataclasses import dataclass, field, replace
from pathlib import Path

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")  # before gradio is imported: no phoning home

import gradio as gr  # noqa: E402
from markdown_it import MarkdownIt  # noqa: E402

from sftkit import atomic  # noqa: E402
from sftkit.errors import GenerationError  # noqa: E402
from sftkit.generation.config import GenerateConfig  # noqa: E402
from sftkit.generation.engine import BatchStream, Request  # noqa: E402
from sftkit.generation.loading import Models  # noqa: E402
from sftkit.generation.prompting import context_length  # noqa: E402
from sftkit.generation.scoring import load_scorer  # noqa: E402
from sftkit.generation.session import FORMAT, ChatSession  # noqa: E402

EMPTY_MESSAGE = "Type a message first: an empty message is not sent."
SIDES = ("a", "b")


# ---------------------------------------------------------------- text shown as text

def _image_as_link(renderer, tokens, index, options, env) -> str:
    """An image becomes a link to it, labelled with its alt text: nothing is fetched."""
    token = tokens[index]
    source = token.attrGet("src") or ""
    label = renderer.renderInlineAsText(token.children or [], options, env) or source
    return f'<a href="{html.escape(source)}">{html.escape(label)}</a>'


# Markdown without raw HTML, and without entity references: "&amp;" typed is shown as typed.
_MARKDOWN = MarkdownIt("commonmark", {"html": False, "breaks": True})
_MARKDOWN.enable(["table", "strikethrough"]).disable("entity")
_MARKDOWN.add_render_rule("image", _image_as_link)


@functools.lru_cache(maxsize=4096)  # every streamed piece re-shows the whole chat
def shown(text: str) -> str:
    """A message as the chat shows it: Markdown rendered to HTML, any HTML or entity in the text escaped
    (shown as the characters typed), images as links, unsafe link targets (``javascript:``) left as text."""
    return _MARKDOWN.render(text)


# ---------------------------------------------------------------- conversations

def new_state() -> dict:
    """Per-tab state: each side's exchanges and the reward score of each answer (None: unscored)."""
    return {"a": [], "b": [], "scores_a": [], "scores_b": []}


def _messages(exchanges: list[list], scores: list) -> list[dict]:
    """(human, bot) exchanges as the chatbot's message dicts; a pending answer shows nothing yet.

    A score is shown under its answer only: the history sent to the model holds the answer alone.
    """
    out = []
    for n, (human, bot) in enumerate(exchanges):
        out.append({"role": "user", "content": shown(human)})
        if bot is not None:
            score = scores[n] if n < len(scores) else None
            suffix = f"<p><em>reward score {score:.3f}</em></p>" if score is not None else ""
            out.append({"role": "assistant", "content": shown(bot) + suffix})
    return out


def export_json(state: dict, model_a: str, model_b: str, compare: bool) -> str:
    """The conversation (both sides in compare mode) as JSON."""
    data = {"format": FORMAT, "model": model_a,
            "messages": [{"human": h, "bot": b} for h, b in ChatSession(state["a"]).history()]}
    if compare:
        data["compare"] = {"model": model_b,
                           "messages": [{"human": h, "bot": b} for h, b in ChatSession(state["b"]).history()]}
    return json.dumps(data, ensure_ascii=False, indent=1)


def import_json(text: str, where: str) -> tuple[dict, str | None, str | None]:
    """State and models of an exported conversation."""
    state = new_state()
    state["a"] = ChatSession.from_json(text, where).exchanges
    data = json.loads(text)
    model_b = None
    if isinstance(data, dict) and isinstance(data.get("compare"), dict):
        state["b"] = ChatSession.from_json(json.dumps(data["compare"]), where).exchanges
        model_b = data["compare"].get("model")
    for side in SIDES:
        state[f"scores_{side}"] = [None] * len(state[side])
    return state, (data.get("model") if isinstance(data, dict) else None), model_b


def _sides(compare: bool) -> tuple[str, ...]:
    return SIDES if compare else SIDES[:1]


def _views(state: dict) -> tuple[list, list]:
    return tuple(_messages(state[side], state[f"scores_{side}"]) for side in SIDES)


def _seed(value) -> int | None:
    """The seed box: empty (or not a number) is fresh randomness; 0 is a seed like any other."""
    return None if value is None or (isinstance(value, float) and math.isnan(value)) else int(value)


@dataclass
class ChatUi:
    """The UI's callbacks over the models, the server's settings and the optional scorer; ``running``
    holds each tab's Stop switch while it answers."""

    models: Models
    config: GenerateConfig
    scorer: object | None = None
    running: dict[str, threading.Event] = field(default_factory=dict)
    export_dir: Path = field(default_factory=lambda: Path(tempfile.mkdtemp(prefix="sftkit-chat-")))

    def export_file(self, state, model_a, model_b, compare, request: gr.Request | None = None) -> str:
        path = self.export_dir / f"conversation-{request.session_hash if request else 'tab'}.json"
        atomic.write_text(path, export_json(state, model_a, model_b, compare))
        return str(path)

    def accept(self, message: str, state: dict, compare: bool):
        if not message.strip():
            raise gr.Error(EMPTY_MESSAGE, duration=5, print_exception=False)
        if compare and len(state["b"]) != len(state["a"]):  # compare switched on mid-conversation: same history
            state["b"] = [list(e) for e in state["a"]]
            state["scores_b"] = list(state["scores_a"])
        for side in _sides(compare):
            try:
                ChatSession(state[side]).ask(message)
            except GenerationError as exc:
                raise gr.Error(str(exc), print_exception=False) from None
        return "", state, *_views(state)

    def respond(self, state, compare, model_a, model_b, system, do_sample, temperature, top_p, top_k, num_beams,
                max_new_tokens, repetition_penalty, seed, request: gr.Request):
        active = _sides(compare)
        if not ChatSession(state["a"]).pending:
            return
        names = {"a": model_a, "b": model_b}
        try:
            settings = replace(self.config, system_prompt=system, do_sample=bool(do_sample),
                               temperature=float(temperature), top_p=float(top_p), top_k=int(top_k),
                               num_beams=int(num_beams), max_new_tokens=int(max_new_tokens),
                               repetition_penalty=float(repetition_penalty), seed=_seed(seed))
            context = context_length(self.models.model, settings)
            requests = []
            for side in active:
                prompt = ChatSession(state[side]).prompt(self.models.tokenizer, settings, context)
                if prompt.warning():
                    gr.Warning(prompt.warning())
                requests.append(Request(prompt.text, self.models.resolve(names[side])))
        except GenerationError as exc:
            for side in active:
                ChatSession(state[side]).drop_pending()
            yield state, *_views(state), "", self.export_file(state, model_a, model_b, compare, request)
            raise gr.Error(str(exc), print_exception=False) from None
        cancel = self.running[request.session_hash] = threading.Event()
        stream = BatchStream(self.models, requests, settings, cancel=cancel)
        texts = [""] * len(active)
        for side in active:
            ChatSession(state[side]).answer("")
        try:
            for row, piece in stream:
                texts[row] += piece
                ChatSession(state[active[row]]).answer(texts[row])
                if self.config.stream_output:
                    yield state, *_views(state), "", gr.skip()
        finally:
            self.running.pop(request.session_hash, None)
        answers = stream.answers
        scores = [None] * len(active)
        if self.scorer is not None:
            human = state["a"][-1][0]
            scores = [float(s) for s in self.scorer.score([human] * len(answers), [a.text for a in answers])]
        status = []
        for side, answer, score in zip(active, answers, scores):
            ChatSession(state[side]).answer(answer.text)
            state[f"scores_{side}"] = state[f"scores_{side}"][:len(state[side]) - 1] + [score]
            rate = answer.new_tokens / answer.seconds if answer.seconds else 0.0
            stopped = " · stopped" if answer.finish_reason == "cancelled" else ""
            scored = f" · score {score:.3f}" if score is not None else ""
            label = f"{names[side]}: " if compare else ""
            status.append(f"{label}{answer.new_tokens} tokens in {answer.seconds:.1f} s ({rate:.1f} tokens/s)"
                          f"{scored}{stopped}")
        yield state, *_views(state), " | ".join(status), self.export_file(state, model_a, model_b, compare, request)

    def stop(self, request: gr.Request):
        if request.session_hash in self.running:
            self.running[request.session_hash].set()

    def regenerate(self, state, compare):
        if not all(ChatSession(state[side]).regenerate() for side in _sides(compare)):
            raise gr.Error("nothing to regenerate yet: ask something first", duration=5, print_exception=False)
        for side in _sides(compare):
            state[f"scores_{side}"] = state[f"scores_{side}"][:len(state[side]) - 1]
        return state, *_views(state)

    def undo(self, state, compare, model_a, model_b, request: gr.Request):
        for side in SIDES:
            if ChatSession(state[side]).undo():
                state[f"scores_{side}"] = state[f"scores_{side}"][:len(state[side])]
        return state, *_views(state), self.export_file(state, model_a, model_b, compare, request)

    def clear(self, model_a, model_b, compare, request: gr.Request):
        state = new_state()
        return state, *_views(state), "", self.export_file(state, model_a, model_b, compare, request)

    def load(self, file, model_a, model_b, compare, request: gr.Request):
        path = file if isinstance(file, str) else getattr(file, "name", file)
        try:
            state, saved_a, saved_b = import_json(Path(path).read_text(encoding="utf-8"), Path(path).name)
        except (GenerationError, UnicodeDecodeError) as exc:
            raise gr.Error(f"cannot import {Path(path).name}: {exc}", print_exception=False) from None
        model_a = saved_a if saved_a in self.models.names else model_a
        model_b = saved_b if saved_b in self.models.names else model_b
        compare = compare or bool(state["b"])
        return (state, *_views(state), model_a, model_b, compare,
                self.export_file(state, model_a, model_b, compare, request))

    @staticmethod
    def show_compare(compare):
        return gr.update(visible=compare), gr.update(visible=compare)


def build_ui(models: Models, config: GenerateConfig, scorer=None) -> gr.Blocks:
    """The gradio Blocks app chatting with ``models``; parameters default to ``config``'s."""
    ui = ChatUi(models, config, scorer)
    context = context_length(models.model, config)
    second = next((name for name in models.names if name != models.default), models.default)
    chat_options = dict(height=440, buttons=["copy"], feedback_options=None, render_markdown=False,
                        sanitize_html=True)
    with gr.Blocks(title="sftkit chat") as demo:
        gr.Markdown(f"### sftkit chat · `{config.base_model}` · prompt type `{config.prompt_type}`")
        state = gr.State(new_state())
        with gr.Row():
            model_a = gr.Dropdown(models.names, value=models.default, label="Model", elem_id="model_a", scale=2)
            compare = gr.Checkbox(False, label="Compare two models side by side", elem_id="compare", scale=1)
            model_b = gr.Dropdown(models.names, value=second, label="Compare with", elem_id="model_b", scale=2,
                                  visible=False)
        with gr.Row():
            with gr.Column(scale=3):
                with gr.Row():
                    chat_a = gr.Chatbot(label="Chat", elem_id="chat", placeholder="Ask something to start the chat.",
                                        **chat_options)
                    chat_b = gr.Chatbot(label="Compared", elem_id="chat_b", visible=False, **chat_options)
                with gr.Row():
                    message = gr.Textbox(show_label=False, placeholder="Type a message and press Enter",
                                         elem_id="message", scale=6, autofocus=True)
                    send = gr.Button("Send", variant="primary", elem_id="send", scale=1, min_width=80)
                with gr.Row():
                    stop_button = gr.Button("Stop", elem_id="stop", variant="stop")
                    regenerate_button = gr.Button("Regenerate", elem_id="regenerate")
                    undo_button = gr.Button("Undo", elem_id="undo")
                    clear_button = gr.Button("Clear", elem_id="clear")
                with gr.Row():
                    export_button = gr.DownloadButton("Export JSON", elem_id="export", size="sm")
                    import_button = gr.UploadButton("Import JSON", file_types=[".json"], elem_id="import", size="sm")
                status = gr.Markdown("", elem_id="status")
            with gr.Column(scale=1, min_width=260):
                gr.Markdown("**Parameters**")
                system = gr.Textbox(config.system_prompt, label="System prompt", lines=2, elem_id="system")
                do_sample = gr.Checkbox(config.do_sample, label="Sample (off: greedy or beam search)",
                                        elem_id="do_sample")
                temperature = gr.Slider(0.01, 2.0, value=config.temperature, step=0.01, label="Temperature",
                                        elem_id="temperature")
                top_p = gr.Slider(0.01, 1.0, value=config.top_p, step=0.01, label="Top p", elem_id="top_p")
                top_k = gr.Slider(0, 200, value=config.top_k, step=1, label="Top k (0: no limit)", elem_id="top_k")
                num_beams = gr.Slider(1, 8, value=config.num_beams, step=1, label="Beams (>1: no streaming)",
                                      elem_id="num_beams")
                max_new_tokens = gr.Slider(1, max(context - 8, config.max_new_tokens), value=config.max_new_tokens,
                                           step=1, label="Max new tokens", elem_id="max_new_tokens")
                repetition_penalty = gr.Slider(1.0, 2.0, value=config.repetition_penalty, step=0.01,
                                               label="Repetition penalty", elem_id="repetition_penalty")
                seed = gr.Number(config.seed, precision=0, label="Seed (empty: random)", elem_id="seed")
        parameters = [system, do_sample, temperature, top_p, top_k, num_beams, max_new_tokens,
                      repetition_penalty, seed]
        chats = [chat_a, chat_b]
        answer_inputs = [state, compare, model_a, model_b, *parameters]
        answer_outputs = [state, *chats, status, export_button]
        light = dict(concurrency_limit=None, show_progress="hidden")

        for trigger in (message.submit, send.click):
            trigger(ui.accept, [message, state, compare], [message, state, *chats], **light).success(
                ui.respond, answer_inputs, answer_outputs, concurrency_id="model", show_progress="hidden")
        regenerate_button.click(ui.regenerate, [state, compare], [state, *chats], **light).success(
            ui.respond, answer_inputs, answer_outputs, concurrency_id="model", show_progress="hidden")
        stop_button.click(ui.stop, None, None, **light)
        undo_button.click(ui.undo, [state, compare, model_a, model_b], [state, *chats, export_button], **light)
        for trigger in (clear_button.click, chat_a.clear):
            trigger(ui.clear, [model_a, model_b, compare], [state, *chats, status, export_button], **light)
        import_button.upload(ui.load, [import_button, model_a, model_b, compare],
                             [state, *chats, model_a, model_b, compare, export_button], **light)
        compare.change(ui.show_compare, compare, [model_b, chat_b], **light)
    return demo


def serve(models: Models, config: GenerateConfig, *, block: bool = True) -> gr.Blocks:
    """Launch the UI on ``server_name:server_port`` (127.0.0.1:7860 by default; no share link unless asked)."""
    scorer = load_scorer(config) if config.score_model else None
    demo = build_ui(models, config, scorer)
    demo.queue(default_concurrency_limit=1)
    theme = gr.themes.Default(primary_hue="orange", secondary_hue="slate")
    demo.launch(server_name=config.server_name, server_port=config.port(), share=config.share,
                prevent_thread_lock=not block, ssr_mode=False, theme=theme, footer_links=[],
                show_error=True, allowed_paths=[])
    return demo
