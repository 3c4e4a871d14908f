"""Prompt formats shared by data preparation, training and generation.

A conversation is a list of turns ``(role, text)`` with role ``"system"``, ``"human"`` or
``"bot"``. Every prompt type turns that list into text in two ways:

* :func:`render_conversation` for training: the full text plus the character spans the
  model should learn (the bot answers), so loss masking follows the same rendering;
* :func:`render_prompt` for generation: the history and the new message, ending where
  the bot's answer begins, so a model is prompted exactly as it was trained.

The ``human_bot`` type is the OIG / h2oGPT format ``<human>: …\\n<bot>: …``.
"""
from __future__ import annotations

import re
from dataclasses import dataclass

from sftkit.errors import PromptError

HUMAN = "<human>:"
BOT = "<bot>:"
ROLES = ("system", "human", "bot")

Turn = tuple[str, str]

_TURN_MARKER = re.compile(r"(<human>:|<bot>:)")




@dataclass(frozen=True)
class PromptType:
    """How one prompt type writes each role. The ``chat`` type defers to the tokenizer's template."""

    name: str
    system: str
    human: str
    bot_open: str
    bot: str
    after_bot: str
    stop: tuple[str, ...]
    description: str


PROMPT_TYPES: dict[str, PromptType] = {
    "plain": PromptType(
        name="plain", system="{text}\n", human="{text}\n", bot_open="", bot="{text}", after_bot="\n",
        stop=(), description="No markers: the human text, a newline, the answer.",
    ),
    "instruct": PromptType(
        name="instruct", system="{text}\n\n", human="### Instruction:\n{text}\n\n",
        bot_open="### Response:\n", bot="{text}", after_bot="\n\n", stop=("### Instruction:",),
        description="Alpaca-style '### Instruction:' / '### Response:' blocks.",
    ),
    "human_bot": PromptType(
        name="human_bot", system="{text}\n", human=HUMAN + " {text}\n", bot_open=BOT, bot=" {text}",
        after_bot="\n", stop=(HUMAN, BOT),
        description="OIG / h2oGPT '<human>: ...\\n<bot>: ...', multi-turn.",
    ),
    "chat": PromptType(
        name="chat", system="", human="", bot_open="", bot="", after_bot="", stop=(),
        description="The tokenizer's own chat template over a 'messages' list.",
    ),
}


def get_prompt_type(name: str) -> PromptType:
    try:
        return PROMPT_TYPES[name]
    except KeyError:
        raise PromptError(
            f"unknown prompt_type {name!r}; choose one of {', '.join(PROMPT_TYPES)}"
        ) from None


def split_turns(text: str) -> list[Turn]:
    """Parse ``<human>: …\\n<bot>: …`` text into turns; text before the first marker is dropped.

    Turn texts are stripped. A text without markers yields an empty list.
    """
    parts = _TURN_MARKER.split(text)
    turns: list[Turn] = []
    for marker, body in zip(parts[1::2], parts[2::2]):
        turns.append(("human" if marker == HUMAN else "bot", body.strip()))
    return turns


def join_turns(turns: list[Turn]) -> str:
    """The inverse of :func:`split_turns`: ``<human>: a\\n<bot>: b``."""
    lines = []
    for role, text in turns:
        if role == "system":
            continue
        lines.append(f"{HUMAN if role == 'human' else BOT} {text}")
    return "\n".join(lines)


def check_turns(turns: list[Turn]) -> None:
    """Raise PromptError unless the turns have known roles and at least one bot answer."""
    for role, _ in turns:
        if role not in ROLES:
            raise PromptError(f"unknown role {role!r}; expected one of {ROLES}")
    if not any(role == "bot" for role, _ in turns):
        raise PromptError("conversation has no bot turn, so there is nothing to learn")


def _messages(turns: list[Turn]) -> list[dict[str, str]]:
    role_names = {"system": "system", "human": "user", "bot": "assistant"}
    return [{"role": role_names[role], "content": text} for role, text in turns]


def _render(spec: PromptType, turns: list[Turn]) -> tuple[str, list[tuple[int, int]]]:
    text = ""
    spans: list[tuple[int, int]] = []
    for role, body in turns:
        if role == "bot":
            text += spec.bot_open
            piece = spec.bot.format(text=body)
            spans.append((len(text), len(text) + len(piece)))
            text += piece + spec.after_bot
        else:
            text += getattr(spec, role).format(text=body)
    if turns and turns[-1][0] == "bot":
        text = text[: len(text) - len(spec.after_bot)]
    return text, spans


def render_conversation(turns: list[Turn], prompt_type: str, tokenizer=None) -> tuple[str, list[tuple[int, int]]]:
    """The training text of a conversation and the ``[start, end)`` character spans of bot answers."""
    check_turns(turns)
    spec = get_prompt_type(prompt_type)
    if spec.name == "chat":
        return _render_chat_template(turns, tokenizer)
    return _render(spec, turns)


def render_prompt(history: list[Turn], message: str, prompt_type: str, tokenizer=None,
                  system: str | None = None) -> str:
    """The text to generate from: earlier turns, the new human message, then the bot's opening.

    For ``human_bot`` it ends with ``<bot>:``, exactly where training put the answer.
    """
    spec = get_prompt_type(prompt_type)
    turns: list[Turn] = ([("system", system)] if system else []) + list(history) + [("human", message)]
    if spec.name == "chat":
        if tokenizer is None or not getattr(tokenizer, "chat_template", None):
            raise PromptError("prompt_type 'chat' needs a tokenizer with a chat template")
        return tokenizer.apply_chat_template(_messages(turns), tokenize=False, add_generation_prompt=True)
    text, _ = _render(spec, turns)
    return text + spec.bot_open


def stop_strings(prompt_type: str, tokenizer=None) -> list[str]:
    """Strings that end a bot answer for this prompt type (never shown to the user)."""
    spec = get_prompt_type(prompt_type)
    stops = list(spec.stop)
    if spec.name == "chat" and tokenizer is not None and tokenizer.eos_token:
        stops.append(tokenizer.eos_token)
    return stops


def _render_chat_template(turns: list[Turn], tokenizer) -> tuple[str, list[tuple[int, int]]]:
    if tokenizer is None or not getattr(tokenizer, "chat_template", None):
        raise PromptError("prompt_type 'chat' needs a tokenizer with a chat template")
    messages = _messages(turns)
    full = tokenizer.apply_chat_template(messages, tokenize=False)
    spans = []
    for i, message in enumerate(messages):
        if message["role"] != "assistant":
            continue
        before = tokenizer.apply_chat_template(messages[:i], tokenize=False, add_generation_prompt=True)
        through = tokenizer.apply_chat_template(messages[: i + 1], tokenize=False)
        if not full.startswith(before) or not full.startswith(through):
            raise PromptError("the tokenizer's chat template does not render turns as prefixes; "
                              "use another prompt_type")
        start = through.index(message["content"], len(before)) if message["content"] else len(before)
        spans.append((start, len(through)))
    return full, spans
