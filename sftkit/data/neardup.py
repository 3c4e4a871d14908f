"""Near-duplicate rows: MinHash (datasketch) over word shingles, LSH banding, keep the first of each cluster.

A row is a near duplicate when one of its LSH bands equals a band of an earlier *kept* row: the
banding (b bands of r MinHash values, chosen by datasketch for the Jaccard threshold) makes that
likely above the threshold and unlikely below it. Each cluster is thus an earlier kept row and the
later rows that match it; the first row stays.

Memory: the index keeps one 64-bit key per band per kept row, in sorted numpy arrays (72 bytes a
row at the default 9 bands), not the MinHash signatures and not Python objects per row; the MinHash
of a row lives only while its batch is processed. In row-id order the rows' keys wait on disk.
"""
from __future__ import annotations

import re
import tempfile
from itertools import islice
from pathlib import Path
from typing import Iterable, Iterator

import numpy as np

from sftkit.data import DataError

_WORD = re.compile(r"\w+")
_MERGE_AT = 1 << 16  # pending keys merged into the sorted arrays beyond this many
ID_BUCKET_BITS = 8  # id order: rows go to 2**8 files by their ids' top bits, each sorted in memory
ID_BUCKETS = 1 << ID_BUCKET_BITS


def shingles(text: str, words_per_shingle: int) -> list[bytes]:
    """The distinct runs of ``words_per_shingle`` lower-cased words (the whole text when shorter)."""
    words = _WORD.findall(text.lower())
    if len(words) <= words_per_shingle:
        return [" ".join(words).encode("utf-8")]
    return list({" ".join(words[i:i + words_per_shingle]).encode("utf-8")
                 for i in range(len(words) - words_per_shingle + 1)})


def band_params(threshold: float, num_perm: int) -> tuple[int, int]:
    """(bands, rows per band): datasketch's choice for this threshold (equal false-positive and
    false-negative weights)."""
    from datasketch import MinHashLSH

    try:
        lsh = MinHashLSH(threshold=threshold, num_perm=num_perm)
    except ValueError as exc:
        raise DataError(f"--near_dup_threshold={threshold} with --near_dup_num_perm={num_perm}: {exc}; use more "
                        "permutations, a lower threshold, or 1 to turn near-duplicate removal off") from None
    return lsh.b, lsh.r


def signatures(texts: list[str], words_per_shingle: int, num_perm: int) -> np.ndarray:
    """(len(texts), num_perm) MinHash values, computed by datasketch."""
    from datasketch import MinHash

    if not texts:
        return np.empty((0, num_perm), dtype=np.uint64)
    return np.stack([m.hashvalues.astype(np.uint64) for m in
                     MinHash.generator((shingles(t, words_per_shingle) for t in texts), num_perm=num_perm)])


def band_keys(sigs: np.ndarray, bands: int, rows: int) -> np.ndarray:
    """(n, bands) 64-bit keys: each band's ``rows`` MinHash values mixed into one number."""
    keys = np.empty((len(sigs), bands), dtype=np.uint64)
    with np.errstate(over="ignore"):
        for band in range(bands):
            key = np.full(len(sigs), np.uint64(0x9E3779B97F4A7C15 * (band + 1) & 0xFFFFFFFFFFFFFFFF))
            for col in range(band * rows, (band + 1) * rows):
                key = (key ^ sigs[:, col]) * np.uint64(0xBF58476D1CE4E5B9)
                key ^= key >> np.uint64(31)
            keys[:, band] = key
    return keys


class BandIndex:
    """The band keys of the kept rows: per band, a sorted array plus a small pending one."""

    def __init__(self, bands: int):
        self.sorted = [np.empty(0, dtype=np.uint64) for _ in range(bands)]
        self.pending: list[list[np.ndarray]] = [[] for _ in range(bands)]
        self.pending_sorted = [np.empty(0, dtype=np.uint64) for _ in range(bands)]

    @staticmethod
    def _contains(array: np.ndarray, keys: np.ndarray) -> np.ndarray:
        if not len(array):
            return np.zeros(len(keys), dtype=bool)
        pos = np.minimum(np.searchsorted(array, keys), len(array) - 1)
        return array[pos] == keys

    def seen(self, keys: np.ndarray) -> np.ndarray:
        """Mask of rows with at least one band key already in the index."""
        hit = np.zeros(len(keys), dtype=bool)
        for band in range(keys.shape[1]):
            hit |= self._contains(self.sorted[band], keys[:, band])
            hit |= self._contains(self.pending_sorted[band], keys[:, band])
        return hit

    def add(self, keys: np.ndarray) -> None:
        for band in range(keys.shape[1]):
            pending = np.union1d(self.pending_sorted[band], keys[:, band])
            if len(pending) > max(_MERGE_AT, len(self.sorted[band]) // 8):  # amortized: rare full merges
                self.sorted[band] = np.union1d(self.sorted[band], pending)
                pending = np.empty(0, dtype=np.uint64)
            self.pending_sorted[band] = pending

    def nbytes(self) -> int:
        return sum(a.nbytes for a in self.sorted + self.pending_sorted)


def _keyed_batches(items: Iterator[tuple[int, str]], bands: int, rows: int, words_per_shingle: int, num_perm: int,
                   batch_rows: int) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """(ids, band keys) per batch of items; a row's MinHash lives only while its batch is hashed."""
    for batch in _batches(items, batch_rows):
        ids = np.array([row_id for row_id, _ in batch], dtype=np.uint64)
        yield ids, band_keys(signatures([text for _, text in batch], words_per_shingle, num_perm), bands, rows)


def _cluster(batches: Iterable[tuple[np.ndarray, np.ndarray]], bands: int) -> list[int]:
    """Ids of the rows, in the batches' order, whose band keys meet an earlier kept row's."""
    index = BandIndex(bands)
    dropped: list[int] = []
    for ids, keys in batches:
        duplicate = index.seen(keys)
        local: list[set] = [set() for _ in range(bands)]  # keys of rows kept earlier in this batch
        for i, row_keys in enumerate(keys.tolist()):
            if not duplicate[i] and any(k in local[b] for b, k in enumerate(row_keys)):
                duplicate[i] = True
            if not duplicate[i]:
                for b, k in enumerate(row_keys):
                    local[b].add(k)
        dropped += ids[duplicate].tolist()
        index.add(keys[~duplicate])
    return dropped


def _id_ordered(batches: Iterable[tuple[np.ndarray, np.ndarray]], bands: int, scratch: Path,
                batch_rows: int) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """The same (ids, keys) in ascending id order, through ID_BUCKETS files on disk (an external sort by
    the ids' top bits), so memory holds one bucket at a time rather than every row's keys."""
    files = [scratch / f"ids-{b:03d}.bin" for b in range(ID_BUCKETS)]
    record = np.dtype([("id", np.uint64), ("keys", np.uint64, (bands,))])
    for ids, keys in batches:
        rows = np.empty(len(ids), dtype=record)
        rows["id"], rows["keys"] = ids, keys
        bucket = (ids >> np.uint64(64 - ID_BUCKET_BITS)).astype(np.int64)
        for b in np.unique(bucket):
            with open(files[b], "ab") as fh:
                fh.write(rows[bucket == b].tobytes())
    for path in files:
        if not path.exists():
            continue
        rows = np.fromfile(path, dtype=record)
        path.unlink()
        rows = rows[np.argsort(rows["id"], kind="stable")]
        for start in range(0, len(rows), batch_rows):
            part = rows[start:start + batch_rows]
            yield part["id"].copy(), part["keys"].copy()


def near_duplicate_ids(items: Iterable[tuple[int, str]], threshold: float = 0.8, words_per_shingle: int = 5,
                       num_perm: int = 128, batch_rows: int = 2048, order: str = "input",
                       scratch_dir: str | Path | None = None) -> list[int]:
    """The ids of the rows to drop: each one's LSH band matches an earlier kept row's.

    ``items`` is any iterator of ``(row_id, text)``, read once in batches. ``order`` says which row of
    a cluster is the first: ``input`` (streamed), or ``id`` (ascending row id: the same rows are kept
    however the input is split or ordered; the band keys wait in bucket files under ``scratch_dir``,
    80 bytes a row on disk). Either way memory holds the kept rows' band keys and one batch.
    """
    bands, rows = band_params(threshold, num_perm)
    batches = _keyed_batches(iter(items), bands, rows, words_per_shingle, num_perm, batch_rows)
    if order == "input":
        return _cluster(batches, bands)
    if order != "id":
        raise ValueError(f"order must be 'input' or 'id', not {order!r}")
    with tempfile.TemporaryDirectory(prefix=".neardup-", dir=scratch_dir) as scratch:
        return _cluster(_id_ordered(batches, bands, Path(scratch), batch_rows), bands)


def _batches(items: Iterator, size: int) -> Iterator[list]:
    while batch := list(islice(items, size)):
        yield batch
