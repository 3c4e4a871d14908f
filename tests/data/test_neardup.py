"""Near-duplicate removal: MinHash LSH clusters, the first row of each kept."""
import random

import numpy as np

from sftkit.data import neardup

WORDS = [f"w{i}" for i in range(5000)]


def text(rng: random.Random, n: int = 400) -> str:
    return " ".join(rng.choice(WORDS) for _ in range(n))


def edit(base: str, rng: random.Random, changes: int) -> str:
    words = base.split()
    for i in rng.sample(range(len(words)), changes):
        words[i] = "changed"
    return " ".join(words)


def test_clusters_keep_their_first_row():
    rng = random.Random(0)
    a, b, c = text(rng), text(rng), text(rng)
    rows = [(10, a), (11, b), (12, edit(a, rng, 1)), (13, c), (14, edit(b, rng, 1)), (15, a.upper()), (16, text(rng))]
    assert neardup.near_duplicate_ids(rows, threshold=0.8) == [12, 14, 15]
    # the order decides which row of a cluster stays
    assert neardup.near_duplicate_ids(rows[::-1], threshold=0.8) == [12, 11, 10]


def test_dissimilar_rows_stay_and_the_threshold_matters():
    rng = random.Random(1)
    base = text(rng, 400)
    far = edit(base, rng, 80)  # a fifth of the words changed: Jaccard of 5-word shingles well under 0.5
    assert neardup.near_duplicate_ids([(1, base), (2, far)], threshold=0.8) == []
    assert neardup.near_duplicate_ids([(1, text(rng)) for _ in range(1)] + [(i, text(rng)) for i in range(2, 300)],
                                      threshold=0.8) == []
    close = edit(base, rng, 2)  # Jaccard about 0.95
    assert neardup.near_duplicate_ids([(1, base), (2, close)], threshold=0.8) == [2]
    medium = edit(base, rng, 12)  # Jaccard about 0.74
    assert neardup.near_duplicate_ids([(1, base), (2, medium)], threshold=0.5) == [2]
    assert neardup.near_duplicate_ids([(1, base), (2, medium)], threshold=0.95) == []


def test_batches_do_not_change_the_answer():
    rng = random.Random(2)
    bases = [text(rng) for _ in range(40)]
    rows = [(i, edit(bases[i % 40], rng, 1) if i >= 40 else bases[i]) for i in range(120)]
    whole = neardup.near_duplicate_ids(rows, batch_rows=1000)
    assert whole == list(range(40, 120))
    assert neardup.near_duplicate_ids(rows, batch_rows=7) == whole


def test_index_holds_a_few_bytes_per_kept_row():
    bands, rows = neardup.band_params(0.8, 128)
    index = neardup.BandIndex(bands)
    keys = np.random.default_rng(0).integers(0, 2**63, size=(10_000, bands), dtype=np.uint64)
    index.add(keys)
    assert index.seen(keys).all() and not index.seen(keys + np.uint64(1)).any()
    assert index.nbytes() == 10_000 * bands * 8


def test_short_texts_are_one_shingle():
    assert neardup.shingles("Hello, world!", 5) == [b"hello world"]
    assert len(neardup.shingles("a b c d e f", 5)) == 2


def test_a_threshold_too_close_to_one_is_a_clear_error():
    import pytest

    from sftkit.data import DataError

    with pytest.raises(DataError, match="--near_dup_threshold=0.999"):
        neardup.band_params(0.999, 128)


def test_id_order_keeps_the_same_rows_whatever_the_input_order():
    rng = random.Random(3)
    bases = [text(rng) for _ in range(10)]
    rows = [(1000 - i, edit(bases[i % 10], rng, 1)) for i in range(30)]
    first = neardup.near_duplicate_ids(rows, order="id", batch_rows=4)
    shuffled = rows[:]
    rng.shuffle(shuffled)
    assert sorted(neardup.near_duplicate_ids(shuffled, order="id", batch_rows=7)) == sorted(first)
    kept = {row_id for row_id, _ in rows} - set(first)
    assert kept == {1000 - i for i in range(20, 30)}  # the lowest id of each cluster
