"""Rows: the one reader of data files, and the one place a row's shape becomes turns.

Every wing reads through this module: the data stages (``sftkit/data/inputs/formats.py`` writes
what it reads as ``<human>:``/``<bot>:`` markup), SFT and preference training
(``sftkit/train/data.py``, ``sftkit/train/preference.py``) and the evaluation mode
(``sftkit/generation/batch.py``).

**Records.** :func:`records` streams a file: JSON lines line by line, a JSON array element by
element (parsed incrementally, never loaded whole), parquet by record batches; gzip is recognised
by its magic bytes, whatever the file is called. A record that cannot be used as a value (invalid
UTF-8, and :mod:`sftkit.json_records`' reasons: invalid JSON, nested too deep, a lone surrogate)
comes with its reason instead: a reason is a short code (:data:`REASONS` says each in words),
counted by the caller, never an exception. Only a file that cannot be read at all (a damaged
parquet or gzip, a JSON array that never closes) is a :class:`~sftkit.errors.DataError`.

**Shapes.** :data:`SIGNATURES` tells a row's shape from its columns; :func:`conversation` turns a
row of any shape into a :class:`Conversation` (turns with the roles of :mod:`sftkit.prompts`, an
optional tool list) and :func:`pair` into a preference :class:`Pair`, each returning a reason
instead when the row has none. Speaker names are read through one table, :data:`ROLE_SPELLINGS`.

=================  ====================================================================================
shape              one row
=================  ====================================================================================
``sharegpt``       ``conversations``: ``{from, value}`` turns (``function_call``/``observation`` turns
                   are tool calls and results), optional ``system`` and ``tools`` columns
``messages``       ``messages``: OpenAI chat messages (``tool_calls`` on assistant messages, ``tool``
                   messages), optional ``tools`` column
``alpaca``         ``instruction``, optional ``input`` (kept as its own ``input`` turn), ``output``,
                   optional ``system``
``oig``            ``text`` in ``<human>:``/``<bot>:`` markup (``metadata.source`` kept)
``h2ogpt``         ``input`` in markup with h2oGPT's ``prompt_type`` column
``pair``           ``chosen`` + ``rejected``: with ``prompt`` (text or messages), or with
                   ``conversations`` (LLaMA-Factory ranking rows, answers as ``{from, value}``), or with
                   ``instruction`` (+ ``input``), or alone (hh-rlhf: two whole conversations as text
                   ``\\n\\nHuman: … \\n\\nAssistant: …`` or ``<human>:``/``<bot>:``, or messages)
``prompt``         ``prompt`` (text or messages) with an optional ``completion`` (TRL's shape)
``oasst_trees``    an OpenAssistant export tree: every path is a conversation, ranked answers are pairs
``oasst_messages`` OpenAssistant's flat message table, grouped by ``message_tree_id``
=================  ====================================================================================

An h2oGPT ``context`` column becomes a ``context`` turn before the conversation; a ``prompt_type``
column is kept on the conversation for the trainer to honour. :func:`read` reads a whole file into
:class:`Unit` s (one per record; one per tree for OpenAssistant), each with its conversations and
pairs or its reason.
"""
from __future__ import annotations

import functools
import gzip
import io
import itertools
import json
import re
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator

from sftkit import json_records
from sftkit.data.inputs import oasst
from sftkit.errors import DataError
from sftkit.prompts import ANSWER_ROLES, BOT, HUMAN, Turn, split_turns, tool_call_text

EXCERPT_CHARS = 200
DETECT_RECORDS = 200
DATA_SUFFIXES = (".json", ".jsonl", ".json.gz", ".jsonl.gz", ".parquet")

# (1-based line or item number, the value or None, why it is unusable or None, an excerpt of the raw text)
Record = tuple[int, object, "str | None", str]

# Every reason a record gives no conversation, in words (messages say "<file>:<n>: <words>").
REASONS = {
    "invalid_utf8": "not valid UTF-8",
    **{reason: words for reason, (words, _) in json_records.EXPLAINED.items()},  # bad_json, nested_too_deep, …
    "not_an_object": "not a JSON object",
    "unknown_shape": "no usable column: expected conversations, messages, instruction + output, "
                     "prompt (+ completion), chosen + rejected, input or text",
    "no_turns": "its conversation is not a non-empty list of turns",
    "bad_turn": "a turn is not an object with text",
    "unknown_speaker": "a turn's speaker is none of the known roles",
    "bad_tool_call": "a tool call is not a JSON object with a name and object arguments",
    "bad_tools": "its tools column is not a list of function schemas",
    "no_human_turn": "the conversation has no human turn",
    "no_bot_turn": "the conversation has no bot turn, so there is nothing to learn",
    "empty_turn": "a turn is empty",
    "turn_marker_in_text": "a turn holds a <human>: or <bot>: marker",
    "missing_instruction": "alpaca row without an instruction",
    "bad_input": "alpaca row whose input is not text",
    "missing_output": "alpaca row without an output",
    "missing_text": "no text",
    "empty_text": "the text is empty",
    "no_pair": "no 'chosen' and 'rejected' columns",
    "answer_not_last": "'chosen' or 'rejected' does not end with an assistant answer",
    "prompt_mismatch": "'chosen' and 'rejected' differ before their last answer (or from 'prompt')",
    "prompt_not_human": "the prompt does not end with a human turn",
    "same_answers": "'chosen' and 'rejected' are the same answer",
    "unknown_prompt_type": "unknown prompt_type in the row's prompt_type column; fix the row, or give "
                           "--prompt_type to use one for every row",
    "unsupported_prompt_type": "an h2oGPT row whose prompt_type is neither plain nor human_bot",
    "no_question": "nothing is left to answer once the final answer is left out",
    "repeated_prompt": "the same prompt again",
    "prompt_too_long": "the prompt is longer than cutoff_len - max_new_tokens",
}


def describe(reason: str) -> str:
    """A reason code in words (unknown codes, e.g. OpenAssistant ones, as they are)."""
    return REASONS.get(reason, reason.replace("_", " "))


# ---------------------------------------------------------------- records

def open_bytes(path: Path):
    """The file's bytes, gunzipped when it starts with gzip's magic bytes."""
    with open(path, "rb") as fh:
        gzipped = fh.read(2) == b"\x1f\x8b"
    return gzip.open(path, "rb") if gzipped else open(path, "rb")


def container(path: Path) -> str:
    """``parquet``, ``json_list`` or ``jsonl``, from the file's first bytes (after gunzip)."""
    with open(path, "rb") as fh:
        if fh.read(4) == b"PAR1":
            return "parquet"
    with open_bytes(path) as fh:
        head = fh.read(4096).lstrip(b"\xef\xbb\xbf \t\r\n")
    return "json_list" if head.startswith(b"[") else "jsonl"


def excerpt(record) -> str:
    return json.dumps(record, ensure_ascii=False, default=str)[:EXCERPT_CHARS]


def records(path: Path, batch_rows: int = 2048) -> Iterator[Record]:
    """Every record of a file as ``(number, value, reason, excerpt)``; see the module docstring."""
    path = Path(path)
    kind = container(path)
    if kind == "parquet":
        yield from _parquet_records(path, batch_rows)
    elif kind == "json_list":
        with open_bytes(path) as fh:
            yield from _ArrayReader(fh, path).records()
    else:
        yield from _jsonl_records(path)


def _parquet_records(path: Path, batch_rows: int) -> Iterator[Record]:
    import pyarrow as pa
    import pyarrow.parquet as pq

    number = 0
    try:
        for batch in pq.ParquetFile(path).iter_batches(batch_size=batch_rows):
            for record in batch.to_pylist():
                number += 1
                yield number, record, None, ""
    except (pa.ArrowException, OSError) as exc:
        raise DataError(f"{path}: cannot read parquet ({exc})") from None


def _jsonl_records(path: Path) -> Iterator[Record]:
    with open_bytes(path) as fh:
        for number, raw in enumerate(fh, 1):
            raw = raw.rstrip(b"\r\n")
            if not raw.strip():
                continue
            shown = raw[:EXCERPT_CHARS].decode("utf-8", errors="replace")
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError:
                yield number, None, "invalid_utf8", shown
                continue
            value, reason = json_records.parse_record(line)
            if reason == "bad_json" and number == 1 and line.strip() == "{":
                _refuse_single_object(path)
            yield number, value, reason, shown


def _refuse_single_object(path: Path) -> None:
    """A pretty-printed JSON object is one row, not a file of rows: say so instead of one bad line each."""
    with open_bytes(path) as fh:
        value, _ = json_records.parse_record(fh.read().decode("utf-8", errors="replace"))
    if isinstance(value, dict):
        raise DataError(f"{path}: expected a list of rows (a JSON array, or one JSON object per line), got one "
                        f"JSON object with keys {sorted(value)[:8]}; put the rows in a list, or write them one "
                        f"per line")


_NON_SPACE = re.compile(r"[^ \t\r\n\ufeff]")
_STRUCTURE = re.compile(r'[\[\]{}",]')
_STRING_TAIL = re.compile(r'(?:[^"\\]|\\.)*"', re.DOTALL)
_ESCAPED_BYTE = re.compile("[\udc80-\udcff]")  # an invalid UTF-8 byte, as surrogateescape decodes it


def _shown(raw: str) -> str:
    """An excerpt of raw text as read by :class:`_ArrayReader`, invalid bytes shown as U+FFFD."""
    return raw[:EXCERPT_CHARS].encode("utf-8", "surrogateescape").decode("utf-8", "replace")


class _ArrayReader:
    """A JSON array's elements one by one from a stream, holding about one element in memory.

    Invalid bytes are decoded as lone surrogates, so the element holding one is found and given the
    reason ``invalid_utf8``; an element that does not parse is skipped to its closing bracket.
    """

    def __init__(self, fh, path: Path, chunk_chars: int = 1 << 20):
        self.text = io.TextIOWrapper(fh, encoding="utf-8", errors="surrogateescape", newline="")
        self.path, self.chunk_chars = path, chunk_chars
        self.buf, self.pos, self.eof, self.lines_before = "", 0, False, 0
        self.decoder = json.JSONDecoder()

    def _fill(self, want: int | None = None) -> int:
        """Read more text, dropping what was consumed; the shift of indices into ``buf`` (-1 at EOF)."""
        if self.eof:
            return -1
        piece = self.text.read(want or self.chunk_chars)
        if not piece:
            self.eof = True
            return -1
        shift = self.pos
        self.lines_before += self.buf.count("\n", 0, shift)
        self.buf = self.buf[shift:] + piece
        self.pos = 0
        return shift

    def _skip_space(self) -> bool:
        """Move to the next non-space character; False at the end of the file."""
        while True:
            found = _NON_SPACE.search(self.buf, self.pos)
            if found:
                self.pos = found.start()
                return True
            self.pos = len(self.buf)
            if self._fill() < 0:
                return False

    def _broken(self, at: int, what: str) -> DataError:
        line = self.lines_before + self.buf.count("\n", 0, at) + 1
        return DataError(f"{self.path}: invalid JSON at line {line} ({what}): the file starts like a JSON list "
                         f"but does not parse as one; fix the file or write it as JSONL (one record per line)")

    def _decode(self) -> tuple[object, int] | str:
        """The element at ``pos`` and where it ends, or a reason; reads on while it may be cut short."""
        want = self.chunk_chars
        while True:
            try:
                value, end = self.decoder.raw_decode(self.buf, self.pos)
            except RecursionError:
                return json_records.TOO_DEEP
            except json.JSONDecodeError as exc:
                # Text cut at the end of what was read fails at its end (or in a string never closed).
                cut_short = exc.pos >= len(self.buf) - 16 or exc.msg.startswith("Unterminated string")
                if cut_short and self._fill(want) >= 0:
                    want *= 2  # each retry re-parses the element: grow the reads so the total stays linear
                    continue
                return "bad_json"
            if end >= len(self.buf) and self._fill(want) >= 0:
                continue  # a number may go on in the next chunk
            return value, end

    def _skip_element(self) -> int:
        """The end of the (unparseable) element at ``pos``: the next ',' or ']' outside brackets and strings."""
        depth, at = 0, self.pos
        while True:
            found = _STRUCTURE.search(self.buf, at)
            if found is None:
                at = len(self.buf)
            else:
                char, at = found.group(), found.end()
                if char == '"':
                    tail = _STRING_TAIL.match(self.buf, at)
                    if tail:
                        at = tail.end()
                        continue
                    at = found.start()
                elif char in "[{":
                    depth += 1
                    continue
                elif char in "]}" and depth > 0:
                    depth -= 1
                    continue
                elif char in ",]" and depth == 0:
                    return found.start()
                else:
                    continue
            shift = self._fill()
            if shift < 0:
                raise self._broken(len(self.buf), "an element never ends")
            at -= shift

    def records(self) -> Iterator[Record]:
        if not self._skip_space() or self.buf[self.pos] != "[":
            raise self._broken(self.pos, "no opening '['")
        self.pos += 1
        number = 0
        if self._skip_space() and self.buf[self.pos] == "]":
            self.pos += 1
            if self._skip_space():
                raise self._broken(self.pos, "more text after the list's closing ']'")
            return
        while True:
            if not self._skip_space():
                raise self._broken(len(self.buf), "the list never closes")
            if self.buf[self.pos] == "]":
                raise self._broken(self.pos, f"a ',' after item {number} with no item after it")
            number += 1
            decoded = self._decode()  # reading on may move the element's start (self.pos) in buf
            if isinstance(decoded, str):
                end = self._skip_element()
                yield number, None, decoded, _shown(self.buf[self.pos:end])
            else:
                value, end = decoded
                raw = self.buf[self.pos:end]
                reason = "invalid_utf8" if _ESCAPED_BYTE.search(raw) else json_records.value_problem(raw, value)
                yield number, None if reason else value, reason, _shown(raw) if reason else ""
            self.pos = end
            if not self._skip_space():
                raise self._broken(len(self.buf), "the list never closes")
            char = self.buf[self.pos]
            self.pos += 1
            if char == "]":
                if self._skip_space():
                    raise self._broken(self.pos, "more text after the list's closing ']'")
                return
            if char != ",":
                raise self._broken(self.pos - 1, f"expected ',' or ']' after item {number}, found {char!r}")


def data_files(path: str | Path) -> list[Path]:
    """The data files at ``path``: the file itself, or every data file in a directory (sorted)."""
    p = Path(path)
    if p.is_dir():
        files = sorted(f for f in p.rglob("*") if f.is_file() and f.name.endswith(DATA_SUFFIXES))
        if not files:
            raise DataError(f"{path}: directory holds no {', '.join(DATA_SUFFIXES)} files")
        return files
    if p.is_file():
        if not p.name.endswith(DATA_SUFFIXES):
            raise DataError(f"{path}: unsupported file type; use one of {', '.join(DATA_SUFFIXES)}")
        return [p]
    return []


@functools.lru_cache(maxsize=4)
def hub_dataset(name: str):
    """The train split of the hub dataset ``name`` (the local datasets cache's copy when there is
    one), or a DataError saying that ``name`` is neither a file nor a loadable dataset. Loaded once
    per process (memory-mapped): each load asks the hub for the latest revision, and a run both
    fingerprints and reads it."""
    import datasets

    try:
        return datasets.load_dataset(name, split="train")
    except Exception as exc:  # offline, unknown id, no train split: all mean the same to the user
        raise DataError(f"{name}: no such file or directory, and not a loadable hub dataset "
                        f"({str(exc).splitlines()[0][:200]}). Give a json/jsonl/parquet file or directory.") from None


# ---------------------------------------------------------------- the role table

# Every speaker spelling any format uses (ShareGPT's "from", a message's "role", OpenAssistant's
# "prompter", markup tags such as <user>:), and the turn role it is. Case does not matter.
ROLE_SPELLINGS = {
    "human": "human", "user": "human", "prompter": "human", "person": "human",
    "bot": "bot", "assistant": "bot", "gpt": "bot", "ai": "bot", "chatbot": "bot", "model": "bot",
    "chatgpt": "bot", "bing": "bot", "bard": "bot",
    "system": "system", "developer": "system",  # OpenAI's newer name for system messages
    "function_call": "tool_call",  # ShareGPT (glaive, LLaMA-Factory): the assistant calls a tool
    "tool": "tool", "observation": "tool", "function": "tool", "ipython": "tool",  # a tool's result
}
HUMAN_TAGS = tuple(name for name, role in ROLE_SPELLINGS.items() if role == "human")
BOT_TAGS = tuple(name for name, role in ROLE_SPELLINGS.items() if role == "bot")


def role_of(name) -> str | None:
    """The turn role a speaker spelling stands for, or None."""
    return ROLE_SPELLINGS.get(str(name).strip().lower()) if isinstance(name, str) else None


# ---------------------------------------------------------------- shapes

SIGNATURES: list[tuple[str, Callable[[dict], bool]]] = [
    ("oasst_trees", lambda r: "message_tree_id" in r and isinstance(r.get("prompt"), dict)),
    ("oasst_messages", lambda r: "message_id" in r and "parent_id" in r and "role" in r),
    ("pair", lambda r: r.get("chosen") is not None and r.get("rejected") is not None),
    ("sharegpt", lambda r: isinstance(r.get("conversations"), list)),
    ("messages", lambda r: isinstance(r.get("messages"), list)),
    ("alpaca", lambda r: isinstance(r.get("instruction"), str)),
    ("prompt", lambda r: r.get("prompt") is not None),
    ("h2ogpt", lambda r: isinstance(r.get("input"), str) and ("prompt_type" in r or _TAG.search(r["input"]))),
    ("oig", lambda r: isinstance(r.get("text"), str)),
]
SHAPES = tuple(name for name, _ in SIGNATURES)
OASST_SHAPES = ("oasst_trees", "oasst_messages")
MARKUP_SHAPES = ("oig", "h2ogpt")
_TAG = re.compile(r"<([A-Za-z][\w ]{0,20})>:")
_BARE_LABEL = re.compile(r"(?m)^[ \t]*([A-Z][\w.'-]*(?: [A-Z][\w.'-]*){0,2}):[ \t]")  # "Rosey: ..." at a line start


def shape_of(record, shapes: tuple[str, ...] = SHAPES) -> str | None:
    """The first of ``shapes`` whose signature the record shows."""
    if isinstance(record, dict):
        for name, test in SIGNATURES:
            if name in shapes and test(record):
                return name
    return None


@dataclass(frozen=True)
class FileShape:
    """A file's shape, and the other speaker tags its markup uses mapped to ``<human>:``/``<bot>:``."""

    name: str | None  # None: decided row by row
    speakers: tuple[tuple[str, str], ...] = ()

    def describe(self) -> str:
        if not self.speakers:
            return str(self.name)
        return f"{self.name}, speakers " + ", ".join(f"{a} read as {b}" for a, b in self.speakers)


def speaker_map(texts: list[str]) -> tuple[tuple[str, str], ...] | None:
    """Other spellings of the speaker tags a markup text uses, mapped to the standard ones.

    Only <human>:/<bot>: found: none needed. Known other spellings (<user>: and <assistant>:, …):
    their mapping. Tags found but no human or no bot among them: None (cannot tell).
    """
    found = Counter(tag.lower() for text in texts for tag in _TAG.findall(text))
    humans = [t for t in HUMAN_TAGS if found[t]]
    bots = [t for t in BOT_TAGS if found[t]]
    if found and (not humans or not bots):
        return None
    return tuple([(f"<{t}>:", HUMAN) for t in humans if t != "human"] + [(f"<{t}>:", BOT) for t in bots if t != "bot"])


def unknown_speakers_error(path: Path, texts: list[str]) -> DataError:
    """Why a markup file's speaker tags cannot be read, naming a bare label (``Rosey:``) its turns use instead."""
    found = Counter(tag.lower() for text in texts for tag in _TAG.findall(text))
    humans = [t for t in HUMAN_TAGS if found[t]]
    missing, known = ("human", HUMAN_TAGS) if not humans else ("bot", BOT_TAGS)
    labels = Counter(label for text in texts for label in set(_BARE_LABEL.findall(text)))
    seen = (f"their turns start with {', '.join(f'<{t}>:' for t, _ in found.most_common(6))}"
            + "".join(f" and the bare label {label}: (in {n} of {len(texts)} records)"
                      for label, n in labels.most_common(1)))
    fix = f"rewrite {labels.most_common(1)[0][0]}: as <{missing}>:" if labels else "rewrite the tags"
    return DataError(f"{path}: its first records have no {missing} tag: {seen}; sftkit reads "
                     f"{', '.join(f'<{t}>:' for t in known)} as the {missing}. To use the file, {fix}, or pass "
                     "--input_format if this is not a markup file")


def sample_records(path: Path) -> list:
    """The first :data:`DETECT_RECORDS` readable records, for detecting a file's shape."""
    sample = []
    for _, record, reason, _ in records(path):
        if reason is None:
            sample.append(record)
            if len(sample) >= DETECT_RECORDS:
                break
    return sample


def vote(sample: list, shapes: tuple[str, ...] = SHAPES) -> str | None:
    """The shape most of the sampled records show, or None."""
    votes = Counter(name for name in (shape_of(r, shapes) for r in sample) if name)
    return votes.most_common(1)[0][0] if votes else None


def markup_texts(sample: list, shape: str) -> list[str]:
    key = "text" if shape == "oig" else "input"
    return [r[key] for r in sample if isinstance(r, dict) and isinstance(r.get(key), str)]


def rename(record, renames: dict | None):
    """The record with its columns renamed (``--data_col_dict``); anything else as it is."""
    if not renames or not isinstance(record, dict):
        return record
    return {renames.get(k, k): v for k, v in record.items()}


# ---------------------------------------------------------------- rows to turns

@dataclass
class Conversation:
    """A conversation read from a row: turns with :mod:`sftkit.prompts`' roles, and what else the row said.

    ``text`` is a markup row's own text (speaker tags mapped, otherwise as written), which the prompt
    types that write those markers train unchanged. ``prompt_type`` is the row's own column as
    written (the trainer decides and stores the one it uses). ``source`` is the record's own source
    (OIG's ``metadata.source``); ``where`` says where it was read (``file:line``).
    """

    turns: list[Turn]
    where: str = ""
    text: str | None = None
    tools: list[dict] | None = None
    prompt_type: str | None = None
    source: str | None = None


@dataclass
class Pair:
    """A prompt (turns ending with a human or tool turn) and a better and a worse answer (each a list of
    bot and tool-call turns): two conversations sharing all but their last answer."""

    prompt: list[Turn]
    chosen: list[Turn]
    rejected: list[Turn]
    tools: list[dict] | None = None
    where: str = ""

    def conversations(self) -> tuple[list[Turn], list[Turn]]:
        return self.prompt + self.chosen, self.prompt + self.rejected


def problem(turns: list[Turn], *, need_answer: bool = True, markup: bool = False) -> str | None:
    """Why turns make no conversation, or None. ``markup``: they will be written as ``<human>:``/``<bot>:``
    text, so a turn holding one of those markers is a reason too."""
    spoken = [(role, text) for role, text in turns if role not in ("system", "context")]
    if not any(role == "human" for role, _ in spoken):
        return "no_human_turn"
    if need_answer and not any(role in ANSWER_ROLES for role, _ in spoken):
        return "no_bot_turn"
    for _, text in spoken:
        if not text:
            return "empty_turn"
        if markup and (HUMAN in text or BOT in text):
            return "turn_marker_in_text"
    return None


def _text_of(content) -> str | None:
    """A message's text: a string, or OpenAI's list of text parts."""
    if isinstance(content, str):
        return content
    if isinstance(content, list) and all(isinstance(p, dict) and isinstance(p.get("text"), str) for p in content):
        return "".join(p["text"] for p in content)
    return None


def tool_list(value) -> list[dict] | None | str:
    """A row's ``tools`` column as OpenAI function tools ``{"type": "function", "function": {…}}``
    (None when absent or empty), or the reason ``bad_tools``. Takes a list or its JSON text, each
    tool in OpenAI's shape or as a bare ``{name, description, parameters}`` schema (ShareGPT's)."""
    if value is None or value == "":
        return None
    if isinstance(value, str):
        value, reason = json_records.parse_record(value)
        if reason:
            return "bad_tools"
    if not isinstance(value, list):
        return "bad_tools"
    tools = []
    for tool in value:
        schema = tool.get("function") if isinstance(tool, dict) and tool.get("type") == "function" else tool
        if not isinstance(schema, dict) or not isinstance(schema.get("name"), str):
            return "bad_tools"
        tools.append({"type": "function", "function": schema})
    return tools or None


def _turns(items, role_key: str, text_key: str) -> list[Turn] | str:
    """Turns from a list of messages (``role_key``/``text_key``, else ``role``/``content`` or
    ``from``/``value``), tool calls included."""
    if not isinstance(items, list) or not items:
        return "no_turns"
    turns: list[Turn] = []
    for item in items:
        if not isinstance(item, dict):
            return "bad_turn"
        speaker = item[role_key] if role_key in item else item.get("role", item.get("from"))
        content = item[text_key] if text_key in item else item.get("content", item.get("value", item.get("text")))
        calls = item.get("tool_calls") or ([item["function_call"]] if item.get("function_call") else [])
        text = _text_of(content)
        if text is None and not (calls and content is None):  # an assistant's tool calls may come without text
            return "bad_turn"
        role = role_of(speaker)
        if role is None:
            return "unknown_speaker"
        if calls and role != "bot":
            return "bad_tool_call"
        if role == "tool_call":  # its text is one call, or a JSON list of parallel calls
            parsed, _ = json_records.parse_record(text)
            calls, text = parsed if isinstance(parsed, list) else [text], None
        elif text is not None and (text.strip() or not calls):
            turns.append((role, text.strip()))
        for call in calls:
            call = tool_call_text(call)
            if call is None:
                return "bad_tool_call"
            turns.append(("tool_call", call))
    return turns


def message_turns(messages) -> list[Turn] | str:
    """Turns from a list of OpenAI chat messages (tool calls and ``tool`` messages included), or a reason:
    a ``messages`` row's, and the API's requests."""
    return _turns(messages, "role", "content")


def _prompt_turns(value) -> list[Turn] | str:
    """A prompt or answer given as text (plain, ``<human>:``/``<bot>:`` or hh-rlhf ``Human:``/``Assistant:``
    marked) or as a list of messages, or a single ``{from, value}`` message."""
    if isinstance(value, str):
        return text_turns(value)
    if isinstance(value, dict):
        value = [value]
    return _turns(value, "role", "content")


_HH_MARKER = re.compile(r"(?:^|\n\n)(Human|Assistant):")


def text_turns(text: str) -> list[Turn]:
    """``<human>:``/``<bot>:`` or hh-rlhf ``Human:``/``Assistant:`` text as turns; unmarked text is one
    human turn."""
    if HUMAN in text or BOT in text:
        return split_turns(text)
    parts = _HH_MARKER.split("\n\n" + text.strip())
    if len(parts) > 1:
        return [("human" if who == "Human" else "bot", body.strip()) for who, body in zip(parts[1::2], parts[2::2])]
    return [("human", text.strip())]


def _alpaca(record: dict, need_answer: bool) -> list[Turn] | str:
    instruction, extra, output = record.get("instruction"), record.get("input"), record.get("output")
    if not isinstance(instruction, str) or not instruction.strip():
        return "missing_instruction"
    if extra is not None and not isinstance(extra, str):
        return "bad_input"
    if need_answer and (not isinstance(output, str) or not output.strip()):
        return "missing_output"
    turns = [("human", instruction.strip())]
    if extra and extra.strip():
        turns.append(("input", extra.strip()))
    if isinstance(output, str) and output.strip():
        turns.append(("bot", output.strip()))
    return turns


def _markup_text(text, speakers) -> str | tuple[str]:
    """Markup text with other speaker spellings mapped (a 1-tuple), or a reason."""
    if not isinstance(text, str):
        return "missing_text"
    if not text.strip():
        return "empty_text"
    for other, standard in speakers:
        text = re.sub(re.escape(other), standard, text, flags=re.IGNORECASE)
    return (text,)


def _markup_turns(text: str) -> list[Turn]:
    turns = split_turns(text)
    if turns and turns[-1] == ("human", ""):  # h2oGPT rows end with an empty <human>: (the learned stop)
        turns.pop()
    return turns


def _system_turns(record: dict) -> list[Turn]:
    system = record.get("system")
    return [("system", system.strip())] if isinstance(system, str) and system.strip() else []


def conversation(record, shape: str, *, speakers=(), need_answer: bool = True,
                 markup: bool = False) -> Conversation | str:
    """The conversation in a row read as ``shape``, or the reason it has none.

    ``need_answer`` False (the evaluation mode) reads rows that end with a question. ``markup``:
    see :func:`problem`. Markup rows (oig, h2ogpt) are only checked for text here; whether their
    markers make a conversation is the caller's (plain training learns unmarked text whole); a
    caller that writes markup (``markup``) gets their text alone, turns unparsed.
    """
    if not isinstance(record, dict):
        return "not_an_object"
    tools = tool_list(record.get("tools"))
    if tools == "bad_tools":
        return tools
    text = None
    if shape in MARKUP_SHAPES:
        found = _markup_text(record.get("text" if shape == "oig" else "input"), speakers)
        if isinstance(found, str):
            return found
        text = found[0]
        turns = [] if markup else _markup_turns(text)  # a markup writer keeps the text; others read its turns
    else:
        if shape == "sharegpt":
            turns = _turns(record.get("conversations"), "from", "value")
        elif shape == "messages":
            turns = message_turns(record.get("messages"))
        elif shape == "alpaca":
            turns = _alpaca(record, need_answer)
        elif shape == "prompt":
            turns = _prompt_turns(record.get("prompt"))
            if not isinstance(turns, str) and record.get("completion") is not None:
                answer = _answer_turns(record["completion"])
                turns = answer if isinstance(answer, str) else turns + answer
        elif shape == "pair":
            found = pair(record)
            turns = found if isinstance(found, str) else found.prompt + found.chosen
        else:
            return "unknown_shape"
        if isinstance(turns, str):
            return turns
        if shape in ("sharegpt", "alpaca", "prompt"):  # their optional system column
            turns = _system_turns(record) + turns
        reason = problem(turns, need_answer=need_answer, markup=markup)
        if reason:
            return reason
    context = record.get("context")
    if isinstance(context, str) and context:
        turns = [("context", context)] + turns
    own_type = record.get("prompt_type")
    metadata = record.get("metadata")
    source = metadata.get("source") if isinstance(metadata, dict) else None
    return Conversation(turns, text=text, tools=tools,
                        prompt_type=None if own_type is None or not str(own_type).strip() else str(own_type).strip(),
                        source=source if isinstance(source, str) else None)


def question_turns(conversation: Conversation) -> list[Turn] | None:
    """The conversation up to its last question (a human turn with its input, or a tool's result): a final
    answer, the reference, is left out. None when nothing is left to answer. The prompt a row gives the
    evaluation mode and online training."""
    turns = list(conversation.turns)
    while turns and turns[-1][0] in ANSWER_ROLES:
        turns.pop()
    if not turns or turns[-1][0] not in ("human", "input", "tool"):
        return None
    return turns


def _answer_turns(value) -> list[Turn] | str:
    """An answer given as plain text (one bot turn), or like a prompt (marked text, messages)."""
    if isinstance(value, str) and not (HUMAN in value or BOT in value or "\n\nAssistant:" in "\n\n" + value):
        return [("bot", value.strip())]
    return _prompt_turns(value)


def _answer(value, prompt: list[Turn]) -> list[Turn] | str:
    """The answer turns in a ``chosen``/``rejected`` value: text, ``[assistant message]``, a single
    ``{from, value}`` message, or the whole conversation repeating the prompt."""
    turns = _answer_turns(value)
    if isinstance(turns, str):
        return turns
    split = len(turns)
    while split and turns[split - 1][0] in ANSWER_ROLES:
        split -= 1
    if split == len(turns):
        return "answer_not_last"
    if split and turns[:split] != prompt:
        return "prompt_mismatch"
    return turns[split:]


def pair(record) -> Pair | str:
    """The preference pair in a row (shapes in the module docstring), or the reason it has none."""
    if not isinstance(record, dict):
        return "not_an_object"
    if record.get("chosen") is None or record.get("rejected") is None:
        return "no_pair"
    tools = tool_list(record.get("tools"))
    if tools == "bad_tools":
        return tools
    if record.get("prompt") is not None:
        prompt = _prompt_turns(record["prompt"])
    elif record.get("conversations") is not None:
        prompt = _turns(record["conversations"], "from", "value")
    elif record.get("instruction") is not None:
        prompt = _alpaca({**record, "output": None}, need_answer=False)
    else:
        prompt = None
    if isinstance(prompt, str):
        return prompt
    if prompt is None:  # two whole conversations sharing all but the last answer
        chosen, rejected = _prompt_turns(record["chosen"]), _prompt_turns(record["rejected"])
        for turns in (chosen, rejected):
            if isinstance(turns, str):
                return turns
            if len(turns) < 2 or turns[-1][0] not in ANSWER_ROLES:
                return "answer_not_last"
        if chosen[:-1] != rejected[:-1]:
            return "prompt_mismatch"
        prompt, chosen, rejected = chosen[:-1], chosen[-1:], rejected[-1:]
    else:
        chosen, rejected = _answer(record["chosen"], prompt), _answer(record["rejected"], prompt)
        for turns in (chosen, rejected):
            if isinstance(turns, str):
                return turns
    prompt = _system_turns(record) + prompt
    if not prompt or prompt[-1][0] not in ("human", "input", "tool"):
        return "prompt_not_human"
    reason = problem(prompt + chosen) or problem(prompt + rejected)
    if reason:
        return reason
    if chosen == rejected:
        return "same_answers"
    return Pair(prompt, chosen, rejected, tools)


# ---------------------------------------------------------------- whole files

@dataclass
class Skipped:
    """Records left out, counted by reason, and the first of them in words."""

    skipped: dict[str, int] = field(default_factory=dict)
    first_problem: str = ""

    def skip(self, reason: str, where: str) -> None:
        self.skipped[reason] = self.skipped.get(reason, 0) + 1
        self.first_problem = self.first_problem or f"{where}: {describe(reason)}"

    def summary(self) -> str:
        """One line on rows skipped, by reason; empty when there were none."""
        if not self.skipped:
            return ""
        return (f"{sum(self.skipped.values())} rows skipped (" +
                ", ".join(f"{reason}: {n}" for reason, n in sorted(self.skipped.items())) +
                f"; first: {self.first_problem})")


@dataclass(frozen=True)
class ReadOptions:
    """How a file is read. ``mode``: ``train`` (conversations that end with an answer), ``prompts``
    (the evaluation mode: an answer is optional; a row that is a bare string is a question) or
    ``pairs`` (preference pairs). ``markup``: see :func:`problem`. ``renames``: column renames."""

    mode: str = "train"
    markup: bool = False
    renames: tuple[tuple[str, str], ...] = ()
    oasst_paths: str = "all"
    oasst_langs: frozenset[str] | None = frozenset({"en"})


@dataclass
class Unit:
    """One input record (line, list item or table row; a whole tree for OpenAssistant) and what it gave."""

    line: int
    conversations: list[Conversation] = field(default_factory=list)
    pairs: list[Pair] = field(default_factory=list)
    reason: str | None = None  # why it gave nothing
    malformed: bool = False  # the reason is a malformed record (not a record that is merely unused)
    excerpt: str = ""
    events: Counter | None = None  # things left out inside the record (OpenAssistant trees)
    record: object = None  # the record as read (renamed), for callers that refuse it later
    where: str = ""  # source:line, for messages


def read(path: Path, shape: FileShape | None = None, options: ReadOptions = ReadOptions()) -> Iterator[Unit]:
    """Every record of a file as a :class:`Unit`; see :func:`read_records`."""
    yield from read_records(records(path), str(path), shape, options)


def read_records(stream: Iterator[Record], name: str, shape: FileShape | None = None,
                 options: ReadOptions = ReadOptions()) -> Iterator[Unit]:
    """Every record of a stream (a file's, or a hub dataset's) as a :class:`Unit`; ``name`` names the
    source in each conversation's ``where``. ``shape`` None: detected from the first records
    (OpenAssistant sources are read whole as such; others row by row, each by its own columns)."""
    renames = dict(options.renames)
    if renames:
        stream = ((n, rename(r, renames), reason, shown) for n, r, reason, shown in stream)
    if shape is None:
        head = list(itertools.islice(stream, DETECT_RECORDS))
        stream = itertools.chain(head, stream)
        sample = [r for _, r, reason, _ in head if reason is None]
        found = vote(sample)
        speakers = speaker_map(markup_texts(sample, found)) if found in MARKUP_SHAPES else ()
        shape = FileShape(found if found in OASST_SHAPES else None, speakers or ())
    if shape.name == "oasst_trees":
        yield from _oasst_trees(stream, options, name)
    elif shape.name == "oasst_messages":
        yield from _oasst_messages(stream, options, name)
    else:
        for number, record, reason, shown in stream:
            where = f"{name}:{number}"
            if reason:
                yield Unit(number, reason=reason, malformed=True, excerpt=shown, where=where)
                continue
            found = _read_record(record, shape, options)
            if isinstance(found, str):
                yield Unit(number, reason=found, malformed=True, excerpt=shown or excerpt(record), where=where)
                continue
            found.where = where
            yield Unit(number, pairs=[found] if isinstance(found, Pair) else [],
                       conversations=[found] if isinstance(found, Conversation) else [], excerpt=shown,
                       record=record, where=where)


def _read_record(record, shape: FileShape, options: ReadOptions) -> Conversation | Pair | str:
    if options.mode == "prompts" and isinstance(record, str):
        return Conversation([("human", record.strip())]) if record.strip() else "empty_text"
    name = shape.name or shape_of(record)
    if name is None:
        return "not_an_object" if not isinstance(record, dict) else "unknown_shape"
    if options.mode == "pairs":
        return pair(record)
    return conversation(record, name, speakers=shape.speakers, need_answer=options.mode != "prompts",
                        markup=options.markup)


def _oasst_unit(line: int, root: oasst.Message | None, problems: Counter, options: ReadOptions,
                shown: str, where: str) -> Unit:
    unit = Unit(line, excerpt=shown, events=Counter({f"malformed {k}": v for k, v in problems.items()}), where=where)
    if root is None:
        unit.reason, unit.malformed = "oasst_no_valid_root", True
        return unit
    root, removed = oasst.prune(root, options.oasst_langs)
    unit.events.update({f"removed {k}": v for k, v in removed.items()})
    if root is None:
        unit.reason = "oasst_root_removed"
        return unit
    unit.conversations = [Conversation(oasst.to_turns(p), where=where) for p in oasst.paths(root, options.oasst_paths)]
    if not unit.conversations:
        unit.reason = "oasst_no_answer"
    unit.pairs = [Pair(oasst.to_turns(prompt), [("bot", better.text.strip())], [("bot", worse.text.strip())],
                       where=where) for prompt, better, worse in oasst.preference_pairs(root)]
    return unit


def _oasst_trees(stream, options: ReadOptions, name: str) -> Iterator[Unit]:
    for number, record, reason, shown in stream:
        shown = shown or excerpt(record)
        where = f"{name}:{number}"
        if reason:
            yield Unit(number, reason=reason, malformed=True, excerpt=shown, where=where)
        elif not isinstance(record, dict) or not isinstance(record.get("prompt"), dict):
            yield Unit(number, reason="oasst_missing_prompt", malformed=True, excerpt=shown, where=where)
        elif not oasst.tree_state_ok(record.get("tree_state")):
            yield Unit(number, reason="oasst_tree_not_exported", excerpt=shown, where=where)
        else:
            yield _oasst_unit(number, *oasst.from_nested(record["prompt"]), options, shown, f"{name}:{number}")


def _oasst_messages(stream, options: ReadOptions, name: str) -> Iterator[Unit]:
    """Flat message table: rows grouped by ``message_tree_id`` (held in memory: one file's messages)."""
    trees: dict[str, list] = {}
    first_line: dict[str, int] = {}
    for number, record, reason, shown in stream:
        if reason is None:
            message = oasst.message_from(record)
            reason = message if isinstance(message, str) else None
            if reason is None and not isinstance(record.get("message_tree_id"), str):
                reason = "message_missing_tree_id"
        if reason:
            yield Unit(number, reason=reason, malformed=True, excerpt=shown or excerpt(record), where=f"{name}:{number}")
            continue
        tree_id = record["message_tree_id"]
        first_line.setdefault(tree_id, number)
        trees.setdefault(tree_id, []).append(record)
    for tree_id, rows in trees.items():
        if not all(oasst.tree_state_ok(oasst._optional(row.get("tree_state"))) for row in rows):
            yield Unit(first_line[tree_id], reason="oasst_tree_not_exported", excerpt=f"message_tree_id={tree_id}",
                       events=Counter(merged_rows=len(rows) - 1), where=f"{name}:{first_line[tree_id]}")
            continue
        unit = _oasst_unit(first_line[tree_id], *oasst.from_flat(rows), options, f"message_tree_id={tree_id}",
                           f"{name}:{first_line[tree_id]}")
        unit.events["merged_rows"] = len(rows) - 1
        yield unit
