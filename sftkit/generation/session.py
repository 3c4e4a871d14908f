"""A chat conversation shared by the browser UI and the terminal: history, undo, regenerate, clear.

A session holds (human, bot) exchanges; the last one may still wait for its answer. Front ends
ask it for the prompt to generate from, hand it the answer, and save or load it as JSON.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field

from sftkit.errors import GenerationError
from sftkit.generation.config import GenerateConfig
from sftkit.generation.prompting import Prompt, build_prompt

FORMAT = "sftkit-chat/1"


@dataclass
class ChatSession:
    """The exchanges of one conversation, oldest first; ``None`` as an answer means "not answered yet"."""

    exchanges: list[list] = field(default_factory=list)

    @property
    def pending(self) -> bool:
        return bool(self.exchanges) and self.exchanges[-1][1] is None

    def history(self) -> list[tuple[str, str]]:
        """The answered exchanges before the pending message."""
        answered = self.exchanges[:-1] if self.pending else self.exchanges
        return [(human, bot) for human, bot in answered]

    def ask(self, message: str) -> None:
        """Add a message waiting for its answer."""
        message = message.strip()
        if not message:
            raise GenerationError("empty message: type something to ask")
        if self.pending:
            raise GenerationError("the last message is still waiting for its answer")
        self.exchanges.append([message, None])

    def prompt(self, tokenizer, config: GenerateConfig, context: int) -> Prompt:
        """The prompt answering the pending message; without ``config.chat`` it stands alone."""
        if not self.pending:
            raise GenerationError("nothing to answer: ask something first")
        history = self.history() if config.chat else []
        return build_prompt(tokenizer, history, self.exchanges[-1][0], config, context)

    def answer(self, text: str) -> None:
        """Set (or, while streaming, update) the answer of the last message."""
        if not self.exchanges:
            raise GenerationError("no message to answer")
        self.exchanges[-1][1] = text

    def undo(self) -> bool:
        """Drop the last exchange (not one still being answered); whether anything was dropped."""
        if not self.exchanges or self.pending:
            return False
        self.exchanges.pop()
        return True

    def regenerate(self) -> bool:
        """Forget the last answer so its message is answered again; whether there was one."""
        if not self.exchanges or self.pending:
            return False
        self.exchanges[-1][1] = None
        return True

    def drop_pending(self) -> None:
        """Remove a message whose answer failed, so the conversation stays answerable."""
        if self.pending:
            self.exchanges.pop()

    def clear(self) -> None:
        self.exchanges.clear()

    def to_json(self, **extra) -> str:
        """The conversation as JSON (``extra`` keys, e.g. the model, are saved beside it)."""
        return json.dumps({"format": FORMAT, **extra,
                           "messages": [{"human": h, "bot": b} for h, b in self.history()]},
                          ensure_ascii=False, indent=1)

    @classmethod
    def from_json(cls, text: str, where: str = "conversation") -> "ChatSession":
        """A session from :meth:`to_json`'s output (or a plain list of {human, bot} messages)."""
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise GenerationError(f"{where}: not valid JSON ({exc})") from None
        messages = data.get("messages") if isinstance(data, dict) else data
        if not isinstance(messages, list):
            raise GenerationError(f"{where}: expected {{'messages': [{{'human': ..., 'bot': ...}}, ...]}}")
        exchanges = []
        for n, item in enumerate(messages, 1):
            if not (isinstance(item, dict) and isinstance(item.get("human"), str)
                    and isinstance(item.get("bot"), str)):
                raise GenerationError(f"{where}: message {n} needs text 'human' and 'bot' fields")
            exchanges.append([item["human"], item["bot"]])
        return cls(exchanges)
