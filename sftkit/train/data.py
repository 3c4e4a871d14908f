"""Reading training rows from files or the hub and turning each into a conversation.

Accepted rows (after ``data_col_dict`` renames):

* ``instruction`` (+ optional ``input``) + ``output``: alpaca style;
* ``messages``: a list of ``{"role", "content"}`` (or ShareGPT ``{"from", "value"}``);
* ``input`` or ``text``: ``<human>: …\\n<bot>: …`` text (``create_data.py finalize`` output, raw OIG,
  h2oGPT's ``prompt_type: plain`` rows); under ``plain`` a text without markers is learned whole.

An optional ``context`` column (h2oGPT's) is raw text put before the prompt, and an optional
``prompt_type`` column names each row's format (an h2oGPT name or code, or ``chat``): it is
honoured unless ``--prompt_type`` is given, and :class:`ReadStats` records which won.
"""
from __future__ import annotations

import gzip
import json
import random
from dataclasses import dataclass, field
from pathlib import Path

from sftkit import json_records
from sftkit.errors import DataError
from sftkit.prompts import (DEFAULT_PROMPT_TYPE, PromptError, Turn, check_turns, get_prompt_type, has_markers,
                            split_turns)

DATA_SUFFIXES = (".json", ".jsonl", ".json.gz", ".jsonl.gz", ".parquet")
KNOWN_COLUMNS = ("instruction", "messages", "input", "text")
_ROLE_NAMES = {"system": "system", "user": "human", "human": "human", "assistant": "bot", "bot": "bot",
               "gpt": "bot", "model": "bot"}




@dataclass
class Conversation:
    """One usable row: its turns, where it came from, its prompt type and, for text rows, the text.

    ``text`` is kept so prompt types that train marker text as written (plain, human_bot) use it
    unchanged; ``prompt_type`` None means the run's.
    """

    turns: list[Turn]
    source: str
    prompt_type: str | None = None
    text: str | None = None


@dataclass
class ReadStats:
    rows: int = 0
    skipped: dict[str, int] = field(default_factory=dict)
    repaired_utf8: int = 0  # rows kept with U+FFFD in place of invalid UTF-8 bytes
    first_repaired: str = ""
    first_problem: str = ""  # the first unusable row, in full
    prompt_types: dict[str, int] = field(default_factory=dict)  # usable rows per prompt type
    prompt_type_from: dict[str, int] = field(default_factory=dict)  # usable rows per deciding source
    overridden: dict[str, int] = field(default_factory=dict)  # row columns the flag overrode, by value

    def skip(self, reason: str) -> None:
        self.skipped[reason] = self.skipped.get(reason, 0) + 1

    def summary(self) -> str:
        """One line on rows skipped (by reason) or repaired while reading; empty when there were none."""
        parts = []
        if self.skipped:
            parts.append(f"{sum(self.skipped.values())} rows skipped (" +
                         ", ".join(f"{reason}: {n}" for reason, n in sorted(self.skipped.items())) + ")")
        if self.repaired_utf8:
            parts.append(f"{self.repaired_utf8} rows repaired (invalid UTF-8 replaced by U+FFFD; first at "
                         f"{self.first_repaired})")
        return "; ".join(parts)

    def prompt_type_summary(self) -> str:
        """One line saying which prompt type each row got and what decided it."""
        types = ", ".join(f"{name} x{n}" for name, n in sorted(self.prompt_types.items()))
        sources = ", ".join(f"{n} by {source}" for source, n in sorted(self.prompt_type_from.items()))
        line = f"prompt_type: {types} ({sources})"
        if self.overridden:
            line += ("; --prompt_type overrode the rows' own prompt_type column ("
                     + ", ".join(f"{value} x{n}" for value, n in sorted(self.overridden.items())) + ")")
        return line


def data_files(path: str) -> list[Path]:
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


def _read_json_file(path: Path) -> list:
    """The rows of a JSON array or JSON-lines file.

    A JSON-lines line that is not UTF-8 or not JSON becomes an :class:`InvalidLine` (skipped and
    counted); a JSON array with stray non-UTF-8 bytes is read with U+FFFD in their place and the
    rows that hold one are marked :class:`Repaired`.
    """
    opener = gzip.open if path.name.endswith(".gz") else open
    try:
        with opener(path, "rb") as fh:
            raw = fh.read()
    except OSError as exc:
        raise DataError(f"{path}: cannot read ({exc})") from None
    stripped = raw.lstrip()
    if stripped.startswith(b"["):
        return _read_json_array(path, raw)
    if stripped.startswith(b"{"):
        whole = _parse_whole_object(raw)
        if whole is not None:
            raise DataError(f"{path}: expected a list of rows (a JSON array, or one JSON object per line), got "
                            f"one JSON object with keys {sorted(whole)[:8]}; put the rows in a list, or write "
                            f"them one per line")
    rows = []
    for number, line in enumerate(raw.splitlines(), 1):
        if not line.strip():
            continue
        try:
            text = line.decode("utf-8")
        except UnicodeDecodeError as exc:
            rows.append(InvalidLine(f"invalid UTF-8; line {number}: byte {exc.start} is not UTF-8"))
            continue
        record, reason = json_records.parse_record(text)
        if reason:
            words, explanation = json_records.EXPLAINED[reason]
            rows.append(InvalidLine(f"{words}; line {number} {explanation}"))
        else:
            rows.append(record)
    return rows


def _parse_whole_object(raw: bytes) -> dict | None:
    """The file as one JSON object when it is one spread over several lines (pretty-printed), else None."""
    if len(raw.strip().splitlines()) < 2:
        return None
    value, _ = json_records.parse_record(raw.decode("utf-8", errors="replace"))
    return value if isinstance(value, dict) else None


def _read_json_array(path: Path, raw: bytes) -> list:
    try:
        text, repaired = raw.decode("utf-8"), False
    except UnicodeDecodeError:
        text, repaired = raw.decode("utf-8", errors="replace"), True
    rows = []
    try:
        for number, (record, reason, _) in enumerate(json_records.list_records(text), 1):
            if reason:
                words, explanation = json_records.EXPLAINED[reason]
                record = InvalidLine(f"{words}; item {number} {explanation}")
            rows.append(record)
    except json.JSONDecodeError as exc:
        raise DataError(f"{path}: invalid JSON at line {exc.lineno}: {exc.msg}") from None
    if repaired:
        rows = [Repaired(row) if isinstance(row, dict) and "\ufffd" in json.dumps(row, ensure_ascii=False) else row
                for row in rows]
    return rows


class Repaired(dict):
    """A row whose invalid UTF-8 bytes were replaced by U+FFFD: used, and counted as repaired."""


class InvalidLine(str):
    """A JSON-lines line that does not parse: skipped and counted like any other unusable row."""


def _read_parquet(path: Path) -> list[dict]:
    import pyarrow.parquet as pq

    try:
        return pq.read_table(path).to_pylist()
    except Exception as exc:  # pyarrow raises many types for a damaged file
        raise DataError(f"{path}: cannot read parquet ({exc})") from None


def _read_hub(name: str) -> list[dict]:
    import datasets

    try:
        dataset = datasets.load_dataset(name, split="train")
    except Exception as exc:  # offline, unknown id, no train split: all mean the same to the user
        raise DataError(f"{name}: no such file or directory, and not a loadable hub dataset "
                        f"({str(exc).splitlines()[0][:200]}). Give a json/jsonl/parquet file or directory.") from None
    return [dict(r) for r in dataset]


def read_rows(path: str) -> list[tuple[str, dict]]:
    """Every row at ``path`` as ``(where, row)``; ``where`` is ``file:row`` for error messages."""
    files = data_files(path)
    if not files:
        return [(f"{path}:{i}", row) for i, row in enumerate(_read_hub(path))]
    out = []
    for f in files:
        rows = _read_parquet(f) if f.name.endswith(".parquet") else _read_json_file(f)
        out.extend((f"{f}:{i}", row) for i, row in enumerate(rows))
    return out


def rename_columns(row: dict, col_dict: dict) -> dict:
    if not col_dict:
        return row
    return {col_dict.get(k, k): v for k, v in row.items()}


def row_text(row: dict) -> str | None:
    """The ``input``/``text`` string of a text row; None for alpaca and messages rows."""
    if row.get("instruction") is not None or row.get("messages") is not None:
        return None
    for key in ("input", "text"):
        if isinstance(row.get(key), str):
            return row[key]
    return None


def row_to_turns(row: dict) -> list[Turn]:
    """The conversation in a row (see the module docstring), or PromptError/DataError saying why not.

    Alpaca rows keep instruction and input apart (``human`` and ``input`` turns), as prompt types
    such as instruct write them under different headings.
    """
    text = row_text(row)
    if row.get("instruction") is not None:
        if row.get("output") is None:
            raise DataError("alpaca-style row has 'instruction' but no 'output'")
        turns = [("human", str(row["instruction"]).strip())]
        if str(row.get("input") or "").strip():
            turns.append(("input", str(row["input"]).strip()))
        turns.append(("bot", str(row["output"]).strip()))
        if str(row.get("system") or "").strip():
            turns.insert(0, ("system", str(row["system"]).strip()))
    elif row.get("messages") is not None:
        turns = _messages_to_turns(row["messages"])
    elif text is not None:
        turns = split_turns(text)
    else:
        raise DataError(f"no usable column (found {sorted(row)[:8]}); expected one of {', '.join(KNOWN_COLUMNS)} "
                        f"or map yours with --data_col_dict")
    if isinstance(row.get("context"), str) and row["context"]:
        turns.insert(0, ("context", row["context"]))
    if any(role == "bot" and not text for role, text in turns):
        raise PromptError("a bot turn is empty")
    check_turns(turns)
    return turns


def choose_prompt_type(row: dict, prompt_type: str, fallback: str = DEFAULT_PROMPT_TYPE) -> tuple[str, str]:
    """(the row's prompt type, what decided it): ``--prompt_type`` when given, else the row's own
    ``prompt_type`` column, else ``fallback``. Names and codes come back as canonical names."""
    if prompt_type:
        return get_prompt_type(prompt_type).name, "--prompt_type"
    own = row.get("prompt_type")
    if own is not None and str(own).strip():
        try:
            return get_prompt_type(own).name, "the rows' prompt_type column"
        except PromptError:
            raise DataError(f"unknown prompt_type {own!r} in the row's prompt_type column; fix the row, or "
                            f"give --prompt_type to use one for every row") from None
    return get_prompt_type(fallback).name, f"default ({fallback}; no prompt_type column)"


def _own_prompt_type(row: dict) -> str:
    """The row's prompt_type column as a canonical name ('' when absent; unknown values as written)."""
    own = "" if row.get("prompt_type") is None else str(row["prompt_type"]).strip()
    try:
        return get_prompt_type(own).name if own else ""
    except PromptError:
        return own


def row_to_conversation(row: dict, where: str, prompt_type: str = "",
                        fallback: str = DEFAULT_PROMPT_TYPE) -> tuple[Conversation, str]:
    """A row as a :class:`Conversation` with its prompt type, and what decided that type."""
    chosen, source = choose_prompt_type(row, prompt_type, fallback)
    text = row_text(row)
    if text is not None:
        text = (row.get("context") or "") + text if isinstance(row.get("context"), str) else text
        if chosen == "plain" and not has_markers(text):
            if not text.strip():
                raise DataError("the text is empty")
            return Conversation([], where, chosen, text), source
    return Conversation(row_to_turns(row), where, chosen, text), source


def _messages_to_turns(messages) -> list[Turn]:
    if not isinstance(messages, list):
        raise DataError(f"'messages' must be a list, got {type(messages).__name__}")
    turns = []
    for m in messages:
        if not isinstance(m, dict):
            raise DataError("each message must be an object with 'role' and 'content'")
        role = m.get("role", m.get("from"))
        content = m.get("content", m.get("value"))
        if role not in _ROLE_NAMES or not isinstance(content, str):
            raise DataError(f"message with role {role!r}: expected role in {sorted(_ROLE_NAMES)} and text content")
        turns.append((_ROLE_NAMES[role], content.strip()))
    return turns


def load_conversations(path: str, col_dict: dict | None = None, prompt_type: str = "",
                       fallback: str = DEFAULT_PROMPT_TYPE) -> tuple[list[Conversation], ReadStats]:
    """Read ``path`` into conversations; unusable rows are counted by reason, never silently lost.

    ``prompt_type`` (the flag) given: every row uses it. Empty: each row's ``prompt_type`` column,
    else ``fallback``. A dataset where no row is usable is a DataError naming the first problem.
    """
    for name in (prompt_type, fallback):
        if name:
            get_prompt_type(name)  # a typo in the flag fails here, not as one skip per row
    rows = read_rows(path)
    if not rows:
        raise DataError(f"{path}: the dataset is empty")
    stats = ReadStats(rows=len(rows))
    conversations = []

    def convert(row: dict, where: str):
        return row_to_conversation(row, where, prompt_type, fallback)

    for row, (conversation, source) in usable_rows(rows, col_dict, stats, convert):
        conversations.append(conversation)
        chosen = conversation.prompt_type
        stats.prompt_types[chosen] = stats.prompt_types.get(chosen, 0) + 1
        stats.prompt_type_from[source] = stats.prompt_type_from.get(source, 0) + 1
        own = _own_prompt_type(row)
        if prompt_type and own and own != chosen:
            stats.overridden[own] = stats.overridden.get(own, 0) + 1
    if not conversations:
        raise DataError(f"{path}: no usable rows out of {len(rows)}; first problem: {stats.first_problem}")
    return conversations, stats


def usable_rows(rows: list[tuple[str, object]], col_dict: dict | None, stats: ReadStats, convert):
    """Yield ``(row, convert(row, where))`` for every row that converts; count the others in ``stats`` by
    reason (the first one in full), and rows kept with repaired UTF-8. Shared by SFT and preference data."""
    for where, row in rows:
        repaired = isinstance(row, Repaired)
        try:
            if isinstance(row, InvalidLine):
                raise DataError(str(row))
            if not isinstance(row, dict):
                raise DataError(f"row is a {type(row).__name__}, not a JSON object")
            row = rename_columns(row, col_dict or {})
            item = convert(row, where)
        except (DataError, PromptError) as exc:
            stats.skip(str(exc).split(";")[0].split(" (found")[0])
            stats.first_problem = stats.first_problem or f"{where}: {exc}"
            continue
        if repaired:
            stats.repaired_utf8 += 1
            stats.first_repaired = stats.first_repaired or where
        yield row, item


def mix_in(base: list, extra: list, factor: float, seed: int) -> list:
    """``base`` plus ``round(factor * len(base))`` rows of ``extra`` (with replacement beyond its size)."""
    want = round(factor * len(base))
    if want <= 0 or not extra:
        return list(base)
    rng = random.Random(seed)
    picked = []
    while len(picked) + len(extra) <= want:
        picked.extend(extra)
    picked.extend(rng.sample(extra, want - len(picked)))
    return list(base) + picked


def split_validation(items: list, val_set_size: float, seed: int) -> tuple[list, list]:
    """Hold out ``val_set_size`` items (a count, or a fraction when below 1), chosen by ``seed``."""
    count = round(val_set_size * len(items)) if val_set_size < 1 else int(val_set_size)
    if val_set_size > 0:
        count = max(count, 1)
    if count >= len(items):
        raise DataError(f"--val_set_size={val_set_size} leaves no training rows out of {len(items)}; "
                        f"lower it or give --valid_path")
    order = list(range(len(items)))
    random.Random(seed).shuffle(order)
    held = set(order[:count])
    return [x for i, x in enumerate(items) if i not in held], [items[i] for i in sorted(held)]
