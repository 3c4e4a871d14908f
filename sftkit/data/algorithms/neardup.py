"""Near-duplicate rows: MinHash (datasketch) over word shingles, LSH banding, keep the first of each cluster.

A row is a near duplicate when one of its LSH bands equals a band of a kept row with a lower id: the
banding (b bands of r MinHash values, chosen by datasketch for the Jaccard threshold) makes that
likely above the threshold and unlikely below it. The rows are taken in ascending id, so the same
rows are kept however the input is split or ordered (a caller that wants input order numbers its
rows). This is what datasketch's MinHashLSH gives when each row is queried, then inserted if kept.

Memory does not hold the index. Two external sorts on disk do the work:
1. every (band key, row id) pair goes to bucket files by the key's top bits; a bucket in memory
   finds the keys that two or more rows share, and numbers each such *group*;
2. every (row id, group) pair goes to bucket files by the id's top bits; the buckets are read in
   id order, and a row is dropped when one of its groups already has a kept row, else it is kept
   and claims its groups.
Memory holds one batch, one bucket (a bucket over ``bucket_bytes`` is split again by the next
bits), one byte per group and the dropped ids: a few bytes per near-duplicate row, nothing per
unique row. Disk holds 16 bytes per band per row while the pass runs.
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
RADIX_BITS = 8  # each split deals records to 2**8 files
BUCKET_BYTES = 64 << 20  # a bucket file larger than this is split again before it is loaded
_FLUSH_RECORDS = 1 << 18  # records buffered before they are dealt to the bucket files

KEY_RECORD = np.dtype([("key", np.uint64), ("id", np.uint64)])
MEMBER_RECORD = np.dtype([("id", np.uint64), ("group", np.uint64)])


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
    """(n, bands) 64-bit keys: each band's ``rows`` MinHash values mixed into one number, seeded by the
    band so that equal keys in different bands do not meet."""
    keys = np.empty((len(sigs), bands), dtype=np.uint64)
    with np.errstate(over="ignore"):
        for band in range(bands):
            key = np.full(len(sigs), np.uint64(0x9E3779B97F4A7C15 * (band + 1) & 0xFFFFFFFFFFFFFFFF))
            for col in range(band * rows, (band + 1) * rows):
                key = (key ^ sigs[:, col]) * np.uint64(0xBF58476D1CE4E5B9)
                key ^= key >> np.uint64(31)
            keys[:, band] = key
    return keys


class RadixSpill:
    """Records appended in any order, read back as buckets in ascending order of one uint64 field.

    Records are dealt to 2**RADIX_BITS files by the field's top bits; a file larger than
    ``bucket_bytes`` is dealt again by the next bits when read, so a bucket in memory stays small
    however many records there are. Records with equal field values always share a bucket.
    """

    def __init__(self, directory: Path, dtype: np.dtype, field: str, bucket_bytes: int = BUCKET_BYTES):
        self.directory, self.dtype, self.field, self.bucket_bytes = directory, dtype, field, bucket_bytes
        self.directory.mkdir(parents=True, exist_ok=True)
        self._buffer: list[np.ndarray] = []
        self._buffered = 0

    def append(self, records: np.ndarray) -> None:
        self._buffer.append(records)
        self._buffered += len(records)
        if self._buffered >= _FLUSH_RECORDS:
            self._flush()

    def _flush(self) -> None:
        if self._buffered:
            _deal(np.concatenate(self._buffer), self.field, 64 - RADIX_BITS, self.directory)
        self._buffer, self._buffered = [], 0

    def buckets(self) -> Iterator[np.ndarray]:
        """Every record, a bucket at a time in ascending field order (unsorted within a bucket)."""
        self._flush()
        yield from self._read(self.directory, 64 - RADIX_BITS)

    def _read(self, directory: Path, shift: int) -> Iterator[np.ndarray]:
        for path in sorted(directory.glob("*.bin")):
            if path.stat().st_size > self.bucket_bytes and shift > 0:
                sub = directory / path.stem
                sub.mkdir()
                with open(path, "rb") as fh:
                    while len(part := np.fromfile(fh, dtype=self.dtype, count=_FLUSH_RECORDS)):
                        _deal(part, self.field, max(shift - RADIX_BITS, 0), sub)
                path.unlink()
                yield from self._read(sub, max(shift - RADIX_BITS, 0))
            else:
                records = np.fromfile(path, dtype=self.dtype)
                path.unlink()
                yield records


def _deal(records: np.ndarray, field: str, shift: int, directory: Path) -> None:
    """Append ``records`` to ``directory/<bucket>.bin`` by the 8 bits of ``field`` at ``shift``."""
    bucket = ((records[field] >> np.uint64(shift)) & np.uint64((1 << RADIX_BITS) - 1)).astype(np.int64)
    order = np.argsort(bucket, kind="stable")
    records, bucket = records[order], bucket[order]
    bounds = np.searchsorted(bucket, np.arange((1 << RADIX_BITS) + 1))
    for b in np.flatnonzero(np.diff(bounds)):
        with open(directory / f"{b:03d}.bin", "ab") as fh:
            fh.write(records[bounds[b]:bounds[b + 1]].tobytes())


def _shared_keys(keys: RadixSpill, members: RadixSpill) -> int:
    """Number the band keys that two or more rows share; append (row id, group) per sharing row to
    ``members``; return the number of groups."""
    groups = 0
    for records in keys.buckets():
        records = records[np.lexsort((records["id"], records["key"]))]
        key = records["key"]
        starts = np.flatnonzero(np.r_[True, key[1:] != key[:-1]])
        sizes = np.diff(np.r_[starts, len(key)])
        run = np.repeat(np.arange(len(starts)), sizes)
        shared = sizes >= 2
        group_of_run = np.cumsum(shared) - 1 + groups
        in_group = shared[run]
        out = np.empty(int(in_group.sum()), dtype=MEMBER_RECORD)
        out["id"], out["group"] = records["id"][in_group], group_of_run[run[in_group]]
        members.append(out)
        groups += int(shared.sum())
    return groups


def _greedy_drops(members: RadixSpill, groups: int) -> np.ndarray:
    """Ids, ascending, of the rows with a group already claimed by a kept row of lower id."""
    claimed = np.zeros(groups, dtype=bool)
    dropped: list[np.ndarray] = []
    for records in members.buckets():
        records = records[np.argsort(records["id"], kind="stable")]
        ids, row_groups = records["id"], records["group"]
        starts = np.flatnonzero(np.r_[True, ids[1:] != ids[:-1]]).tolist()
        row_groups = row_groups.tolist()
        bucket_drops = []
        for start, end in zip(starts, starts[1:] + [len(ids)]):
            mine = row_groups[start:end]
            if claimed[mine].any():
                bucket_drops.append(start)
            else:
                claimed[mine] = True
        dropped.append(ids[bucket_drops])
    return np.concatenate(dropped) if dropped else np.empty(0, dtype=np.uint64)


def near_duplicate_ids(items: Iterable[tuple[int, str]], threshold: float = 0.8, words_per_shingle: int = 5,
                       num_perm: int = 128, batch_rows: int = 2048, scratch_dir: str | Path | None = None,
                       bucket_bytes: int = BUCKET_BYTES) -> np.ndarray:
    """The ids (ascending uint64) of the rows to drop: each one shares an LSH band with a kept row of
    lower id. ``items`` is any iterator of ``(row_id, text)`` with distinct non-negative ids, read once
    in batches; the scratch files live in a temporary directory under ``scratch_dir``."""
    bands, rows = band_params(threshold, num_perm)
    with tempfile.TemporaryDirectory(prefix=".neardup-", dir=scratch_dir) as scratch:
        keys = RadixSpill(Path(scratch) / "keys", KEY_RECORD, "key", bucket_bytes)
        for batch in _batches(iter(items), batch_rows):
            ids = np.array([row_id for row_id, _ in batch], dtype=np.uint64)
            records = np.empty(len(ids) * bands, dtype=KEY_RECORD)
            records["key"] = band_keys(signatures([t for _, t in batch], words_per_shingle, num_perm),
                                       bands, rows).ravel()
            records["id"] = np.repeat(ids, bands)
            keys.append(records)
        members = RadixSpill(Path(scratch) / "members", MEMBER_RECORD, "id", bucket_bytes)
        groups = _shared_keys(keys, members)
        return _greedy_drops(members, groups)


def _batches(items: Iterator, size: int) -> Iterator[list]:
    while batch := list(islice(items, size)):
        yield batch
