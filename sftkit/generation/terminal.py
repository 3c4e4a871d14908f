"""Terminal chat (``generate.py --cli=True``): streamed answers, multi-turn history, Ctrl-C stops an answer.

Commands: ``/undo`` drops the last exchange, ``/regenerate`` answers the last message again,
``/clear`` forgets the whole history, ``/save FILE`` and ``/load FILE`` export and import the
conversation as JSON, ``/quit`` (or Ctrl-D) ends.
"""
from __future__ import annotations

import sys
from typing import Callable, TextIO

from sftkit import atomic
from sftkit.errors import GenerationError
from sftkit.generation.config import GenerateConfig
from sftkit.generation.engine import AnswerStream, Request
from sftkit.generation.loading import Models
from sftkit.generation.prompting import context_length
from sftkit.generation.session import ChatSession

HELP = ("Type a message and press Enter. /undo drops the last exchange, /regenerate answers it again, /clear the "
        "history, /save FILE and /load FILE keep it as JSON, /quit ends (or Ctrl-D). Ctrl-C stops an answer.")


def chat_loop(models: Models, config: GenerateConfig, *, read: Callable[[str], str] = input,
              out: TextIO | None = None, model: str | None = None) -> list[tuple[str, str]]:
    """Chat until /quit or end of input; returns the history as (human, bot) exchanges.

    ``model`` names the model that answers (None: the default one)."""
    model = models.resolve(model)
    out = out or sys.stdout
    if read is input and sys.stdin.isatty():
        import readline  # noqa: F401  (line editing and history for input())
    with_adapter = f" + adapter {model}" if model != models.base else ""
    out.write(f"Chatting with {config.base_model}{with_adapter} ({config.prompt_type} prompts). {HELP}\n")
    out.flush()
    context = context_length(models.model, config)
    session = ChatSession()
    while True:
        try:
            message = read(">>> ")
        except (EOFError, KeyboardInterrupt):
            out.write("\n")
            break
        command, _, argument = message.strip().partition(" ")
        if command in ("/quit", "/exit"):
            break
        if command == "/clear":
            session.clear()
            out.write("(history cleared)\n")
            continue
        if command == "/undo":
            out.write("(dropped the last exchange)\n" if session.undo() else "(nothing to undo)\n")
            continue
        if command in ("/save", "/load"):
            out.write(_save_or_load(session, command, argument.strip(), config) + "\n")
            continue
        if command == "/regenerate":
            if not session.regenerate():
                out.write("(nothing to regenerate)\n")
                continue
        elif not command:
            continue
        else:
            session.ask(message)
        try:
            prompt = session.prompt(models.tokenizer, config, context)
        except GenerationError as exc:
            session.drop_pending()
            out.write(f"(error: {exc})\n")
            continue
        if prompt.warning():
            out.write(f"(warning: {prompt.warning()})\n")
        session.answer(stream_to(out, AnswerStream(models, Request(prompt.text, model), config),
                                 stream=config.stream_output))
    out.flush()
    return session.history()


def _save_or_load(session: ChatSession, command: str, path: str, config: GenerateConfig) -> str:
    if not path:
        return f"(usage: {command} FILE)"
    try:
        if command == "/save":
            atomic.write_text(path, session.to_json(base_model=config.base_model, lora_weights=config.lora_weights))
            return f"(saved {len(session.history())} exchange(s) to {path})"
        with open(path, encoding="utf-8") as fh:
            loaded = ChatSession.from_json(fh.read(), where=path)
    except (OSError, UnicodeDecodeError, GenerationError) as exc:
        return f"(error: {exc})"
    session.exchanges[:] = loaded.exchanges
    return f"(loaded {len(loaded.exchanges)} exchange(s) from {path})"


def stream_to(out: TextIO, answer: AnswerStream, stream: bool = True) -> str:
    """Write an answer as it is generated (or whole, without ``stream``); Ctrl-C stops it and keeps
    what was generated."""
    out.write("bot: ")
    out.flush()
    shown = []
    pieces = iter(answer)
    try:
        for piece in pieces:
            shown.append(piece)
            if stream:
                out.write(piece)
                out.flush()
    except KeyboardInterrupt:
        pieces.close()  # ends the generation thread
        if not stream:
            out.write("".join(shown))
        out.write(" [stopped]")
        stream = True
    if not stream:
        out.write("".join(shown))
    out.write("\n")
    out.flush()
    return "".join(shown)
