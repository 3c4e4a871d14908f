"""Content hashes as row ids, and seeded per-row random numbers derived from them.

Deriving the random draw from the row's id (not from its position) keeps a seeded run
reproducible whatever the batch size, shard split or input order.
"""
from __future__ import annotations

import hashlib

import numpy as np


def row_ids(texts: list[str]) -> np.ndarray:
    """64-bit blake2b of each text, as uint64: equal texts get equal ids."""
    return np.fromiter(
        (int.from_bytes(hashlib.blake2b(t.encode("utf-8"), digest_size=8).digest(), "little") for t in texts),
        dtype=np.uint64, count=len(texts))


def uniform_draws(ids: np.ndarray, seed: int, stream: int = 0) -> np.ndarray:
    """A uniform [0, 1) number per id, fixed by (id, seed, stream): splitmix64, vectorized."""
    with np.errstate(over="ignore"):
        x = ids.astype(np.uint64) ^ np.uint64((seed * 0x9E3779B97F4A7C15 + stream * 0xD1B54A32D192ED03)
                                              & 0xFFFFFFFFFFFFFFFF)
        x = x + np.uint64(0x9E3779B97F4A7C15)
        x = (x ^ (x >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        x = (x ^ (x >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        x = x ^ (x >> np.uint64(31))
    return (x >> np.uint64(11)).astype(np.float64) / float(1 << 53)


class SeenIds:
    """Exact duplicate detection across batches with 8 bytes per distinct row.

    The ids seen are kept as a few sorted runs whose sizes at least double from the newest to the
    oldest (merged like a binary counter), so each id is copied O(log n) times in all: adding a
    batch does not re-sort everything seen before it.
    """

    def __init__(self) -> None:
        self._runs: list[np.ndarray] = []  # sorted, distinct across runs; sizes shrink towards the end

    def first_occurrences(self, ids: np.ndarray) -> np.ndarray:
        """Mask of rows whose id was not seen before (in earlier batches or earlier in this one)."""
        _, first = np.unique(ids, return_index=True)
        mask = np.zeros(len(ids), dtype=bool)
        mask[first] = True
        for run in self._runs:
            pos = np.minimum(np.searchsorted(run, ids), len(run) - 1)
            mask &= run[pos] != ids
        new = np.sort(ids[mask])
        while self._runs and len(self._runs[-1]) <= 2 * len(new):
            new = np.union1d(self._runs.pop(), new)
        if len(new):
            self._runs.append(new)
        return mask

    def __len__(self) -> int:
        return sum(len(run) for run in self._runs)

    @property
    def nbytes(self) -> int:
        return sum(run.nbytes for run in self._runs)
