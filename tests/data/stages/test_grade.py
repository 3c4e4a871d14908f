import dataclasses
import shutil
from functools import partial

import numpy as np
import pyarrow.parquet as pq
import pytest

from sftkit import reward
from sftkit.data.pipeline import run_stage
from sftkit.data.stages.grade import answers_text, question_and_answer
from tests.data.conftest import sample_config

run = partial(run_stage, "grade")


@pytest.fixture
def work(sample_work, tmp_path):
    for stage in ("1_download", "2_detox", "3_chop"):
        shutil.copytree(sample_work / stage, tmp_path / stage)
    return tmp_path


def test_row_parts():
    row = "<human>: q1\n<bot>: a1\n<human>: q2\n<bot>: a2"
    assert answers_text(row) == "a1\na2"
    assert question_and_answer(row) == ("<human>: q1\n<bot>: a1\n<human>: q2", "a2")


def test_grade_thresholds_and_score_columns(work):
    stats = run(sample_config(work))
    assert stats.balanced() and stats.dropped["grade_too_high"] > 0 and stats.dropped["profane"] > 0
    out = pq.read_table(work / "4_grade" / "part-00000-of-00001.parquet")
    grades = out.column("fk_grade").to_numpy()
    assert ((grades >= 10) & (grades <= 25)).all() and not any(out.column("profane").to_pylist())
    assert out.column("reward").null_count == out.num_rows


def test_reward_scoring_resumes_after_a_kill_and_is_reused(work, tiny_reward_model, monkeypatch):
    cfg = sample_config(work, use_reward_model=True, reward_model=str(tiny_reward_model), reward_progress_rows=40,
                        reward_threshold=0.5, device="cpu", local_files_only=True)
    real_score, scored_rows = reward.RewardModelScorer.score, []

    def killed_on_third_unit(self, questions, answers):
        if len(scored_rows) == 80:
            raise KeyboardInterrupt("killed")
        scored_rows.extend(zip(questions, answers))
        return real_score(self, questions, answers)

    monkeypatch.setattr(reward.RewardModelScorer, "score", killed_on_third_unit)
    with pytest.raises(KeyboardInterrupt):
        run(cfg)
    cache = next((work / "4_grade" / "reward_cache").iterdir())
    assert len(list(cache.glob("unit-*.parquet"))) == 2 and not (work / "4_grade" / "part-00000-of-00001.parquet").exists()

    monkeypatch.setattr(reward.RewardModelScorer, "score",
                        lambda self, q, a: (scored_rows.extend(zip(q, a)), real_score(self, q, a))[1])
    stats = run(cfg)
    out = pq.read_table(work / "4_grade" / "part-00000-of-00001.parquet")
    passing = stats.rows_in - sum(v for k, v in stats.dropped.items() if k != "reward_too_low")
    assert len(scored_rows) == len(set(scored_rows)) == passing  # every row once, none twice
    rewards = out.column("reward").to_numpy()
    assert out.column("reward").null_count == 0 and (rewards >= 0.5).all()
    assert stats.dropped["reward_too_low"] == passing - out.num_rows

    scored_rows.clear()
    stricter = run(dataclasses.replace(cfg, reward_threshold=0.6))
    assert scored_rows == [] and stricter.rows_out <= stats.rows_out
    assert np.all(pq.read_table(work / "4_grade" / "part-00000-of-00001.parquet").column("reward").to_numpy() >= 0.6)


def test_the_text_thresholds_and_reward_leave_rows_whose_answers_are_calls_unjudged():
    import pyarrow as pa

    from sftkit.data.algorithms import toolrows
    from sftkit.data.config import DataConfig
    from sftkit.data.stages.grade import text_drops

    batch = pa.record_batch({"text": ["<human>: q", "<human>: q\n<bot>: a", "<human>: q"],
                             "fk_grade": pa.array([0.0, 0.0, 0.0], pa.float32()), "profane": [False, False, False],
                             toolrows.COLUMN: ["{}", "{}", None]})
    drops = text_drops(batch, DataConfig(min_grade=4))
    assert drops["grade_too_low"].tolist() == [False, True, True]
