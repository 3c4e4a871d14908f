"""Reading OIG JSONL lines: ``{"text": "<human>: …\\n<bot>: …", "metadata": {"source": …}}``."""
from __future__ import annotations

import json

from sftkit.prompts import BOT, HUMAN


def parse_line(raw: bytes) -> tuple[str, str | None] | tuple[None, str]:
    """``(text, source)`` for a usable line, or ``(None, reason)`` for a malformed one.

    Reasons: invalid_utf8, bad_json, not_an_object, missing_text, empty_text, no_human_turn, no_bot_turn.
    """
    try:
        line = raw.decode("utf-8")
    except UnicodeDecodeError:
        return None, "invalid_utf8"
    try:
        record = json.loads(line)
    except ValueError:
        return None, "bad_json"
    if not isinstance(record, dict):
        return None, "not_an_object"
    text = record.get("text")
    if not isinstance(text, str):
        return None, "missing_text"
    if not text.strip():
        return None, "empty_text"
    if HUMAN not in text:
        return None, "no_human_turn"
    if BOT not in text:
        return None, "no_bot_turn"
    metadata = record.get("metadata")
    source = metadata.get("source") if isinstance(metadata, dict) else None
    return text, source if isinstance(source, str) else None
