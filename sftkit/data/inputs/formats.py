"""Input formats: every supported file becomes the same rows, conversations in ``<human>:``/``<bot>:`` markup.

A file is JSONL or a JSON list (plain or gzipped), or parquet. Its format is detected from its
first records unless ``--input_format`` names it. Each input record (an OpenAssistant tree counts
as one) becomes a :class:`Unit`: the conversations it gives, or why it gives none. Malformed
records are never an exception: their reason goes to the rejects file.
"""
from __future__ import annotations

import gzip
import json
import re
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator

from sftkit import json_records
from sftkit.data import DataError
from sftkit.data.inputs import oasst
from sftkit.prompts import BOT, HUMAN, Turn, join_turns

FORMATS = ("oig", "oasst_trees", "oasst_messages", "sharegpt", "alpaca", "messages", "h2ogpt")
OASST_FORMATS = ("oasst_trees", "oasst_messages")
DETECT_RECORDS = 200
EXCERPT_CHARS = 200

# Speaker spellings seen in OIG-style markup, read as <human>: and <bot>: when a file uses them.
HUMAN_TAGS = ("human", "user", "prompter", "person")
BOT_TAGS = ("bot", "assistant", "gpt", "ai", "chatbot", "model")
_TAG = re.compile(r"<([A-Za-z][\w ]{0,20})>:")
_BARE_LABEL = re.compile(r"(?m)^[ \t]*([A-Z][\w.'-]*(?: [A-Z][\w.'-]*){0,2}):[ \t]")  # "Rosey: ..." at a line start

# Speaker names of the chat formats (ShareGPT's "from", the messages format's "role").
CHAT_ROLES = {"human": "human", "user": "human", "prompter": "human",
              "gpt": "bot", "chatgpt": "bot", "bing": "bot", "bard": "bot", "bot": "bot", "assistant": "bot",
              "model": "bot", "system": "system"}


@dataclass
class Unit:
    """One input record (line, list item or table row; a whole tree for OpenAssistant) and what it gave."""

    line: int
    texts: list[str] = field(default_factory=list)
    reason: str | None = None  # why it gave no conversation
    malformed: bool = False  # the reason is a malformed record (listed in the rejects file)
    excerpt: str = ""
    source: str | None = None  # the record's own source (OIG metadata), else the file's
    pairs: list[dict] = field(default_factory=list)  # OpenAssistant preference pairs
    events: Counter = field(default_factory=Counter)  # things left out inside the record


@dataclass(frozen=True)
class FileFormat:
    name: str
    speakers: tuple[tuple[str, str], ...] = ()  # (other spelling, standard marker) pairs for oig/h2ogpt

    def describe(self) -> str:
        if not self.speakers:
            return self.name
        return f"{self.name}, speakers " + ", ".join(f"{a} read as {b}" for a, b in self.speakers)


@dataclass(frozen=True)
class ReadOptions:
    oasst_paths: str = "all"
    oasst_langs: frozenset[str] | None = frozenset({"en"})


# ---- records: (number, record or None, reason, excerpt) from JSONL, a JSON list or parquet ----

def _open(path: Path):
    with open(path, "rb") as fh:
        gzipped = fh.read(2) == b"\x1f\x8b"
    return gzip.open(path, "rb") if gzipped else open(path, "rb")


def container(path: Path) -> str:
    """``parquet``, ``json_list`` or ``jsonl``, from the file's first bytes (after gunzip)."""
    with open(path, "rb") as fh:
        if fh.read(4) == b"PAR1":
            return "parquet"
    with _open(path) as fh:
        head = fh.read(4096).lstrip(b"\xef\xbb\xbf \t\r\n")
    return "json_list" if head.startswith(b"[") else "jsonl"


def _excerpt(record) -> str:
    return json.dumps(record, ensure_ascii=False, default=str)[:EXCERPT_CHARS]


def iter_records(path: Path) -> Iterator[tuple[int, object, str | None, str]]:
    """(1-based number, record, reason it is unreadable or None, excerpt) for each record of the file."""
    kind = container(path)
    if kind == "parquet":
        import pyarrow.parquet as pq

        number = 0
        for batch in pq.ParquetFile(path).iter_batches(batch_size=2048):
            for record in batch.to_pylist():
                number += 1
                yield number, record, None, ""
        return
    if kind == "json_list":
        with _open(path) as fh:
            data = fh.read()
        try:
            for number, (record, reason, excerpt) in enumerate(json_records.list_records(
                    data.decode(json.detect_encoding(data), "surrogatepass")), 1):
                yield number, record, reason, excerpt if reason else ""
        except ValueError as exc:
            raise DataError(f"{path}: starts like a JSON list but does not parse as one ({exc}); "
                            "fix the file or write it as JSONL (one record per line)") from None
        return
    with _open(path) as fh:
        for number, raw in enumerate(fh, 1):
            raw = raw.rstrip(b"\r\n")
            if not raw.strip():
                continue
            excerpt = raw[:EXCERPT_CHARS].decode("utf-8", errors="replace")
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError:
                yield number, None, "invalid_utf8", excerpt
                continue
            record, reason = json_records.parse_record(line)
            yield number, record, reason, excerpt


# ---- detection ----

SIGNATURES: list[tuple[str, Callable[[dict], bool]]] = [
    ("oasst_trees", lambda r: "message_tree_id" in r and isinstance(r.get("prompt"), dict)),
    ("oasst_messages", lambda r: "message_id" in r and "parent_id" in r and "role" in r),
    ("sharegpt", lambda r: isinstance(r.get("conversations"), list)),
    ("messages", lambda r: isinstance(r.get("messages"), list)),
    ("alpaca", lambda r: "instruction" in r and "output" in r),
    ("h2ogpt", lambda r: isinstance(r.get("input"), str) and ("prompt_type" in r or _TAG.search(r["input"]))),
    ("oig", lambda r: isinstance(r.get("text"), str)),
]


def signature(record) -> str | None:
    if isinstance(record, dict):
        for name, test in SIGNATURES:
            if test(record):
                return name
    return None


def detect_speakers(texts: list[str], path: Path) -> tuple[tuple[str, str], ...]:
    """Other spellings of the speaker tags a markup file uses, mapped to the standard ones.

    A file using only <human>:/<bot>: needs none; a file using e.g. <user>: and <assistant>: gets
    them mapped (and said so in the stage summary); a file whose tags are unknown is an error.
    """
    found = Counter(tag.lower() for text in texts for tag in _TAG.findall(text))
    humans = [t for t in HUMAN_TAGS if found[t]]
    bots = [t for t in BOT_TAGS if found[t]]
    if found and (not humans or not bots):
        missing, known = ("human", HUMAN_TAGS) if not humans else ("bot", BOT_TAGS)
        labels = Counter(label for text in texts for label in set(_BARE_LABEL.findall(text)))
        seen = (f"their turns start with {', '.join(f'<{t}>:' for t, _ in found.most_common(6))}"
                + "".join(f" and the bare label {label}: (in {n} of {len(texts)} records)"
                          for label, n in labels.most_common(1)))
        fix = (f"rewrite {labels.most_common(1)[0][0]}: as <{missing}>:" if labels else "rewrite the tags")
        raise DataError(f"{path}: its first records have no {missing} tag: {seen}; sftkit reads "
                        f"{', '.join(f'<{t}>:' for t in known)} as the {missing}. To use the file, {fix}, or pass "
                        "--input_format if this is not a markup file")
    mapping = [(f"<{t}>:", HUMAN) for t in humans if t != "human"] + [(f"<{t}>:", BOT) for t in bots if t != "bot"]
    return tuple(mapping)


def detect(path: Path, requested: str = "auto") -> FileFormat:
    """The file's format: ``requested`` unless auto, else the signature most of its first records show."""
    if requested != "auto" and requested not in FORMATS:
        raise DataError(f"--input_format={requested}: choose auto or one of {', '.join(FORMATS)}")
    votes: Counter = Counter()
    sample: list = []
    for _, record, reason, _ in iter_records(path):
        if reason is None:
            sample.append(record)
            name = signature(record)
            if name:
                votes[name] += 1
        if len(sample) >= DETECT_RECORDS:
            break
    if requested != "auto":
        name = requested
    elif votes:
        name = votes.most_common(1)[0][0]
    elif not sample:  # no well-formed record: read it as OIG lines, so each bad one is counted in the rejects
        name = "oig"
    else:
        keys = sorted({k for r in sample[:20] if isinstance(r, dict) for k in r})[:12]
        raise DataError(f"{path}: cannot tell its input format (first records' keys: {keys or 'none'}); "
                        f"pass --input_format= one of {', '.join(FORMATS)} (see README: Input formats)")
    speakers: tuple = ()
    if name in ("oig", "h2ogpt"):
        field_name = "text" if name == "oig" else "input"
        speakers = detect_speakers([r[field_name] for r in sample if isinstance(r, dict)
                                    and isinstance(r.get(field_name), str)], path)
    return FileFormat(name, speakers)


# ---- per-record readers: a record to turns (or markup text), or the reason it is malformed ----

def _markup(text, speakers) -> str:
    """Markup text with other speaker spellings replaced, or a reason."""
    if not isinstance(text, str):
        return "missing_text"
    if not text.strip():
        return "empty_text"
    for other, standard in speakers:
        text = re.sub(re.escape(other), standard, text, flags=re.IGNORECASE)
    if HUMAN not in text:
        return "no_human_turn"
    if BOT not in text:
        return "no_bot_turn"
    return text


def _check_turns(turns: list[Turn]) -> str | None:
    if not any(role == "human" for role, _ in turns):
        return "no_human_turn"
    if not any(role == "bot" for role, _ in turns):
        return "no_bot_turn"
    for _, text in turns:
        if not text:
            return "empty_turn"
        if HUMAN in text or BOT in text:
            return "turn_marker_in_text"
    return None


def _chat_turns(items, role_key: str, text_key: str) -> list[Turn] | str:
    if not isinstance(items, list) or not items:
        return "no_turns"
    turns: list[Turn] = []
    for item in items:
        if not isinstance(item, dict) or not isinstance(item.get(text_key), str):
            return "bad_turn"
        role = CHAT_ROLES.get(str(item.get(role_key)).lower())
        if role is None:
            return "unknown_speaker"
        if role != "system":  # the markup has no system turn; the conversation itself is kept
            turns.append((role, item[text_key].strip()))
    return _check_turns(turns) or turns


def read_oig(record, speakers) -> tuple[str, str | None] | str:
    if not isinstance(record, dict):
        return "not_an_object"
    text = _markup(record.get("text"), speakers)
    if HUMAN not in text:
        return text
    metadata = record.get("metadata")
    source = metadata.get("source") if isinstance(metadata, dict) else None
    return text, source if isinstance(source, str) else None


def read_h2ogpt(record, speakers) -> str:
    if not isinstance(record, dict):
        return "not_an_object"
    if record.get("prompt_type") not in (None, "plain", "human_bot"):
        return "unsupported_prompt_type"
    text = _markup(record.get("input"), speakers)
    if HUMAN not in text:
        return text
    return re.sub(rf"\s*{re.escape(HUMAN)}\s*$", "", text)  # h2oGPT rows end with an empty human turn


def read_sharegpt(record) -> list[Turn] | str:
    if not isinstance(record, dict):
        return "not_an_object"
    return _chat_turns(record.get("conversations"), "from", "value")


def read_messages(record) -> list[Turn] | str:
    if not isinstance(record, dict):
        return "not_an_object"
    return _chat_turns(record.get("messages"), "role", "content")


def read_alpaca(record) -> list[Turn] | str:
    if not isinstance(record, dict):
        return "not_an_object"
    instruction, extra, output = record.get("instruction"), record.get("input"), record.get("output")
    if not isinstance(instruction, str) or not instruction.strip():
        return "missing_instruction"
    if extra is not None and not isinstance(extra, str):
        return "bad_input"
    if not isinstance(output, str) or not output.strip():
        return "missing_output"
    question = instruction.strip() + (f"\n\n{extra.strip()}" if extra and extra.strip() else "")
    return _check_turns([("human", question), ("bot", output.strip())]) or [("human", question),
                                                                           ("bot", output.strip())]


# ---- OpenAssistant trees ----

def _pair_row(prompt: list[oasst.Message], chosen: oasst.Message, rejected: oasst.Message, source: str) -> dict:
    return {"prompt": [{"role": "user" if m.role == "prompter" else "assistant", "content": m.text.strip()}
                       for m in prompt],
            "chosen": chosen.text.strip(), "rejected": rejected.text.strip(), "source": source}


def tree_unit(line: int, root: oasst.Message | None, problems: Counter, options: ReadOptions, source: str,
              excerpt: str) -> Unit:
    unit = Unit(line, excerpt=excerpt, events=Counter({f"malformed {k}": v for k, v in problems.items()}))
    if root is None:
        unit.reason, unit.malformed = "oasst_no_valid_root", True
        return unit
    root, removed = oasst.prune(root, options.oasst_langs)
    unit.events.update({f"removed {k}": v for k, v in removed.items()})
    if root is None:
        unit.reason = "oasst_root_removed"
        return unit
    unit.texts = [join_turns(oasst.to_turns(p)) for p in oasst.paths(root, options.oasst_paths)]
    if not unit.texts:
        unit.reason = "oasst_no_answer"
    unit.pairs = [_pair_row(*pair, source) for pair in oasst.preference_pairs(root)]
    return unit


def read_oasst_trees(records, options: ReadOptions, source: str) -> Iterator[Unit]:
    for number, record, reason, excerpt in records:
        excerpt = excerpt or _excerpt(record)
        if reason:
            yield Unit(number, reason=reason, malformed=True, excerpt=excerpt)
        elif not isinstance(record, dict) or not isinstance(record.get("prompt"), dict):
            yield Unit(number, reason="oasst_missing_prompt", malformed=True, excerpt=excerpt)
        elif not oasst.tree_state_ok(record.get("tree_state")):
            yield Unit(number, reason="oasst_tree_not_exported", excerpt=excerpt)
        else:
            yield tree_unit(number, *oasst.from_nested(record["prompt"]), options, source, excerpt)


def _state(row: dict):
    return oasst._optional(row.get("tree_state"))


def read_oasst_messages(records, options: ReadOptions, source: str) -> Iterator[Unit]:
    """Flat message table: rows grouped by ``message_tree_id`` (held in memory: one file's messages)."""
    trees: dict[str, list] = {}
    first_line: dict[str, int] = {}
    for number, record, reason, excerpt in records:
        if reason is None:
            message = oasst.message_from(record)
            reason = message if isinstance(message, str) else None
            if reason is None and not isinstance(record.get("message_tree_id"), str):
                reason = "message_missing_tree_id"
        if reason:
            yield Unit(number, reason=reason, malformed=True, excerpt=excerpt or _excerpt(record))
            continue
        tree_id = record["message_tree_id"]
        first_line.setdefault(tree_id, number)
        trees.setdefault(tree_id, []).append(record)
    for tree_id, rows in trees.items():
        if not all(oasst.tree_state_ok(_state(row)) for row in rows):
            yield Unit(first_line[tree_id], reason="oasst_tree_not_exported", excerpt=f"message_tree_id={tree_id}",
                       events=Counter(merged_rows=len(rows) - 1))
            continue
        unit = tree_unit(first_line[tree_id], *oasst.from_flat(rows), options, source, f"message_tree_id={tree_id}")
        unit.events["merged_rows"] = len(rows) - 1
        yield unit


# ---- a whole file ----

def source_name(name: str, fmt: FileFormat) -> str:
    """Rows' ``source``: the file name plus its format."""
    return f"{name}:{fmt.name}"


def read_units(path: Path, name: str, fmt: FileFormat, options: ReadOptions) -> Iterator[Unit]:
    """Every record of the file as a Unit (OpenAssistant: one per tree)."""
    records = iter_records(path)
    source = source_name(name, fmt)
    if fmt.name == "oasst_trees":
        yield from read_oasst_trees(records, options, source)
        return
    if fmt.name == "oasst_messages":
        yield from read_oasst_messages(records, options, source)
        return
    for number, record, reason, excerpt in records:
        excerpt = excerpt or _excerpt(record)
        if reason:
            yield Unit(number, reason=reason, malformed=True, excerpt=excerpt)
            continue
        own_source = None
        if fmt.name == "oig":
            result = read_oig(record, fmt.speakers)
            if not isinstance(result, str):
                result, own_source = result
        elif fmt.name == "h2ogpt":
            result = read_h2ogpt(record, fmt.speakers)
        else:
            reader = {"sharegpt": read_sharegpt, "messages": read_messages, "alpaca": read_alpaca}[fmt.name]
            turns = reader(record)
            result = turns if isinstance(turns, str) else join_turns(turns)
        if HUMAN not in result:  # a reason: every conversation has a human turn
            yield Unit(number, reason=result, malformed=True, excerpt=excerpt)
        else:
            yield Unit(number, texts=[result], source=own_source)

