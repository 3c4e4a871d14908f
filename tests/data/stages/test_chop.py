import numpy as np
import pyarrow as pa
import pytest

from sftkit.data import DataError
from sftkit.data.algorithms.hashing import row_ids
from sftkit.data.config import DataConfig
from sftkit.data.run.stats import StageStats
from sftkit.data.run.filtering import keep
from sftkit.data.stages.chop import judge, keep_probability, keep_thresholds


def batch_of(texts):
    return pa.record_batch({"id": pa.array(row_ids(texts), pa.uint64()), "text": pa.array(texts)})


def chop_batch(batch, cfg, stats):
    return keep(batch, judge(batch, cfg), stats)


def test_keep_probability_takes_the_lowest_applicable_threshold():
    thresholds = keep_thresholds({"50": 0.5, 30: "0.2"})
    assert thresholds == [(30.0, 0.2), (50.0, 0.5)]
    np.testing.assert_allclose(keep_probability(np.array([10, 29.9, 30, 49, 50, 400]), thresholds),
                               [0.2, 0.2, 0.5, 0.5, 1, 1])
    with pytest.raises(DataError, match="probabilities must lie in"):
        keep_thresholds({30: 1.5})


def long_row(i):
    return f"<human>: A question of reasonable length, number {i}?\n<bot>: " + "An answer that is long enough. " * 3


def test_drops_by_reason_and_keeps_statistics():
    cfg = DataConfig(max_turn_chars=200)
    texts = ["<human>: hi\n<bot>: hello", long_row(1), "<human>: " + "q" * 60 + "\n<bot>: " + "a" * 300]
    stats = StageStats("chop", rows_in=3)
    out = chop_batch(batch_of(texts), cfg, stats)
    assert out.column("text").to_pylist() == [texts[1]]
    assert stats.dropped == {"turn_too_short": 1, "turn_too_long": 1}
    assert out.column("bot_len_max").to_pylist() == [len(("An answer that is long enough. " * 3).strip())]


def test_short_turns_are_kept_at_the_configured_rate_reproducibly():
    texts = [f"<human>: q{i:06d} short but over 20!!\n<bot>: a long enough answer of many chars {i}" for i in range(4000)]
    cfg = DataConfig(seed=7, short_turn_keep={30: 0.2, 50: 0.5}, min_turn_mean_chars=20)
    stats = StageStats("chop", rows_in=len(texts))
    kept = chop_batch(batch_of(texts), cfg, stats).column("text").to_pylist()
    # human mean 27 chars -> 0.2; bot mean 36-39 chars -> 0.5: about 10% survive
    assert 0.08 < len(kept) / len(texts) < 0.12
    halves = StageStats("chop")
    again = (chop_batch(batch_of(texts[:1234]), cfg, halves).column("text").to_pylist()
             + chop_batch(batch_of(texts[1234:]), cfg, halves).column("text").to_pylist())
    assert again == kept
    other_seed = chop_batch(batch_of(texts), DataConfig(seed=8), StageStats("chop")).column("text").to_pylist()
    assert other_seed != kept


def test_a_tool_conversation_whose_answers_are_calls_is_judged_on_its_questions_alone():
    from sftkit.data.algorithms import toolrows

    cfg = DataConfig(short_turn_keep={100: 0.0})
    texts = ["<human>: " + "A question long enough to keep, about a rectangle. " * 3,
             "<human>: A question of a middling length, about a square?"]
    batch = batch_of(texts).append_column(toolrows.COLUMN, pa.array(["{}", "{}"]))
    stats = StageStats("chop", rows_in=2)
    assert chop_batch(batch, cfg, stats).column("text").to_pylist() == [texts[0]]
    assert stats.dropped == {"short_turn_draw": 1}
    plain = StageStats("chop", rows_in=2)  # without its tool messages the same text has no answer: it goes
    assert chop_batch(batch_of(texts), cfg, plain).num_rows == 0 and plain.dropped == {"turn_too_short": 2}
