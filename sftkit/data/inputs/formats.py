"""Input formats: every supported file becomes the same rows, conversations in ``<human>:``/``<bot>:`` markup.

Files are read by :mod:`sftkit.rows` (the reader every wing shares: records, row shapes, the role
table); this module is what the data stages add: a file's format is detected from its first records
unless ``--input_format`` names it, and each conversation is written as markup. Each input record
(an OpenAssistant tree counts as one) becomes a :class:`Unit`: the conversations it gives, or why it
gives none. Malformed records are never an exception: their reason goes to the rejects file.
"""
from __future__ import annotations

import re
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

from sftkit import rows
from sftkit.data import DataError
from sftkit.data.algorithms import toolrows
from sftkit.prompts import BOT, HUMAN, Turn, join_turns

FORMATS = ("oig", "oasst_trees", "oasst_messages", "sharegpt", "alpaca", "messages", "h2ogpt")
OASST_FORMATS = rows.OASST_SHAPES
FileFormat = rows.FileShape


@dataclass
class Unit:
    """One input record (line, list item or table row; a whole tree for OpenAssistant) and what it gave."""

    line: int
    texts: list[str] = field(default_factory=list)
    reason: str | None = None  # why it gave no conversation
    malformed: bool = False  # the reason is a malformed record (listed in the rejects file)
    excerpt: str = ""
    source: str | None = None  # the record's own source (OIG metadata), else the file's
    tools: list[tuple[list[Turn], list | None] | None] = field(default_factory=list)  # per text: a tool
    # conversation's turns and tool list (sftkit.data.algorithms.toolrows), else None
    pairs: list[dict] = field(default_factory=list)  # OpenAssistant preference pairs
    events: Counter | None = None  # things left out inside the record (OpenAssistant trees)


@dataclass(frozen=True)
class ReadOptions:
    oasst_paths: str = "all"
    oasst_langs: frozenset[str] | None = frozenset({"en"})


# ---- detection ----

def detect(path: Path, requested: str = "auto") -> FileFormat:
    """The file's format: ``requested`` unless auto, else the signature most of its first records show."""
    if requested != "auto" and requested not in FORMATS:
        raise DataError(f"--input_format={requested}: choose auto or one of {', '.join(FORMATS)}")
    sample = rows.sample_records(path)
    if requested != "auto":
        name = requested
    elif rows.vote(sample) == "pair":
        raise DataError(f"{path}: holds preference pairs ('chosen' and 'rejected'), which the data stages do not "
                        "read; train on them with finetune.py --stage=rm or --stage=dpo")
    else:
        name = rows.vote(sample, FORMATS)
    if name is None and not sample:  # no well-formed record: read it as OIG lines, so each bad one is counted
        name = "oig"
    elif name is None:
        keys = sorted({k for r in sample[:20] if isinstance(r, dict) for k in r})[:12]
        raise DataError(f"{path}: cannot tell its input format (first records' keys: {keys or 'none'}); "
                        f"pass --input_format= one of {', '.join(FORMATS)} (see README: Input formats)")
    speakers: tuple = ()
    if name in rows.MARKUP_SHAPES:
        texts = rows.markup_texts(sample, name)
        speakers = rows.speaker_map(texts)
        if speakers is None:
            raise rows.unknown_speakers_error(path, texts)
    return FileFormat(name, speakers)


# ---- conversations as markup ----

def markup_turns(turns: list[Turn]) -> list[Turn]:
    """Turns as the markup writes them: no system or context turn (the conversation itself is kept),
    an alpaca input joined to its instruction by a blank line, no tool calls or results (a tool
    conversation's natural-language text: see sftkit.data.algorithms.toolrows)."""
    out: list[Turn] = []
    for role, text in turns:
        if role in ("tool_call", "tool"):
            continue
        if role == "input":
            out[-1] = (out[-1][0], f"{out[-1][1]}\n\n{text}")
        elif role not in ("system", "context"):
            out.append((role, text))
    return out


def as_markup(conversation: rows.Conversation, fmt: FileFormat) -> str:
    """A conversation read from a record of this format as markup text, or the reason it is refused."""
    if fmt.name in rows.MARKUP_SHAPES:
        if fmt.name == "h2ogpt" and conversation.prompt_type not in (None, "plain", "human_bot"):
            return "unsupported_prompt_type"
        text = conversation.text
        if HUMAN not in text:
            return "no_human_turn"
        if BOT not in text:
            return "no_bot_turn"
        if fmt.name == "h2ogpt":  # h2oGPT rows end with an empty human turn
            text = re.sub(rf"\s*{re.escape(HUMAN)}\s*$", "", text)
        return text
    return join_turns(markup_turns(conversation.turns))


# ---- OpenAssistant pairs ----

def _pair_row(found: rows.Pair, source: str) -> dict:
    return {"prompt": [{"role": "user" if role == "human" else "assistant", "content": text}
                       for role, text in found.prompt],
            "chosen": found.chosen[0][1], "rejected": found.rejected[0][1], "source": source}


# ---- a whole file ----

def source_name(name: str, fmt: FileFormat) -> str:
    """Rows' ``source``: the file name plus its format."""
    return f"{name}:{fmt.name}"


def read_units(path: Path, name: str, fmt: FileFormat, options: ReadOptions) -> Iterator[Unit]:
    """Every record of the file as a Unit (OpenAssistant: one per tree)."""
    source = source_name(name, fmt)
    reading = rows.ReadOptions(markup=True, oasst_paths=options.oasst_paths, oasst_langs=options.oasst_langs)
    for read in rows.read(path, fmt, reading):
        unit = Unit(read.line, reason=read.reason, malformed=read.malformed, excerpt=read.excerpt,
                    events=read.events, pairs=[_pair_row(p, source) for p in read.pairs] if read.pairs else [])
        for conversation in read.conversations:
            text = as_markup(conversation, fmt)
            if HUMAN not in text:  # a reason: every conversation has a human turn
                unit.reason, unit.malformed = text, True
                unit.excerpt = unit.excerpt or rows.excerpt(read.record)
            else:
                unit.texts.append(text)
                unit.tools.append((conversation.turns, conversation.tools)
                                  if toolrows.has_tool_turns(conversation.turns) else None)
                if fmt.name == "oig":
                    unit.source = conversation.source
        yield unit
