"""Near-duplicate removal: MinHash LSH clusters, the row of lowest id of each kept."""
import random

import numpy as np

from sftkit.data.algorithms import neardup

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
    assert neardup.near_duplicate_ids(rows, threshold=0.8).tolist() == [12, 14, 15]
    # the ids decide which row of a cluster stays, not the input order
    assert neardup.near_duplicate_ids(rows[::-1], threshold=0.8).tolist() == [12, 14, 15]
    renumbered = [(100 - row_id, text) for row_id, text in rows]
    assert neardup.near_duplicate_ids(renumbered, threshold=0.8).tolist() == [88, 89, 90]


def test_dissimilar_rows_stay_and_the_threshold_matters():
    rng = random.Random(1)
    base = text(rng, 400)
    far = edit(base, rng, 80)  # a fifth of the words changed: Jaccard of 5-word shingles well under 0.5
    assert neardup.near_duplicate_ids([(1, base), (2, far)], threshold=0.8).tolist() == []
    assert neardup.near_duplicate_ids([(1, text(rng)) for _ in range(1)] + [(i, text(rng)) for i in range(2, 300)],
                                      threshold=0.8).tolist() == []
    close = edit(base, rng, 2)  # Jaccard about 0.95
    assert neardup.near_duplicate_ids([(1, base), (2, close)], threshold=0.8).tolist() == [2]
    medium = edit(base, rng, 12)  # Jaccard about 0.74
    assert neardup.near_duplicate_ids([(1, base), (2, medium)], threshold=0.5).tolist() == [2]
    assert neardup.near_duplicate_ids([(1, base), (2, medium)], threshold=0.95).tolist() == []


def test_batches_do_not_change_the_answer():
    rng = random.Random(2)
    bases = [text(rng) for _ in range(40)]
    rows = [(i, edit(bases[i % 40], rng, 1) if i >= 40 else bases[i]) for i in range(120)]
    whole = neardup.near_duplicate_ids(rows, batch_rows=1000)
    assert whole.tolist() == list(range(40, 120))
    assert neardup.near_duplicate_ids(rows, batch_rows=7).tolist() == whole.tolist()


def test_buckets_split_when_over_budget_give_the_same_answer(tmp_path):
    rng = random.Random(4)
    bases = [text(rng) for _ in range(50)]
    rows = [(int.from_bytes(rng.randbytes(8), "big") if i % 2 else i, edit(bases[i % 50], rng, 1) if i >= 50
             else bases[i]) for i in range(200)]  # random 64-bit ids and small ones: both ends of the id space
    whole = neardup.near_duplicate_ids(rows)
    assert len(whole) == 150
    tiny = neardup.near_duplicate_ids(rows, bucket_bytes=64, scratch_dir=tmp_path)  # every bucket split again
    assert tiny.tolist() == whole.tolist()
    assert list(tmp_path.iterdir()) == []  # the scratch files are gone


def test_spill_returns_every_record_in_ascending_buckets(tmp_path):
    values = np.random.default_rng(0).integers(0, 2**64 - 1, size=5000, dtype=np.uint64)
    values[:1000] = np.arange(1000)  # small values: the top bits alone cannot tell them apart
    spill = neardup.RadixSpill(tmp_path / "spill", neardup.MEMBER_RECORD, "id", bucket_bytes=256)
    records = np.zeros(len(values), dtype=neardup.MEMBER_RECORD)
    records["id"], records["group"] = values, np.arange(len(values))
    for part in np.array_split(records, 7):
        spill.append(part)
    buckets = list(spill.buckets())
    assert max(len(b) for b in buckets) * neardup.MEMBER_RECORD.itemsize <= 256
    assert all(b["id"].max() < c["id"].min() for b, c in zip(buckets, buckets[1:]))
    assert sorted(np.concatenate(buckets)["group"].tolist()) == list(range(len(values)))


def test_short_texts_are_one_shingle():
    assert neardup.shingles("Hello, world!", 5) == [b"hello world"]
    assert len(neardup.shingles("a b c d e f", 5)) == 2


def test_a_threshold_too_close_to_one_is_a_clear_error():
    import pytest

    from sftkit.data import DataError

    with pytest.raises(DataError, match="--near_dup_threshold=0.999"):
        neardup.band_params(0.999, 128)


def test_the_same_rows_are_kept_whatever_the_input_order():
    rng = random.Random(3)
    bases = [text(rng) for _ in range(10)]
    rows = [(1000 - i, edit(bases[i % 10], rng, 1)) for i in range(30)]
    first = neardup.near_duplicate_ids(rows, batch_rows=4).tolist()
    shuffled = rows[:]
    rng.shuffle(shuffled)
    assert neardup.near_duplicate_ids(shuffled, batch_rows=7).tolist() == first
    kept = {row_id for row_id, _ in rows} - set(first)
    assert kept == {1000 - i for i in range(20, 30)}  # the lowest id of each cluster
