"""Browser chat UI (gradio 6): chat view with history, parameter panel, Send / Stop / Undo / Clear.

One model serves every browser tab: answers go through gradio's queue one at a time, so two tabs
asking at once both get answers (the second waits for the first). The Stop button and the light
actions (undo, clear, accepting a message) run outside that queue so they work while a tab streams.
The page loads nothing from the internet (gradio 6 ships its fonts; analytics stay off).
"""
import os
import threading
from dataclasses import replace
from pathlib import Path

from sftkit.errors import GenerationError
from sftkit.generation.config import GenerateConfig
from sftkit.generation.engine import AnswerStream, Models, build_prompt, context_length

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")  # before gradio is imported: no phoning home

EMPTY_MESSAGE = "Type a message first: an empty message is not sent."


def _messages(history: list[list]) -> list[dict]:
    """(human, bot) exchanges as the chatbot's message dicts; a pending answer shows nothing yet."""
    shown = []
    for human, bot in history:
        shown.append({"role": "user", "content": human})
        if bot is not None:
            shown.append({"role": "assistant", "content": bot})
    return shown


def _title(config: GenerateConfig) -> str:
    adapter = f" + `{Path(config.lora_weights).name}`" if config.lora_weights else ""
    return f"### sftkit chat · `{config.base_model}`{adapter} · prompt type `{config.prompt_type}`"


def build_ui(models: Models, config: GenerateConfig):
    """The gradio Blocks app chatting with ``model``; parameters default to ``config``'s."""
    import gradio as gr

    model, tokenizer = models.model, models.tokenizer
    context = context_length(model, config)
    running: dict[str, threading.Event] = {}  # session -> the Stop switch of its running answer

    def accept(message: str, history: list[list]):
        if not message.strip():
            raise gr.Error(EMPTY_MESSAGE, duration=5, print_exception=False)
        history = history + [[message.strip(), None]]
        return "", history, _messages(history)

    def respond(history, system, do_sample, temperature, top_p, top_k, num_beams, max_new_tokens,
                repetition_penalty, seed, request: gr.Request):
        if not history or history[-1][1] is not None:
            return
        settings = replace(config, system_prompt=system, do_sample=bool(do_sample), temperature=float(temperature),
                           top_p=float(top_p), top_k=int(top_k), num_beams=int(num_beams),
                           max_new_tokens=int(max_new_tokens), repetition_penalty=float(repetition_penalty),
                           seed=int(seed or 0))
        past = [(human, bot) for human, bot in history[:-1]]
        try:
            prompt = build_prompt(tokenizer, past, history[-1][0], settings, context)
        except GenerationError as exc:
            history = history[:-1]
            yield history, _messages(history), ""
            raise gr.Error(str(exc), print_exception=False) from None
        if prompt.warning():
            gr.Warning(prompt.warning())
        cancel = running[request.session_hash] = threading.Event()
        stream = AnswerStream(model, tokenizer, prompt.text, settings, cancel=cancel)
        history[-1][1] = ""
        try:
            for piece in stream:
                history[-1][1] += piece
                yield history, _messages(history), ""
        finally:
            running.pop(request.session_hash, None)
        answer = stream.answer
        stopped = " · stopped" if answer.finish_reason == "cancelled" else ""
        rate = answer.new_tokens / answer.seconds if answer.seconds else 0.0
        yield history, _messages(history), (f"{answer.new_tokens} tokens in {answer.seconds:.1f} s "
                                            f"({rate:.1f} tokens/s){stopped}")

    def stop(request: gr.Request):
        if request.session_hash in running:
            running[request.session_hash].set()

    def undo(history):
        if history and history[-1][1] is None:  # still waiting: not undoable yet
            return history, _messages(history)
        history = history[:-1]
        return history, _messages(history)

    def clear():
        return [], [], ""

    with gr.Blocks(title="sftkit chat") as demo:
        gr.Markdown(_title(config))
        history = gr.State([])
        with gr.Row():
            with gr.Column(scale=3):
                chatbot = gr.Chatbot(label="Chat", elem_id="chat", height=440, buttons=["copy"],
                                     feedback_options=None, placeholder="Ask something to start the chat.")
                with gr.Row():
                    message = gr.Textbox(show_label=False, placeholder="Type a message and press Enter",
                                         elem_id="message", scale=6, autofocus=True)
                    send = gr.Button("Send", variant="primary", elem_id="send", scale=1, min_width=80)
                with gr.Row():
                    stop_button = gr.Button("Stop", elem_id="stop", variant="stop")
                    undo_button = gr.Button("Undo", elem_id="undo")
                    clear_button = gr.Button("Clear", elem_id="clear")
                status = gr.Markdown("", elem_id="status")
            with gr.Column(scale=1, min_width=260):
                gr.Markdown("**Parameters**")
                system = gr.Textbox(config.system_prompt, label="System prompt", lines=2)
                do_sample = gr.Checkbox(config.do_sample, label="Sample (off: greedy or beam search)")
                temperature = gr.Slider(0.01, 2.0, value=config.temperature, step=0.01, label="Temperature")
                top_p = gr.Slider(0.0, 1.0, value=config.top_p, step=0.01, label="Top p")
                top_k = gr.Slider(0, 200, value=config.top_k, step=1, label="Top k (0: no limit)")
                num_beams = gr.Slider(1, 8, value=config.num_beams, step=1, label="Beams (>1: no streaming)")
                max_new_tokens = gr.Slider(1, max(context - 8, config.max_new_tokens), value=config.max_new_tokens,
                                           step=1, label="Max new tokens", elem_id="max_new_tokens")
                repetition_penalty = gr.Slider(1.0, 2.0, value=config.repetition_penalty, step=0.01,
                                               label="Repetition penalty")
                seed = gr.Number(config.seed, precision=0, label="Seed (0: random)")
        parameters = [system, do_sample, temperature, top_p, top_k, num_beams, max_new_tokens,
                      repetition_penalty, seed]

        for trigger in (message.submit, send.click):
            trigger(accept, [message, history], [message, history, chatbot], concurrency_limit=None,
                    show_progress="hidden").success(
                respond, [history, *parameters], [history, chatbot, status], concurrency_id="model",
                show_progress="hidden")
        stop_button.click(stop, None, None, concurrency_limit=None, show_progress="hidden")
        undo_button.click(undo, history, [history, chatbot], concurrency_limit=None, show_progress="hidden")
        clear_button.click(clear, None, [history, chatbot, status], concurrency_limit=None, show_progress="hidden")
        chatbot.clear(clear, None, [history, chatbot, status], concurrency_limit=None, show_progress="hidden")
    return demo


def serve(models: Models, config: GenerateConfig, *, block: bool = True):
    """Launch the UI on ``server_name:server_port`` (127.0.0.1 by default; no share link unless asked)."""
    import gradio as gr

    demo = build_ui(models, config)
    demo.queue(default_concurrency_limit=1)
    theme = gr.themes.Default(primary_hue="orange", secondary_hue="slate")
    demo.launch(server_name=config.server_name, server_port=config.port(), share=config.share,
                prevent_thread_lock=not block, ssr_mode=False, theme=theme, footer_links=[],
                show_error=True)
    return demo
