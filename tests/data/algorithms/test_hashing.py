import numpy as np

from sftkit.data.algorithms.hashing import SeenIds, row_ids, uniform_draws


def test_row_ids_are_content_hashes():
    ids = row_ids(["a", "b", "a"])
    assert ids.dtype == np.uint64 and ids[0] == ids[2] and ids[0] != ids[1]


def test_seen_ids_across_and_within_batches():
    seen = SeenIds()
    first = seen.first_occurrences(np.array([5, 3, 5, 9], dtype=np.uint64))
    assert first.tolist() == [True, True, False, True]
    second = seen.first_occurrences(np.array([9, 1, 1, 3, 2], dtype=np.uint64))
    assert second.tolist() == [False, True, False, False, True]
    assert len(seen) == 5


def test_uniform_draws_depend_on_id_seed_and_stream_only():
    ids = row_ids([str(i) for i in range(20000)])
    draws = uniform_draws(ids, seed=1)
    assert draws.min() >= 0 and draws.max() < 1 and abs(draws.mean() - 0.5) < 0.01
    np.testing.assert_array_equal(uniform_draws(ids[::-1], seed=1), draws[::-1])
    assert not np.array_equal(uniform_draws(ids, seed=2), draws)
    assert not np.array_equal(uniform_draws(ids, seed=1, stream=1), draws)


def test_seen_ids_match_a_set_over_many_batches_and_keep_few_runs():
    rng = np.random.default_rng(0)
    ids = rng.integers(0, 500, size=5000).astype(np.uint64)  # many repeats, within and across batches
    seen, reference = SeenIds(), set()
    for start in range(0, len(ids), 37):
        batch = ids[start:start + 37]
        expected = []
        for value in batch.tolist():
            expected.append(value not in reference)
            reference.add(value)
        assert seen.first_occurrences(batch).tolist() == expected
    assert len(seen) == len(reference)
    assert len(seen._runs) <= np.log2(len(reference)) + 1  # merged like a binary counter, not one run per batch
