"""Tokenize once: a data file's tokenized rows in an Arrow cache on disk that every run and rank memory-maps.

A cache holds one data source (``--data_path``, ``--valid_path`` or ``--data_mix_in_path``, SFT
conversations or preference pairs) tokenized by :func:`sftkit.train.tokenize.tokenize_units`:

* ``sequences.arrow``: one row per sequence of a unit that can train (a pair is two rows, chosen
  then rejected), already cut at ``cutoff_len``: ``input_ids`` and ``labels`` (int32 lists), and
  the prompt, reference answer and prompt type that validation generates from;
* ``rows.arrow``: the same rows' ``length``, ``learned`` (learned tokens) and ``unit`` (the
  conversation's or pair's index among the source's usable ones, in file order): what a run reads
  whole, kept apart so that reading it touches none of the token pages;
* ``units.arrow``: per unit, its outcome (kept, could not be rendered, no answer within the cutoff,
  identical after truncation) and whether it was longer than the cutoff;
* ``meta.json``: the key's settings, the reader's counts (rows read, skipped by reason, prompt
  types chosen), the totals and the record batches' sizes, so a reused cache prints the same
  summary and a row is found without reading every batch's header.

The key (:func:`cache_key`) hashes everything that changes those bytes: the data files' content,
the tokenizer's content, the kind, prompt type, column renames, cutoff, ``train_on_inputs`` and the
EOS setting. What only *selects* from a cache is applied when reading, so changing it reuses the
cache: the validation split (``val_set_size``, ``seed``), the mix-in factor and ``drop_truncations``
(:func:`select`, and the recipes' ``read_data``). Packing plans are not cached: they are computed from the length
array in seconds (bench/bench_plan.py).

Built streaming in bounded memory (rows in batches through :mod:`sftkit.rows`, batches tokenized
over ``workers`` processes in order, record batches appended as they come), to a temporary name
renamed whole by :mod:`sftkit.atomic`: a killed build leaves nothing a later run trusts. One process
per cache builds: it holds an ``fcntl`` lock on ``.<key>.lock`` beside the cache while it does; the
others wait on that lock (the kernel releases it when its holder dies, so a dead builder never
blocks anyone) and then memory-map the finished cache.
"""
from __future__ import annotations

import collections
import contextlib
import dataclasses
import fcntl
import hashlib
import itertools
import json
import multiprocessing
import os
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator

import numpy as np
import pyarrow as pa
from tqdm import tqdm

from sftkit import atomic
from sftkit.models import cache_root
from sftkit.prompts import DEFAULT_PROMPT_TYPE
from sftkit.train.data import ReadStats, check_usable, iter_conversations
from sftkit.train.preference import iter_pairs
from sftkit.train.run_record import data_fingerprint
from sftkit.train.tokenize import (Example, Item, PairExample, TokenBatch, TokenizeStats, check_prompt_types,
                                   count_outcomes, tokenize_units)

CACHE_VERSION = 2  # bump when what tokenize_units writes changes for the same settings
SEQUENCES, ROWS, UNITS, META = "sequences.arrow", "rows.arrow", "units.arrow", "meta.json"
REUSED = "tokenized cache reused"
BATCH_UNITS = 512  # units (conversations or pairs) tokenized per batch
SEQUENCE_SCHEMA = pa.schema([("input_ids", pa.list_(pa.int32())), ("labels", pa.list_(pa.int32())),
                             ("prompt", pa.string()), ("reference", pa.string()), ("prompt_type", pa.string())])
ROW_SCHEMA = pa.schema([("length", pa.int32()), ("learned", pa.int32()), ("unit", pa.int64())])
UNIT_SCHEMA = pa.schema([("status", pa.int8()), ("over", pa.bool_())])


def default_root() -> Path:
    """``<sftkit cache>/tokenized`` (``$SFTKIT_CACHE``, default ``~/.cache/sftkit``)."""
    return cache_root() / "tokenized"


def default_workers() -> int:
    return max(1, min(4, os.cpu_count() or 1))


# ---------------------------------------------------------------- what a cache is built from, and its key
@dataclass(frozen=True)
class Source:
    """One data source and every setting that changes its tokens."""

    kind: str  # "sft" (conversations) or "pairs"
    path: str
    col_dict: tuple = ()  # column renames, as sorted (name, new name) pairs
    prompt_type: str = ""  # the flag; empty: each row's own column, else human_bot
    cutoff_len: int = 512
    train_on_inputs: bool = False
    add_eos_token: bool = True


def tokenizer_sha256(tokenizer) -> str:
    """sha256 of what the tokenizer does: its vocabulary, merges, normalizer and pre-tokenizer (the
    fast tokenizer's JSON), its chat template and its special tokens, however it was loaded."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    digest = hashlib.sha256(backend.to_str().encode() if backend is not None
                            else json.dumps(sorted(tokenizer.get_vocab().items())).encode())
    described = {"chat_template": getattr(tokenizer, "chat_template", None),
                 "special": {name: getattr(tokenizer, f"{name}_token_id", None) for name in ("bos", "eos", "pad")},
                 "added": sorted((str(t), i) for t, i in tokenizer.get_added_vocab().items()),
                 "class": type(tokenizer).__name__}
    digest.update(json.dumps(described, sort_keys=True, default=str).encode())
    return digest.hexdigest()


def cache_key(source: Source, tokenizer_hash: str, data_hash: str) -> str:
    """The cache's name: a hash of every setting of ``source`` but its path (the data's content
    stands for it), the data's and the tokenizer's content, and the cache format."""
    described = {**dataclasses.asdict(source), "path": None, "data_sha256": data_hash,
                 "tokenizer_sha256": tokenizer_hash, "version": CACHE_VERSION}
    return hashlib.sha256(json.dumps(described, sort_keys=True, default=list).encode()).hexdigest()[:24]


# ---------------------------------------------------------------- building
@dataclass(frozen=True)
class _Job:
    """What a tokenizing process needs besides the batches."""

    tokenizer: object
    source: Source


_job: _Job | None = None


def _start_worker(job: _Job) -> None:
    global _job
    _job = job
    # The processes are the parallelism: one tokenizer thread each, not one per core in every process
    # (oversubscribed, a 100k-row build on 2 cores took 0.4 s longer; measured).
    os.environ["RAYON_NUM_THREADS"] = "1"


@dataclass
class _Tokenized:
    """One batch as the cache stores it (see :func:`_record_batches`) and its units' outcomes."""

    sequences: pa.RecordBatch
    rows: pa.RecordBatch
    units: pa.RecordBatch
    tokens: int


def _tokenize(items: list[Item], job: _Job | None = None) -> _Tokenized:
    """A batch tokenized into the cache's record batches, in the process that tokenized it (int32
    columns: half the bytes an int64 batch takes back to the writer)."""
    job = job or _job
    s = job.source
    batch, learned, outcomes = tokenize_units(items, job.tokenizer, s.cutoff_len, last_only=s.kind == "pairs",
                                              train_on_inputs=s.train_on_inputs, add_eos_token=s.add_eos_token)
    units = pa.record_batch([pa.array(outcomes.status), pa.array(outcomes.over)], schema=UNIT_SCHEMA)
    return _Tokenized(*_record_batches(batch, learned), units, int(batch.lengths.sum()))


def _items(source: Source, stats: ReadStats, batch_units: int) -> Iterator[list[Item]]:
    """The source's usable units as batches of items (two per pair), streaming."""
    if source.kind == "pairs":
        pairs = iter_pairs(source.path, stats, dict(source.col_dict))
        items = (Item(turns, source.prompt_type or DEFAULT_PROMPT_TYPE, unit, tools=pair.tools)
                 for unit, pair in enumerate(pairs) for turns in pair.conversations())
        per_unit = 2
    else:
        conversations = iter_conversations(source.path, stats, dict(source.col_dict), source.prompt_type)
        items = (Item(c.turns, c.prompt_type, unit, c.text, c.tools) for unit, c in enumerate(conversations))
        per_unit = 1
    while batch := list(itertools.islice(items, batch_units * per_unit)):
        yield batch


def _in_order(batches: Iterator[list[Item]], job: _Job, workers: int, processes: list) -> Iterator[tuple]:
    """Each batch tokenized, in order; over ``workers`` processes once there is more than one batch
    (``processes`` gets their number), with at most two batches per process in flight (bounded memory)."""
    first = next(batches, None)
    if first is None:
        return
    second = next(batches, None)
    if second is None or workers <= 1:
        yield _tokenize(first, job)
        if second is not None:
            yield _tokenize(second, job)
            for batch in batches:
                yield _tokenize(batch, job)
        return
    processes.append(workers)
    # Forked like torch's DataLoader workers (they never touch torch or the GPU): no start-up cost.
    context = multiprocessing.get_context("fork" if "fork" in multiprocessing.get_all_start_methods() else "spawn")
    with ProcessPoolExecutor(workers, mp_context=context, initializer=_start_worker, initargs=(job,)) as pool:
        waiting = collections.deque(pool.submit(_tokenize, b) for b in (first, second))
        for batch in batches:
            if len(waiting) >= 2 * workers:
                yield waiting.popleft().result()
            waiting.append(pool.submit(_tokenize, batch))
        while waiting:
            yield waiting.popleft().result()


def _record_batches(batch: TokenBatch, learned: np.ndarray) -> tuple[pa.RecordBatch, pa.RecordBatch]:
    """The batch's sequences, and its per-sequence numbers (kept apart: a run reads all of those and
    only the sequences it trains on)."""
    offsets = pa.array(batch.offsets.astype(np.int32))
    sequences = pa.record_batch([
        pa.ListArray.from_arrays(offsets, pa.array(batch.input_ids.astype(np.int32))),
        pa.ListArray.from_arrays(offsets, pa.array(batch.labels.astype(np.int32))),
        pa.array(batch.prompts, pa.string()), pa.array(batch.references, pa.string()),
        pa.array(batch.prompt_types, pa.string())], schema=SEQUENCE_SCHEMA)
    rows = pa.record_batch([pa.array(batch.lengths.astype(np.int32)), pa.array(learned.astype(np.int32)),
                            pa.array(batch.rows)], schema=ROW_SCHEMA)
    return sequences, rows


def build(source: Source, tokenizer, folder: Path, *, workers: int = 1, batch_units: int = BATCH_UNITS,
          progress: bool = True, desc: str = "tokenize") -> dict:
    """Tokenize ``source`` into ``folder`` (created; see the module docstring); its meta.

    A dataset that is empty or where no row is usable is a DataError naming the first problem.
    """
    started = time.perf_counter()
    folder.mkdir(parents=True)
    stats = ReadStats()
    checked: set[str] = set()
    totals = collections.Counter()
    job = _Job(tokenizer, source)
    processes = [1]

    def checked_batches():
        for batch in _items(source, stats, batch_units):
            new = {item.prompt_type for item in batch} - checked
            if new:  # a prompt type this tokenizer cannot render fails before any work on it
                check_prompt_types(new, tokenizer)
                checked.update(new)
            yield batch

    batch_sizes = []
    with contextlib.ExitStack() as files:
        sequences, rows, units = (
            files.enter_context(pa.ipc.new_file(files.enter_context(pa.OSFile(str(folder / name), "wb")), schema))
            for name, schema in ((SEQUENCES, SEQUENCE_SCHEMA), (ROWS, ROW_SCHEMA), (UNITS, UNIT_SCHEMA)))
        bar = files.enter_context(tqdm(desc=desc, unit=" rows", disable=not progress, mininterval=2))
        for done in _in_order(checked_batches(), job, workers, processes):
            for writer, record_batch in ((sequences, done.sequences), (rows, done.rows), (units, done.units)):
                writer.write_batch(record_batch)
            batch_sizes.append(done.rows.num_rows)
            totals.update(units=done.units.num_rows, sequences=done.rows.num_rows, tokens=done.tokens)
            bar.update(done.units.num_rows)
    check_usable(source.path, stats, totals["units"], "usable preference pairs" if source.kind == "pairs"
                 else "usable rows")
    meta = {"version": CACHE_VERSION, "source": dataclasses.asdict(source), "read_stats": dataclasses.asdict(stats),
            **totals, "batch_sizes": batch_sizes, "workers": processes[-1],
            "seconds": round(time.perf_counter() - started, 3)}
    (folder / META).write_text(json.dumps(meta, indent=1, default=list) + "\n")
    return meta


# ---------------------------------------------------------------- once per node
class _Lock:
    """An exclusive ``fcntl`` lock on a file; the kernel releases it when the holder dies."""

    def __init__(self, path: Path):
        path.parent.mkdir(parents=True, exist_ok=True)
        self.fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)

    def try_take(self) -> bool:
        try:
            fcntl.flock(self.fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return True
        except BlockingIOError:
            return False

    def take(self, on_wait: Callable[[float], None], poll: float = 0.5, every: float = 30.0) -> None:
        """Take the lock; while another process holds it, call ``on_wait(seconds waited)`` at first and
        every ``every`` seconds."""
        if self.try_take():
            return
        started = last = time.monotonic()
        on_wait(0.0)
        while not self.try_take():
            time.sleep(poll)
            if time.monotonic() - last >= every:
                last = time.monotonic()
                on_wait(last - started)

    def close(self) -> None:
        os.close(self.fd)  # releases the lock


def is_complete(path: Path) -> bool:
    """A cache is complete when it exists under its own name: it is renamed there only once finished."""
    return (path / META).is_file()


def open_source(source: Source, tokenizer, root: str | os.PathLike = "", *, workers: int = 0,
                progress: bool = True, desc: str = "tokenize", local_rank: int = 0,
                barrier: Callable[[], None] = lambda: None, say: Callable[[str], None] = print) -> TokenCache:
    """The memory-mapped cache of ``source``, built first if no complete one exists.

    Local rank 0 tries the lock before ``barrier`` (every rank of the run calls it once, at once:
    it does not wait for the build), so on each node it is the one that builds while the others
    wait on the lock; a cache another run is building is waited for too.
    """
    root = Path(root) if root else default_root()
    key = cache_key(source, tokenizer_sha256(tokenizer), data_fingerprint(source.path))
    path = root / key
    lock = _Lock(root / f".{key}.lock")
    try:
        held = local_rank == 0 and not is_complete(path) and lock.try_take()
        barrier()
        if not is_complete(path):
            if not held:
                lock.take(lambda waited: say(f"waiting for tokenized cache {path} (being built by another process"
                                             f"{f', {waited:.0f} s so far' if waited else ''})"))
            if not is_complete(path):
                atomic.clean_stale(root)  # what a killed build left
                with atomic.replacing(path) as tmp:
                    meta = build(source, tokenizer, tmp, workers=workers or default_workers(),
                                 batch_units=BATCH_UNITS, progress=progress, desc=desc)
                say(f"tokenized cache built: {source.path}: {meta['units']} units, {meta['sequences']} sequences, "
                    f"{meta['tokens']} tokens in {meta['seconds']:.1f} s ({meta['workers']} process"
                    f"{'es' if meta['workers'] > 1 else ''}) -> {path}")
                return TokenCache(path)
    finally:
        lock.close()
    say(f"{REUSED}: {path}")
    return TokenCache(path)


# ---------------------------------------------------------------- reading
class TokenCache:
    """A finished cache, memory-mapped: per-sequence and per-unit numbers as numpy arrays, and any
    sequence's tokens read from the mapped file on demand (only the record batches holding rows a
    process trains on are ever touched)."""

    def __init__(self, path: Path):
        self.path = Path(path)
        self.meta = json.loads((self.path / META).read_text())
        self.read_stats = ReadStats(**self.meta["read_stats"])
        units = pa.ipc.open_file(pa.memory_map(str(self.path / UNITS))).read_all()
        rows = pa.ipc.open_file(pa.memory_map(str(self.path / ROWS))).read_all()
        self.status, self.over = _numpy(units.column("status")), _numpy(units.column("over"))
        self.lengths, self.learned = _numpy(rows.column("length")), _numpy(rows.column("learned"))
        self.unit = _numpy(rows.column("unit"))
        self._sequences = pa.ipc.open_file(pa.memory_map(str(self.path / SEQUENCES)))
        self._batch_start = np.cumsum([0] + self.meta["batch_sizes"])
        self._batches: dict[int, tuple] = {}  # record batch, then its token offsets, ids and labels

    def __len__(self) -> int:
        return len(self.lengths)

    def example(self, row: int) -> Example:
        k = int(np.searchsorted(self._batch_start, row, side="right")) - 1
        if k not in self._batches:  # views of the mapped file, no copy
            batch = self._sequences.get_batch(k)
            ids, labels = batch.column("input_ids"), batch.column("labels")
            self._batches[k] = batch, _numpy(ids.offsets), _numpy(ids.values), _numpy(labels.values)
        batch, offsets, ids, labels = self._batches[k]
        local = row - int(self._batch_start[k])
        a, b = int(offsets[local]), int(offsets[local + 1])
        text = {name: batch.column(name)[local].as_py() for name in ("prompt", "reference", "prompt_type")}
        return Example(ids[a:b].tolist(), labels[a:b].tolist(), **text)


class Examples:
    """A tokenized set (see :mod:`sftkit.train.batching`) over chosen rows of caches, in order."""

    def __init__(self, parts: list[tuple[TokenCache, np.ndarray]] = ()):
        self.parts = [(cache, np.asarray(rows, dtype=np.int64)) for cache, rows in parts]
        self._bounds = np.cumsum([0] + [len(rows) for _, rows in self.parts])
        self.lengths = np.concatenate([cache.lengths[rows] for cache, rows in self.parts] or [np.zeros(0, np.int32)])

    def __len__(self) -> int:
        return int(self._bounds[-1])

    def _one(self, index: int):
        if not -len(self) <= index < len(self):
            raise IndexError(index)
        index %= len(self)
        k = int(np.searchsorted(self._bounds, index, side="right")) - 1
        cache, rows = self.parts[k]
        return cache.example(int(rows[index - self._bounds[k]]))

    def __getitem__(self, index):
        if isinstance(index, slice):
            return self.take(np.arange(len(self))[index])
        return self._one(int(index))

    def __iter__(self):
        return (self._one(i) for i in range(len(self)))

    def take(self, indices: np.ndarray) -> "Examples":
        """The set of these items, in this order: a view over the same caches."""
        indices = np.asarray(indices, dtype=np.int64)
        part = np.searchsorted(self._bounds, indices, side="right") - 1
        runs = np.flatnonzero(np.diff(part, prepend=-1, append=-1))  # where the part changes
        return Examples([(self.parts[part[a]][0], self.parts[part[a]][1][indices[a:b] - self._bounds[part[a]]])
                         for a, b in zip(runs[:-1], runs[1:])])


class Pairs(Examples):
    """Preference pairs over a cache: pair ``i`` is the rows ``first[i]`` (chosen) and the one after
    (rejected), with its reference log-probs (DPO fills them in)."""

    def __init__(self, cache: TokenCache | None = None, first: np.ndarray = np.zeros(0, np.int64)):
        super().__init__()
        self.cache, self.first = cache, np.asarray(first, dtype=np.int64)
        self.lengths = cache.lengths[self.first] + cache.lengths[self.first + 1] if cache else np.zeros(0, np.int32)
        self._bounds = np.array([0, len(self.first)])
        self.ref_chosen = np.zeros(len(self.first))
        self.ref_rejected = np.zeros(len(self.first))

    def take(self, indices: np.ndarray) -> "Pairs":
        indices = np.asarray(indices, dtype=np.int64)
        view = Pairs(self.cache, self.first[indices])
        view.ref_chosen, view.ref_rejected = self.ref_chosen[indices], self.ref_rejected[indices]
        return view

    def _one(self, index: int):
        if not -len(self) <= index < len(self):
            raise IndexError(index)
        index %= len(self)
        row = int(self.first[index])
        return PairExample(self.cache.example(row), self.cache.example(row + 1), float(self.ref_chosen[index]),
                           float(self.ref_rejected[index]))


def select(cache: TokenCache, units: np.ndarray | None, drop_truncations: bool) -> tuple[np.ndarray, TokenizeStats]:
    """The rows of the ``units`` (a mask over the cache's units; None: all) that train under the
    truncation policy, and their counts, as tokenizing them alone would have counted."""
    chosen = np.ones(len(cache.status), dtype=bool) if units is None else units
    stats = TokenizeStats(rows=int(chosen.sum()))
    keep = np.zeros(len(chosen), dtype=bool)
    keep[chosen] = count_outcomes(cache.over[chosen], cache.status[chosen], drop_truncations, stats)
    keep_row = keep[cache.unit]
    stats.tokens = int(cache.lengths[keep_row].sum(dtype=np.int64))
    stats.learned_tokens = int(cache.learned[keep_row].sum(dtype=np.int64))
    return np.flatnonzero(keep_row), stats


def pair_firsts(rows: np.ndarray) -> np.ndarray:
    """The chosen row of each pair among a pair cache's selected rows (a pair is two rows in a row)."""
    return rows[::2]


def config_sources(config, kind: str, add_eos_token: bool) -> dict[str, Source]:
    """The sources a run tokenizes (``train``, and ``valid`` / ``mix_in`` when given), from its flags."""
    common = dict(kind=kind, cutoff_len=config.cutoff_len, add_eos_token=add_eos_token,
                  train_on_inputs=config.train_on_inputs if kind == "sft" else False)
    prompt_type = config.prompt_type if kind == "sft" else config.fixed_prompt_type
    renames = tuple(sorted((config.data_col_dict or {}).items()))
    out = {"train": Source(path=config.resolved_data_path(), col_dict=renames, prompt_type=prompt_type, **common)}
    if config.valid_path:
        out["valid"] = Source(path=config.valid_path, col_dict=renames, prompt_type=prompt_type, **common)
    if kind == "sft" and config.data_mix_in_path and config.data_mix_in_factor > 0:
        out["mix_in"] = Source(path=config.data_mix_in_path,
                               col_dict=tuple(sorted((config.data_mix_in_col_dict or {}).items())),
                               prompt_type=config.data_mix_in_prompt_type or config.prompt_type, **common)
    return out


def config_keys(config, kind: str, add_eos_token: bool, tokenizer_hash: str) -> dict[str, str]:
    """The cache key of every source a run tokenizes (see :func:`cache_key`)."""
    return {role: cache_key(source, tokenizer_hash, data_fingerprint(source.path))
            for role, source in config_sources(config, kind, add_eos_token).items()}


# ---------------------------------------------------------------- float columns computed over a cache's rows
def write_columns(path: Path, columns: dict[str, np.ndarray]) -> None:
    """float64 columns as one Arrow file, written atomically (DPO's reference log-probs)."""
    table = pa.table({name: pa.array(np.asarray(values, dtype=np.float64)) for name, values in columns.items()})
    with atomic.replacing(path) as tmp, pa.OSFile(str(tmp), "wb") as sink, pa.ipc.new_file(sink, table.schema) as out:
        out.write_table(table)


def read_columns(path: Path) -> dict[str, np.ndarray]:
    table = pa.ipc.open_file(pa.memory_map(str(path))).read_all()
    return {name: _numpy(table.column(name)) for name in table.column_names}


_NUMPY_TYPES = {pa.int8(): np.int8, pa.int32(): np.int32, pa.int64(): np.int64, pa.float64(): np.float64}


def _numpy(column: pa.Array | pa.ChunkedArray) -> np.ndarray:
    """A column without nulls as numpy, straight from its buffers (views of the mapped file when one
    chunk). pyarrow's own ``to_numpy`` imports pandas, 0.3 s of a rerun's time to its first step."""
    parts = []
    for chunk in column.chunks if isinstance(column, pa.ChunkedArray) else [column]:
        if chunk.null_count:
            raise ValueError(f"{column.type} column with nulls")
        data = chunk.buffers()[1]
        if pa.types.is_boolean(chunk.type):
            bits = np.unpackbits(np.frombuffer(data, dtype=np.uint8), bitorder="little")
            parts.append(bits[chunk.offset:chunk.offset + len(chunk)].astype(bool))
        else:
            values = np.frombuffer(data, dtype=_NUMPY_TYPES[chunk.type])
            parts.append(values[chunk.offset:chunk.offset + len(chunk)])
    if len(parts) == 1:
        return parts[0]
    return np.concatenate(parts) if parts else np.zeros(0, _NUMPY_TYPES.get(column.type, np.bool_))
