"""Rewards of sampled answers for the online stages: a reward model, rule-based functions, their weighted sum.

``--reward_model`` is scored by the shared scorer (:class:`sftkit.reward.RewardModelScorer`, the one
behind ``create_data.py grade`` and ``generate.py --score_model``), so a reward means what a score
means everywhere else: a number in [0, 1]. ``--reward_funcs`` are ``module:function`` (a module on
the Python path) or ``path/to/file.py:function``; each is called as ``f(prompts=[…], completions=[…])``
(TRL's convention, so TRL reward functions taking ``**kwargs`` work) and returns one float per
completion. The total is the ``--reward_weights`` sum, less ``--missing_stop_penalty`` for an answer
that did not stop by itself.
"""
from __future__ import annotations

import hashlib
import importlib
import importlib.util
import math
from pathlib import Path
from typing import Callable

from sftkit.errors import FlagError, ScorerError, TrainError
from sftkit.reward import RewardModelScorer
from sftkit.train.config import TrainConfig


def load_reward_function(spec: str) -> Callable:
    """The function named by ``module:function`` or ``file.py:function``."""
    where, _, name = spec.rpartition(":")
    if not where or not name:
        raise FlagError(f"--reward_funcs={spec}: write module:function or path/to/file.py:function")
    if where.endswith(".py"):
        path = Path(where)
        if not path.is_file():
            raise FlagError(f"--reward_funcs={spec}: no such file {where}")
        module_spec = importlib.util.spec_from_file_location(f"sftkit_reward_{path.stem}", path)
        module = importlib.util.module_from_spec(module_spec)
        module_spec.loader.exec_module(module)
    else:
        try:
            module = importlib.import_module(where)
        except ImportError as exc:
            raise FlagError(f"--reward_funcs={spec}: cannot import {where} ({exc}); put it on the Python path or "
                            f"give the .py file's path") from None
    function = getattr(module, name, None)
    if not callable(function):
        raise FlagError(f"--reward_funcs={spec}: {where} has no function {name!r}")
    return function


def source_file(spec: str) -> Path | None:
    """The file a reward function's code is in (for the run's fingerprint), if it is a file."""
    where = spec.rpartition(":")[0]
    if where.endswith(".py"):
        return Path(where)
    found = importlib.util.find_spec(where) if where else None
    return Path(found.origin) if found is not None and found.origin and found.origin.endswith(".py") else None


def functions_fingerprint(specs: list[str]) -> str:
    """sha256 over the source files of the reward functions (empty when there are none)."""
    if not specs:
        return ""
    digest = hashlib.sha256()
    for spec in specs:
        digest.update(spec.encode() + b"\0")
        file = source_file(spec)
        if file is not None and file.is_file():
            digest.update(file.read_bytes())
    return digest.hexdigest()


class Rewards:
    """Every reward source of the run, scoring (question, answer) pairs; ``score`` gives the totals."""

    def __init__(self, config: TrainConfig, device: str):
        self.sources: list[tuple[str, Callable[[list[str], list[str]], list[float]]]] = []
        if config.reward_model:
            try:
                scorer = RewardModelScorer(config.reward_model, device=device, batch_size=config.micro_batch_size,
                                           max_length=config.cutoff_len, local_files_only=config.local_files_only,
                                           trust_remote_code=config.trust_remote_code)
            except ScorerError as exc:
                raise FlagError(f"--reward_model={config.reward_model}: {exc}") from None
            self.sources.append(("reward_model", scorer.score))
        for spec in config.reward_funcs:
            function = load_reward_function(spec)
            self.sources.append((spec.rpartition(":")[2], self._calling(spec, function)))
        self.weights = list(config.reward_weights) or [1.0] * len(self.sources)
        self.missing_stop_penalty = config.missing_stop_penalty

    @staticmethod
    def _calling(spec: str, function: Callable) -> Callable[[list[str], list[str]], list[float]]:
        def call(questions: list[str], answers: list[str]) -> list[float]:
            try:
                values = function(prompts=list(questions), completions=list(answers))
            except Exception as exc:  # the user's code: say whose it was
                raise TrainError(f"--reward_funcs={spec} raised {type(exc).__name__}: {exc}") from exc
            values = list(values) if values is not None else []
            if len(values) != len(answers):
                raise TrainError(f"--reward_funcs={spec} returned {len(values)} rewards for {len(answers)} completions")
            return values
        return call

    def score(self, questions: list[str], answers: list[str], stopped: list[bool]
              ) -> tuple[list[float], dict[str, list[float]]]:
        """(the total reward of each answer, each source's rewards by name)."""
        parts: dict[str, list[float]] = {}
        totals = [0.0] * len(answers)
        for (name, source), weight in zip(self.sources, self.weights):
            values = [float(v) for v in source(questions, answers)]
            bad = next((v for v in values if not math.isfinite(v)), None)
            if bad is not None:
                raise TrainError(f"reward {name} gave {bad} for an answer; rewards must be finite numbers")
            parts[name] = values
            totals = [t + weight * v for t, v in zip(totals, values)]
        totals = [t - (0.0 if s else self.missing_stop_penalty) for t, s in zip(totals, stopped)]
        return totals, parts
