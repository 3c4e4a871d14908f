"""Reward-model scores of answers (``--score_model``), shared by batch/eval mode and the browser UI.

The scorer is the grade stage's (create_data.py), so a score means the same thing everywhere.
"""
from __future__ import annotations

from sftkit.errors import GenerationError, ScorerError
from sftkit.generation.config import GenerateConfig
from sftkit.reward import RewardModelScorer


def load_scorer(config: GenerateConfig):
    """The reward model of ``--score_model``; a model that cannot load is a GenerationError naming the flag."""
    try:
        return RewardModelScorer(config.score_model, device=config.device, local_files_only=config.local_files_only,
                                 trust_remote_code=config.trust_remote_code)
    except ScorerError as exc:
        raise GenerationError(f"--score_model={config.score_model}: {exc}") from None


def add_scores(rows: list[dict], scorer) -> list[dict]:
    """Add the reward model's ``score`` of each (prompt, response) to its row."""
    scores = scorer.score([r["prompt"] for r in rows], [r["response"] for r in rows])
    for row, score in zip(rows, scores):
        row["score"] = round(float(score), 6)
    return rows
