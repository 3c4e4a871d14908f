"""Where shards run: in this process, or as Ray tasks on a cluster. Nothing else differs.

An executor is handed the shard task (:func:`sftkit.data.pipeline.run_shard_phase`: one shard's part
of one phase, picklable arguments, plain result) and has two jobs: ``run_shards`` runs the task for
each shard and yields ``(shard index, result)`` as shards finish; ``score_rewards`` turns a stream of
reward units ``(ids, questions, answers)`` into ``(ids, rewards)`` with the reward model loaded once
per process (here) or once per actor (Ray).
"""
from __future__ import annotations

import dataclasses
import os
from collections import deque
from pathlib import Path
from typing import Callable, Iterable, Iterator

import numpy as np

import sftkit
from sftkit.data import DataError
from sftkit.data.config import DataConfig
from sftkit.data.run.contract import Shard
from sftkit.errors import SftkitError
from sftkit.reward import RewardModelScorer

RAY_INSTALL = ("--executor=ray needs Ray: pip install -r reqs_optional/requirements_optional_ray.txt "
               "(or pip install 'ray[default]'), then run again; --executor=local needs nothing")


# The shard task: (stage name, phase number, settings, shard, stats before) -> plain result dict.
ShardTask = Callable[[str, int, DataConfig, Shard, "dict | None"], dict]


def reward_scorer(cfg: DataConfig) -> RewardModelScorer:
    return RewardModelScorer(cfg.reward_model, batch_size=cfg.reward_batch_size, device=cfg.device,
                             max_length=cfg.reward_max_length, local_files_only=cfg.local_files_only,
                             trust_remote_code=cfg.trust_remote_code)


def with_one_worker(cfg: DataConfig) -> DataConfig:
    """The settings a remote shard runs with: one process, it has one CPU."""
    return dataclasses.replace(cfg, workers=1)


def environment_python_path() -> str:
    """Where this sftkit is importable from, for workers that share this machine's files."""
    return str(Path(sftkit.__file__).resolve().parents[1]) + (
        os.pathsep + os.environ["PYTHONPATH"] if os.environ.get("PYTHONPATH") else "")


class LocalExecutor:
    """Shards one after another in this process (each uses --workers processes for its batches)."""

    name = "local"

    def __init__(self, task: ShardTask):
        self.task = task

    def run_shards(self, jobs: list[tuple], inputs: list[str]) -> Iterator[tuple[int, dict]]:
        for job, described in zip(jobs, inputs):
            try:
                result = self.task(*job)
            except SftkitError as exc:
                if len(jobs) == 1:
                    raise
                raise DataError(f"shard {job[3].index} of {len(jobs)} (input: {described}): {exc}") from None
            yield job[3].index, result

    def score_rewards(self, cfg: DataConfig, units: Iterable[tuple]) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        scorer = None
        for ids, questions, answers in units:
            scorer = scorer or reward_scorer(cfg)  # loaded only when something needs scoring
            yield ids, np.asarray(scorer.score(questions, answers), dtype=np.float32)

    def close(self) -> None:
        pass


class RewardActor:
    """A Ray actor holding one reward model for its lifetime."""

    def __init__(self, cfg: DataConfig):
        self.scorer = reward_scorer(cfg)

    def score(self, ids, questions, answers):
        return ids, np.asarray(self.scorer.score(questions, answers), dtype=np.float32)


class RayExecutor:
    """One Ray task per shard (retried when its worker or node is lost); reward scoring on actors."""

    name = "ray"

    def __init__(self, cfg: DataConfig, task: ShardTask):
        try:
            import ray
        except ImportError:
            raise DataError(RAY_INSTALL) from None
        self.ray, self.cfg = ray, cfg
        if not ray.is_initialized():
            try:
                ray.init(address=cfg.ray_address, log_to_driver=False, configure_logging=False,
                         runtime_env={"env_vars": {"PYTHONPATH": environment_python_path()}})
            except ConnectionError as exc:
                raise DataError(f"--ray_address={cfg.ray_address}: cannot reach a Ray cluster ({exc}); start one "
                                "with `ray start --head` or leave --ray_address out to run Ray on this machine") \
                    from None
        self.task = ray.remote(num_cpus=1, max_retries=cfg.max_retries, retry_exceptions=False)(task)

    def run_shards(self, jobs: list[tuple], inputs: list[str]) -> Iterator[tuple[int, dict]]:
        ray = self.ray
        refs = {self.task.remote(name, phase, with_one_worker(cfg), shard, before): (shard.index, described)
                for (name, phase, cfg, shard, before), described in zip(jobs, inputs)}
        try:
            while refs:
                done, _ = ray.wait(list(refs), num_returns=1)
                index, described = refs.pop(done[0])
                try:
                    yield index, ray.get(done[0])
                except ray.exceptions.RayError as exc:
                    cause = getattr(exc, "cause", None)
                    if isinstance(cause, SftkitError):  # the shard's own error: retrying cannot help
                        raise DataError(f"shard {index} of {len(jobs)} (input: {described}): {cause}") from None
                    error = f"{type(cause).__name__}: {cause}" if cause is not None else str(exc).splitlines()[0]
                    raise DataError(f"shard {index} of {len(jobs)} (input: {described}) failed (Ray retries a "
                                    f"shard whose worker or node is lost up to --max_retries={self.cfg.max_retries} "
                                    f"times): {error}") from None
        finally:
            for ref in refs:
                ray.cancel(ref, force=True)

    def score_rewards(self, cfg: DataConfig, units: Iterable[tuple]) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        """Stream units to ``--grade_actors`` actors, two in flight per actor, results as they finish."""
        ray = self.ray
        actors, pending, free = [], {}, deque()
        actor_class = ray.remote(num_cpus=1, num_gpus=cfg.num_gpus_per_worker, max_restarts=cfg.max_retries,
                                 max_task_retries=cfg.max_retries)(RewardActor)
        actor_cfg = with_one_worker(cfg)
        try:
            for unit in units:
                if not actors:  # started on the first unit: nothing to score, no model loaded
                    actors = [actor_class.remote(actor_cfg) for _ in range(self._actors_that_fit(cfg))]
                    free.extend(actors * 2)
                if not free:
                    yield from self._finish_one(pending, free)
                actor = free.popleft()
                pending[actor.score.remote(*unit)] = actor
            while pending:
                yield from self._finish_one(pending, free)
        finally:
            for actor in actors:
                ray.kill(actor)

    def _actors_that_fit(self, cfg: DataConfig) -> int:
        """--grade_actors, or fewer when the cluster cannot hold that many (an actor that never starts
        would stall the stream)."""
        resources = self.ray.cluster_resources()
        fit = int(resources.get("CPU", 0))
        if cfg.num_gpus_per_worker > 0:
            fit = min(fit, int(resources.get("GPU", 0) / cfg.num_gpus_per_worker))
        if fit < 1:
            raise DataError(f"the Ray cluster has no room for a reward actor (1 CPU, --num_gpus_per_worker="
                            f"{cfg.num_gpus_per_worker} GPUs; it has {resources}); add nodes or lower "
                            "--num_gpus_per_worker")
        if fit < cfg.grade_actors:
            print(f"[grade/reward] the Ray cluster holds {fit} reward actor(s), not --grade_actors="
                  f"{cfg.grade_actors}: using {fit}", flush=True)
        return max(1, min(cfg.grade_actors, fit))

    def _finish_one(self, pending: dict, free: deque) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        done, _ = self.ray.wait(list(pending), num_returns=1)
        free.append(pending.pop(done[0]))
        try:
            yield self.ray.get(done[0])
        except self.ray.exceptions.RayError as exc:
            cause = getattr(exc, "cause", None)
            raise DataError(f"reward scoring on a Ray actor failed: {cause or exc}") from None

    def close(self) -> None:
        pass


def make_executor(cfg: DataConfig, task: ShardTask):
    """The executor --executor names, running ``task`` for each shard."""
    if cfg.executor == "local":
        return LocalExecutor(task)
    if cfg.executor == "ray":
        return RayExecutor(cfg, task)
    raise DataError(f"--executor={cfg.executor}: choose local or ray")
