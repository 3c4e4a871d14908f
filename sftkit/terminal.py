"""Terminal chat (``generate.py --cli=True``): streamed answers, multi-turn history, Ctrl-C stops an answer.

Commands: ``/undo`` drops the last exchange, ``/clear`` the whole history, ``/quit`` (or Ctrl-D) ends.
"""
from __future__ import annotations

import sys
from typing import Callable, TextIO

from sftkit.generation import AnswerStream, GenerateConfig, GenerationError, build_prompt, context_length

HELP = "Type a message and press Enter. /undo drops the last exchange, /clear the history, /quit ends (or Ctrl-D). " \
       "Ctrl-C stops an answer."


def chat_loop(model, tokenizer, config: GenerateConfig, *, read: Callable[[str], str] = input,
              out: TextIO | None = None) -> list[tuple[str, str]]:
    """Chat until /quit or end of input; returns the history as (human, bot) exchanges."""
    out = out or sys.stdout
    if read is input and sys.stdin.isatty():
        import readline  # noqa: F401  (line editing and history for input())
    adapter = f" + {config.lora_weights}" if config.lora_weights else ""
    out.write(f"Chatting with {config.base_model}{adapter} ({config.prompt_type} prompts). {HELP}\n")
    out.flush()
    context = context_length(model, config)
    history: list[tuple[str, str]] = []
    while True:
        try:
            message = read(">>> ")
        except (EOFError, KeyboardInterrupt):
            out.write("\n")
            break
        command = message.strip()
        if command in ("/quit", "/exit"):
            break
        if command == "/clear":
            history.clear()
            out.write("(history cleared)\n")
            continue
        if command == "/undo":
            out.write("(dropped the last exchange)\n" if history else "(nothing to undo)\n")
            history = history[:-1]
            continue
        if not command:
            continue
        try:
            prompt = build_prompt(tokenizer, history, message, config, context)
        except GenerationError as exc:
            out.write(f"(error: {exc})\n")
            continue
        if prompt.warning():
            out.write(f"(warning: {prompt.warning()})\n")
        history.append((message.strip(), stream_to(out, AnswerStream(model, tokenizer, prompt.text, config))))
    out.flush()
    return history


def stream_to(out: TextIO, stream: AnswerStream) -> str:
    """Write an answer as it is generated; Ctrl-C stops it and keeps what was shown."""
    out.write("bot: ")
    out.flush()
    shown = []
    pieces = iter(stream)
    try:
        for piece in pieces:
            shown.append(piece)
            out.write(piece)
            out.flush()
    except KeyboardInterrupt:
        pieces.close()  # ends the generation thread
        out.write(" [stopped]")
    out.write("\n")
    out.flush()
    return "".join(shown)
