"""Conversations to token ids and labels, batched: loss masking, the learned EOS, truncation at cutoff_len.

One tokenizer serves SFT and preference pairs: a pair is two conversations of which only the last
answer is learned. A batch of conversations is rendered to (text, learned character spans) by
:func:`sftkit.prompts.render_conversation`, encoded by the fast tokenizer in one call per batch,
and the labels are placed with numpy: a token is learned when its range overlaps a span
(``np.searchsorted`` over the batch's span boundaries), or every token with ``train_on_inputs``.
A token's range comes from a table of each token's length in bytes when the tokenizer is byte-level
BPE (its tokens spell the text's UTF-8 bytes, checked per text), else from the tokenizer's offsets;
the table saves moving every token's offsets from Rust into Python, a fifth of the tokenizing time
(profiled), and lets the tokenizer skip computing offsets at all. With such a tokenizer a text far
longer than the cutoff is tokenized only as far as the cutoff needs, in pieces cut where the
pre-tokenizer always splits (:func:`_encode_pieces`): the same tokens, without tokenizing what
truncation throws away. The appended EOS is learned when the text ends with an answer (its stop
included): h2oGPT's rows ending ``…<bot>: a\\n<human>:`` learn both the ``<human>:`` and the EOS. ``labels[0]``
is never learned (no token predicts it).

Each batch comes out as flat arrays (:class:`TokenBatch`: ids, labels, lengths and the source row
of every sequence), with what became of every unit (:class:`Outcomes`), the shape the tokenized
cache (:mod:`sftkit.train.token_cache`) appends one batch at a time; the truncation policy is
applied to the outcomes when counting (:func:`count_outcomes`).
"""
from __future__ import annotations

import functools
import itertools
import json
import re
from dataclasses import dataclass, field, fields
from typing import Iterator, Sequence

import numpy as np
from tqdm import tqdm

from sftkit.prompts import (ANSWER_ROLES, DEFAULT_PROMPT_TYPE, PromptError, Turn, adds_special_tokens, encode,
                            get_prompt_type, render_conversation)
from sftkit.rows import Conversation, Pair

IGNORE = -100


@dataclass
class Example:
    """One training row. ``labels[0]`` is always IGNORE: no token predicts it, packed or not."""

    input_ids: list[int]
    labels: list[int]
    prompt: str  # the text up to the last answer, for generation-based validation
    reference: str  # the last answer
    prompt_type: str = "human_bot"  # how the row was written (for its stop strings)


@dataclass
class PairExample:
    """A tokenized pair. ``ref_*`` are the reference model's answer log-probs (DPO fills them in)."""

    chosen: Example
    rejected: Example
    ref_chosen: float = 0.0
    ref_rejected: float = 0.0

    @property
    def input_ids(self) -> list[int]:
        """Both rows' ids: what group_by_length sorts by and tokens/s counts."""
        return self.chosen.input_ids + self.rejected.input_ids


@dataclass
class TokenizeStats:
    """Counts over units (a conversation for SFT, a pair for preference data)."""

    rows: int = 0
    kept: int = 0
    truncated: int = 0
    dropped_truncations: int = 0
    skipped_no_answer_in_cutoff: int = 0
    skipped_render: int = 0
    skipped_identical_after_truncation: int = 0  # pairs whose two rows are the same once cut
    tokens: int = 0
    learned_tokens: int = 0

    def as_dict(self) -> dict:
        return dict(self.__dict__)

    def add(self, other: "TokenizeStats") -> None:
        for f in fields(self):
            setattr(self, f.name, getattr(self, f.name) + getattr(other, f.name))


@dataclass
class TokenBatch:
    """Tokenized sequences of one batch as flat arrays: sequence ``i`` is ``input_ids[offsets[i]:offsets[i+1]]``."""

    input_ids: np.ndarray  # int64, every sequence one after the other
    labels: np.ndarray  # int64, IGNORE where not learned
    lengths: np.ndarray  # int64, one per sequence
    rows: np.ndarray  # int64, the index of each sequence's unit (conversation or pair) in the input
    prompts: list[str]  # per sequence: the text up to its last answer
    references: list[str]  # per sequence: its last answer
    prompt_types: list[str]

    @property
    def offsets(self) -> np.ndarray:
        return np.concatenate([[0], np.cumsum(self.lengths)])

    def examples(self) -> list[Example]:
        bounds = self.offsets.tolist()
        return [Example(self.input_ids[a:b].tolist(), self.labels[a:b].tolist(), prompt, reference, prompt_type)
                for a, b, prompt, reference, prompt_type
                in zip(bounds, bounds[1:], self.prompts, self.references, self.prompt_types)]


@dataclass
class Tokenized:
    examples: list[Example] = field(default_factory=list)
    stats: TokenizeStats = field(default_factory=TokenizeStats)


@dataclass
class TokenizedPairs:
    examples: list[PairExample] = field(default_factory=list)
    stats: TokenizeStats = field(default_factory=TokenizeStats)


@dataclass(frozen=True)
class Item:
    """A conversation to tokenize: its turns, its own markup text (trained as written by the types
    that write markers), its tools and prompt type; ``unit`` groups sequences that stand or fall
    together (the two of a pair)."""

    turns: list[Turn]
    prompt_type: str
    unit: int
    text: str | None = None
    tools: list[dict] | None = None


def check_prompt_types(names, tokenizer) -> None:
    """Fail before tokenizing when a prompt type in use cannot be rendered with this tokenizer."""
    if "chat" in {get_prompt_type(n).name for n in names} and not getattr(tokenizer, "chat_template", None):
        raise PromptError("--prompt_type=chat (or rows with prompt_type chat) needs a tokenizer with a chat "
                          "template; this one has none")


# ---------------------------------------------------------------- one batch

def _render(item: Item, tokenizer, last_only: bool):
    """(text, learned spans, the last answer's span, its text when a bot turn) of one item, or None when
    it cannot be rendered."""
    try:
        text, spans = render_conversation(item.turns, item.prompt_type, tokenizer, text=item.text, tools=item.tools)
    except ValueError:  # PromptError: unknown role, nothing to learn, a template that cannot render it
        return None
    if not spans:
        return None
    answers = [(role, body) for role, body in item.turns if role in ANSWER_ROLES]
    reference = answers[-1][1] if answers and answers[-1][0] == "bot" else None
    return text, spans[-1:] if last_only else spans, spans[-1], reference


def encode_batch(items: Sequence[Item], tokenizer, *, last_only: bool = False, train_on_inputs: bool = False,
                 add_eos_token: bool = True, keep: int | None = None) -> tuple[TokenBatch, np.ndarray]:
    """Every renderable item of the batch tokenized and labelled, before truncation, and the mask of
    the items that rendered. The batch goes through the tokenizer once per special-tokens rule. With
    ``keep``, a sequence may end after its first ``keep + 1`` tokens (the caller cuts it at ``keep``)."""
    rendered = [_render(item, tokenizer, last_only) for item in items]
    ok = np.array([r is not None for r in rendered], dtype=bool)
    kept = [(item, r) for item, r in zip(items, rendered) if r is not None]
    texts = [r[0] for _, r in kept]
    tokens = _encode(tokenizer, texts, [item.prompt_type for item, _ in kept], keep)
    flat_ids, lengths = tokens.ids, tokens.lengths
    total = int(lengths.sum())
    if train_on_inputs:
        learned = np.ones(total, dtype=bool)
    else:
        # Every text placed one after the other: a token overlaps a span of its own text only.
        spans = [(tokens.position(i, a), tokens.position(i, b)) for i, (_, r) in enumerate(kept) for a, b in r[1]]
        starts = np.fromiter((a for a, _ in spans), dtype=np.int64, count=len(spans))
        ends = np.fromiter((b for _, b in spans), dtype=np.int64, count=len(spans))
        first = np.searchsorted(ends, tokens.start, side="right")  # the first span ending after the token starts
        hit = first < len(spans)
        learned = hit & (tokens.end > tokens.start)
        learned[hit] &= starts[first[hit]] < tokens.end[hit]
    labels = np.where(learned, flat_ids, IGNORE)

    # The EOS: appended when missing, learned when the text ends with an answer (a template's own EOS too).
    ends_with_answer = np.array([r[1][-1][1] >= len(r[0].rstrip()) for _, r in kept], dtype=bool)
    eos = tokenizer.eos_token_id
    row_end = np.cumsum(lengths)
    last_id = np.where(lengths > 0, flat_ids[np.maximum(row_end - 1, 0)] if total else -1, -1)
    if eos is not None:
        has_eos = (lengths > 0) & (last_id == eos)
        relabel = row_end[has_eos & ends_with_answer] - 1
        labels[relabel] = eos
        append = ~has_eos if add_eos_token else np.zeros(len(kept), dtype=bool)
        eos_label = np.where(train_on_inputs | ends_with_answer, eos, IGNORE)[append]
        flat_ids = np.insert(flat_ids, row_end[append], eos)
        labels = np.insert(labels, row_end[append], eos_label)
        lengths = lengths + append
    row_start = np.cumsum(lengths) - lengths
    labels[row_start[lengths > 0]] = IGNORE

    prompts, references = [], []
    for i, (item, (text, _, (start, end), reference)) in enumerate(kept):
        if start == 0:  # a text learned whole: its first token (never learned) is the prompt
            start = tokens.first_token_end(i)
        prompts.append(text[:start].rstrip(" "))
        references.append(reference if reference is not None else text[start:end].strip())
    batch = TokenBatch(flat_ids, labels, lengths, np.array([item.unit for item, _ in kept], dtype=np.int64),
                       prompts, references, [get_prompt_type(item.prompt_type).name for item, _ in kept])
    return batch, ok


@dataclass
class _Tokens:
    """A batch's texts encoded one after the other: the ids, each text's token count, and each token's
    ``[start, end)`` in one position space where text ``i`` begins at ``base[i]``: UTF-8 bytes when
    the tokens are byte strings of the text (byte-level BPE: their lengths come from a table, so no
    per-token offsets cross from Rust into Python), else characters (the tokenizer's offsets).
    ``texts`` are what was encoded: a text, or its head when the rest lies past the cutoff."""

    ids: np.ndarray
    lengths: np.ndarray
    start: np.ndarray
    end: np.ndarray
    base: np.ndarray
    in_bytes: bool
    texts: list[str]

    def position(self, i: int, char: int) -> int:
        """Where character ``char`` of text ``i`` is (its encoded end, when past it)."""
        text = self.texts[i]
        char = min(char, len(text))
        if self.in_bytes and not text.isascii():
            char = len(text[:char].encode("utf-8"))
        return int(self.base[i]) + char

    def first_token_end(self, i: int) -> int:
        """The character where text ``i``'s first token that covers any text ends (0 when none does)."""
        row = slice(int(self.lengths[:i].sum()), int(self.lengths[:i + 1].sum()))
        ends = self.end[row][self.end[row] > self.base[i]] - self.base[i]
        if not len(ends):
            return 0
        if not self.in_bytes:
            return int(ends[0])
        # a cut character counts whole
        return len(self.texts[i].encode("utf-8")[:int(ends[0])].decode("utf-8", "replace"))


def _encode(tokenizer, texts: list[str], prompt_types: list[str], keep: int | None = None) -> _Tokens:
    """``texts`` tokenized, each as its prompt type says (:func:`sftkit.prompts.encode`), straight from
    the Rust tokenizer when there is one (transformers' per-row conversion to its output dict costs an
    eighth of the tokenizing time, profiled). With ``keep``, a text may be tokenized only as far as its
    first ``keep + 1`` tokens (:func:`_encode_pieces`)."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    special = [adds_special_tokens(name) for name in prompt_types]
    table = _byte_lengths(tokenizer) if backend is not None else None
    if table is not None and None not in {table.added(rule) for rule in special}:
        ids, heads = _encode_pieces(backend, texts, special, keep if table.cuttable else None, table)
        tokens = _from_byte_table(ids, heads, special, table)
        if tokens is not None:
            return tokens
    encodings: list = [None] * len(texts)
    for rule in (True, False):  # one call per special-tokens rule
        index = [i for i, s in enumerate(special) if s == rule]
        if not index:
            continue
        batch = [texts[i] for i in index]
        if backend is None:
            found = encode(tokenizer, batch, prompt_types[index[0]], return_offsets_mapping=True)
            found = list(zip(found["input_ids"], found["offset_mapping"]))
        else:
            found = backend.encode_batch(batch, add_special_tokens=rule)
        for i, encoding in zip(index, found):
            encodings[i] = encoding
    flat_ids, lengths = _flatten([e[0] if backend is None else e.ids for e in encodings])
    offsets = [e[1] if backend is None else e.offsets for e in encodings]
    flat = np.fromiter(itertools.chain.from_iterable(itertools.chain.from_iterable(offsets)), dtype=np.int64,
                       count=2 * len(flat_ids)).reshape(-1, 2)
    base = np.concatenate([[0], np.cumsum([len(t) for t in texts])])[:-1]
    shift = np.repeat(base, lengths)
    return _Tokens(flat_ids, lengths, flat[:, 0] + shift, flat[:, 1] + shift, base, False, texts)


def _flatten(ids: list[list[int]]) -> tuple[np.ndarray, np.ndarray]:
    """Every text's ids one after the other, and each text's count."""
    lengths = np.fromiter(map(len, ids), dtype=np.int64, count=len(ids))
    return np.fromiter(itertools.chain.from_iterable(ids), dtype=np.int64, count=int(lengths.sum())), lengths


def _from_byte_table(ids: list[list[int]], texts: list[str], special: list[bool],
                     table: "_ByteTable") -> _Tokens | None:
    """The tokens' byte positions from the table, or None when some text's tokens do not spell it
    exactly (a token added since, an added token that strips spaces, ...)."""
    flat_ids, lengths = _flatten(ids)
    if len(flat_ids) and flat_ids.max() >= len(table.lengths):  # a token added since the table was made
        return None
    token_bytes = table.lengths[flat_ids]
    bounds = np.concatenate([[0], np.cumsum(lengths)])
    for i, rule in enumerate(special):  # the special tokens a rule adds are not in the text
        prefix, suffix = table.added(rule)
        if prefix or suffix:
            token_bytes[bounds[i]:bounds[i] + prefix] = 0
            token_bytes[bounds[i + 1] - suffix:bounds[i + 1]] = 0
    end = np.cumsum(token_bytes)
    text_bytes = np.fromiter((len(t) if t.isascii() else len(t.encode("utf-8")) for t in texts), dtype=np.int64,
                             count=len(texts))
    base = np.concatenate([[0], np.cumsum(text_bytes)])
    if not np.array_equal(np.concatenate([[0], end])[bounds], base):  # some text's tokens do not spell it
        return None
    return _Tokens(flat_ids, lengths, end - token_bytes, end, base[:-1], True, texts)


# A cut between an ASCII letter and a space before another letter: the byte-level pre-tokenizers
# the field uses (GPT-2's regex, and the Split patterns transformers' GGUF reader names) never put
# a letter and the space after it in one piece, nor look behind a piece, so a text's tokens are the
# tokens of its pieces cut there, one after the other.
_WORD_GAP = re.compile(r"(?<=[A-Za-z]) (?=[A-Za-z])")
HEAD_CHARS_PER_TOKEN = 8  # a text's first piece: this many characters per token kept (prose runs 4-7)


def _encode_pieces(backend, texts: list[str], special: list[bool], keep: int | None,
                   table: "_ByteTable") -> tuple[list[list[int]], list[str]]:
    """Each text's token ids and the head of it they spell, without offsets (the byte table places
    the tokens; the tokenizer's call without offsets takes 30% less time, measured): the text whole,
    or with ``keep``, cut at a word gap once its tokens number more than ``keep``. A text longer than
    its first piece goes on in pieces twice as long until it has enough tokens or ends; every piece
    after the first adds no special tokens."""
    ids: list[list[int]] = [[] for _ in texts]
    done = [0] * len(texts)
    pending, first = list(range(len(texts))), True
    size = keep * HEAD_CHARS_PER_TOKEN if keep is not None else max(map(len, texts), default=0)
    encode_batch = getattr(backend, "encode_batch_fast", backend.encode_batch)
    while pending:
        for rule in (True, False):
            index = [i for i in pending if special[i] == rule]
            if not index:
                continue
            cuts = [_cut(texts[i], done[i] + size) for i in index]
            found = encode_batch([texts[i][done[i]:cut] for i, cut in zip(index, cuts)],
                                 add_special_tokens=rule and first)
            for i, cut, encoding in zip(index, cuts, found):
                ids[i] += encoding.ids
                done[i] = cut
        pending = [i for i in pending if keep is not None and done[i] < len(texts[i])
                   and len(ids[i]) - sum(table.added(special[i])) <= keep]
        size, first = 2 * size, False
    return ids, [text if at == len(text) else text[:at] for text, at in zip(texts, done)]


def _cut(text: str, at: int) -> int:
    """The first word gap at or after character ``at`` (the text's end when none)."""
    if at >= len(text):
        return len(text)
    gap = _WORD_GAP.search(text, at)
    return gap.start() if gap else len(text)


@dataclass(frozen=True)
class _ByteTable:
    """Each token's length in UTF-8 bytes, and how many tokens the tokenizer's own special-token rule
    adds before and after a text (they spell none of it)."""

    lengths: np.ndarray
    special: tuple[int, int] | None  # None: the rule adds tokens elsewhere, so byte positions cannot be told
    cuttable: bool = False  # a text may be tokenized in pieces cut at word gaps (see _WORD_GAP)

    def added(self, rule: bool) -> tuple[int, int] | None:
        return self.special if rule else (0, 0)


@functools.lru_cache(maxsize=8)
def _byte_lengths(tokenizer) -> _ByteTable | None:
    """The byte table of a byte-level BPE tokenizer (no normalizer: its tokens' bytes, one after the
    other, are the text's), else None. A text whose tokens do not add up to it is still checked."""
    backend = tokenizer.backend_tokenizer
    described = json.loads(backend.to_str())
    decoders = described.get("decoder") or {}
    decoders = decoders.get("decoders", [decoders]) if decoders.get("type") == "Sequence" else [decoders]
    if (described.get("normalizer") is not None or (described.get("model") or {}).get("type") != "BPE"
            or not any(d.get("type") == "ByteLevel" for d in decoders)):
        return None
    added_tokens = backend.get_added_tokens_decoder()
    added = {i: len(token.content.encode("utf-8")) for i, token in added_tokens.items()}
    vocab = backend.get_vocab(with_added_tokens=False)
    lengths = np.zeros(max([*vocab.values(), *added, -1]) + 1, dtype=np.int64)
    for token, i in vocab.items():
        lengths[i] = len(token)  # a byte-level token writes each byte as one character
    for i, size in added.items():
        lengths[i] = size
    plain = backend.encode("a", add_special_tokens=False).ids
    full = backend.encode("a", add_special_tokens=True).ids
    at = next((k for k in range(len(full) - len(plain) + 1) if full[k:k + len(plain)] == plain), None)
    special = None if at is None else (at, len(full) - at - len(plain))
    cuttable = (special is not None and special[1] == 0 and _splits_at_word_gaps(described.get("pre_tokenizer"))
                and not any(t.rstrip or re.search(r"\s", t.content)  # no added token spans a gap
                            for t in added_tokens.values()))
    return _ByteTable(lengths, special, cuttable)


def _splits_at_word_gaps(pre: dict | None) -> bool:
    """Whether the pre-tokenizer is one that always splits at a word gap: byte-level with GPT-2's
    regex, or a Split by one of the patterns transformers' GGUF reader names, with digit splitting beside."""
    from transformers.integrations.gguf.gguf_tokenizer_mapping import GGUF_PRE_TOKENIZER_SPLITS

    steps = (pre or {}).get("pretokenizers", [pre] if pre else [])
    steps = [s for s in steps if s.get("type") != "Digits"]
    if [s.get("type") for s in steps] == ["ByteLevel"]:
        return steps[0].get("use_regex", True)
    if [s.get("type") for s in steps] == ["Split", "ByteLevel"]:
        split, level = steps
        return (not level.get("use_regex", True) and split.get("behavior") == "Isolated" and not split.get("invert")
                and (split.get("pattern") or {}).get("Regex") in GGUF_PRE_TOKENIZER_SPLITS.values())
    return False


# What became of a unit (a conversation, or a pair) once cut at cutoff_len; the token cache stores one per unit.
KEPT, RENDER_FAILED, NO_ANSWER_IN_CUTOFF, IDENTICAL_AFTER_TRUNCATION = 0, 1, 2, 3


@dataclass
class Outcomes:
    """Per unit of a batch (``units``, ascending): whether a sequence was longer than the cutoff, and
    its status once cut (KEPT, RENDER_FAILED, NO_ANSWER_IN_CUTOFF, IDENTICAL_AFTER_TRUNCATION)."""

    units: np.ndarray
    over: np.ndarray
    status: np.ndarray


def cut(batch: TokenBatch, cutoff_len: int) -> tuple[TokenBatch, Outcomes, np.ndarray]:
    """Every sequence cut at ``cutoff_len``, what became of each unit, and each cut sequence's learned tokens.

    A unit with a sequence that has no learned token left is NO_ANSWER_IN_CUTOFF; a cut pair whose
    two sequences became the same is IDENTICAL_AFTER_TRUNCATION.
    """
    units, unit_index = np.unique(batch.rows, return_inverse=True)
    over = np.bincount(unit_index, weights=batch.lengths > cutoff_len, minlength=len(units)) > 0
    lengths = np.minimum(batch.lengths, cutoff_len)
    position = np.arange(len(batch.input_ids)) - np.repeat(batch.offsets[:-1], batch.lengths)
    token_kept = position < cutoff_len
    ids, labels = batch.input_ids[token_kept], batch.labels[token_kept]
    row_of_token = np.repeat(np.arange(len(lengths)), lengths)
    learned = np.bincount(row_of_token, weights=labels != IGNORE, minlength=len(lengths)).astype(np.int64)
    silent = np.bincount(unit_index, weights=learned == 0, minlength=len(units)) > 0
    status = np.where(silent, NO_ANSWER_IN_CUTOFF, KEPT).astype(np.int8)
    offsets = np.concatenate([[0], np.cumsum(lengths)])
    for unit in np.flatnonzero(~silent & over):  # only a cut pair can lose what told its answers apart
        members = np.flatnonzero(unit_index == unit)
        if len(members) == 2:
            (a, b), (c, d) = [(offsets[m], offsets[m + 1]) for m in members]
            if np.array_equal(ids[a:b], ids[c:d]):
                status[unit] = IDENTICAL_AFTER_TRUNCATION
    out = TokenBatch(ids, labels, lengths, batch.rows, batch.prompts, batch.references, batch.prompt_types)
    return out, Outcomes(units, over, status), learned


def count_outcomes(over: np.ndarray, status: np.ndarray, drop_truncations: bool, stats: TokenizeStats) -> np.ndarray:
    """Count the units' outcomes into ``stats`` (rows and tokens excepted) under the truncation
    policy; the mask of the units that train. Dropping a too-long unit is its only count."""
    rendered = status != RENDER_FAILED
    counted = rendered & ~over if drop_truncations else rendered
    if drop_truncations:
        stats.dropped_truncations += int((over & rendered).sum())
    else:
        stats.truncated += int((over & rendered).sum())
    stats.skipped_render += int((~rendered).sum())
    stats.skipped_no_answer_in_cutoff += int((counted & (status == NO_ANSWER_IN_CUTOFF)).sum())
    stats.skipped_identical_after_truncation += int((counted & (status == IDENTICAL_AFTER_TRUNCATION)).sum())
    keep = counted & (status == KEPT)
    stats.kept += int(keep.sum())
    return keep


def tokenize_units(items: Sequence[Item], tokenizer, cutoff_len: int, *, last_only: bool = False,
                   train_on_inputs: bool = False,
                   add_eos_token: bool = True) -> tuple[TokenBatch, np.ndarray, Outcomes]:
    """One batch tokenized and cut at ``cutoff_len``, nothing dropped for length yet: the sequences of
    the units that can train (too long ones included, cut), each one's learned tokens, and every
    unit's outcome (RENDER_FAILED for a unit with a sequence that could not be rendered), so the
    truncation policy can be applied later (:func:`count_outcomes`), as the token cache does."""
    batch, rendered = encode_batch(items, tokenizer, last_only=last_only, train_on_inputs=train_on_inputs,
                                   add_eos_token=add_eos_token, keep=cutoff_len)
    item_units = np.array([item.unit for item in items], dtype=np.int64)
    units = np.unique(item_units)
    failed = np.unique(item_units[~rendered])
    if len(failed):  # a pair whose other answer rendered goes too
        batch = _select(batch, ~np.isin(batch.rows, failed))
    batch, outcomes, learned = cut(batch, cutoff_len)
    at = np.searchsorted(units, outcomes.units)
    status = np.full(len(units), RENDER_FAILED, dtype=np.int8)
    over = np.zeros(len(units), dtype=bool)
    status[at], over[at] = outcomes.status, outcomes.over
    keep_row = status[np.searchsorted(units, batch.rows)] == KEPT
    return _select(batch, keep_row), learned[keep_row], Outcomes(units, over, status)


def tokenize_items(items: Sequence[Item], tokenizer, cutoff_len: int, stats: TokenizeStats, *, last_only: bool = False,
                   train_on_inputs: bool = False, add_eos_token: bool = True, drop_truncations: bool = False,
                   batch_rows: int = 512, desc: str = "tokenize", progress: bool = True) -> Iterator[TokenBatch]:
    """Tokenized batches of ``items`` under the truncation policy (see :func:`tokenize_units`);
    ``stats`` counts units."""
    with tqdm(total=len(items), desc=desc, disable=not progress, mininterval=2) as bar:
        for start in range(0, len(items), batch_rows):
            chunk = items[start:start + batch_rows]
            batch, learned, outcomes = tokenize_units(chunk, tokenizer, cutoff_len, last_only=last_only,
                                                      train_on_inputs=train_on_inputs, add_eos_token=add_eos_token)
            stats.rows += len(outcomes.units)
            keep = count_outcomes(outcomes.over, outcomes.status, drop_truncations, stats)
            keep_row = keep[np.searchsorted(outcomes.units, batch.rows)]
            stats.tokens += int(batch.lengths[keep_row].sum())
            stats.learned_tokens += int(learned[keep_row].sum())
            bar.update(len(chunk))
            yield _select(batch, keep_row)


def _select(batch: TokenBatch, keep: np.ndarray) -> TokenBatch:
    pick = np.flatnonzero(keep).tolist()
    return TokenBatch(batch.input_ids[np.repeat(keep, batch.lengths)], batch.labels[np.repeat(keep, batch.lengths)],
                      batch.lengths[keep], batch.rows[keep], [batch.prompts[i] for i in pick],
                      [batch.references[i] for i in pick], [batch.prompt_types[i] for i in pick])


# ---------------------------------------------------------------- SFT and pairs

def tokenize_all(conversations: list[Conversation], tokenizer, prompt_type: str, cutoff_len: int, *,
                 train_on_inputs: bool = False, add_eos_token: bool = True, drop_truncations: bool = False,
                 desc: str = "tokenize", progress: bool = True, batch_rows: int = 512) -> Tokenized:
    """Tokenize, mask and truncate every conversation, counting what was truncated, dropped or skipped.

    Each conversation is written in its own prompt type; ``prompt_type`` is for those without one.
    A row that still has no learned token after truncation (its prompt fills cutoff_len) is skipped.
    """
    items = [Item(c.turns, c.prompt_type or prompt_type or DEFAULT_PROMPT_TYPE, i, c.text, c.tools)
             for i, c in enumerate(conversations)]
    out = Tokenized()
    for batch in tokenize_items(items, tokenizer, cutoff_len, out.stats, train_on_inputs=train_on_inputs,
                                add_eos_token=add_eos_token, drop_truncations=drop_truncations, desc=desc,
                                progress=progress, batch_rows=batch_rows):
        out.examples += batch.examples()
    return out


def tokenize_pairs(pairs: list[Pair], tokenizer, prompt_type: str, cutoff_len: int, *, add_eos_token: bool,
                   drop_truncations: bool = False, desc: str = "tokenize pairs", progress: bool = True,
                   batch_rows: int = 256) -> TokenizedPairs:
    """Both answers of every pair, learning only the last answer; a pair is cut, dropped or skipped whole."""
    items = [Item(turns, prompt_type, i, tools=p.tools) for i, p in enumerate(pairs) for turns in p.conversations()]
    out = TokenizedPairs()
    for batch in tokenize_items(items, tokenizer, cutoff_len, out.stats, last_only=True, add_eos_token=add_eos_token,
                                drop_truncations=drop_truncations, desc=desc, progress=progress,
                                batch_rows=2 * batch_rows):
        examples = batch.examples()
        out.examples += [PairExample(chosen, rejected) for chosen, rejected in zip(examples[::2], examples[1::2])]
    return out


def tokenize_conversation(turns: list[Turn], tokenizer, prompt_type: str, *, train_on_inputs: bool = False,
                          add_eos_token: bool = True, text: str | None = None,
                          tools: list[dict] | None = None) -> Example:
    """One conversation's ids and labels before truncation (PromptError when it cannot be rendered)."""
    batch, rendered = encode_batch([Item(turns, prompt_type, 0, text, tools)], tokenizer,
                                   train_on_inputs=train_on_inputs, add_eos_token=add_eos_token)
    if not rendered[0]:
        render_conversation(turns, prompt_type, tokenizer, text=text, tools=tools)  # raises the reason
        raise PromptError("nothing to learn in this row")
    return batch.examples()[0]
