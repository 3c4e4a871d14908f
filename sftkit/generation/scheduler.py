"""The API's scheduler: the one thread that generates, and the bounded queue of jobs waiting for it.

It knows nothing of HTTP: a job is a list of engine requests with their settings and a ``post``
function through which the worker reports ``("piece", index, text)``, then ``("done", answers)``
(``answers`` None for a job cancelled before it ran) or ``("error", message)``. When the worker is
free it takes the oldest job and every waiting job with equal settings, up to ``api_batch_size``
rows, and answers them in one padded batch (static batching: a short request that arrives while a
batch runs waits for that batch to end). A cancelled job leaves the queue at once if it waits, and
its rows end at their next token if it runs.
"""
from __future__ import annotations

import collections
import threading
from dataclasses import dataclass, field
from typing import Callable

from sftkit.generation.config import GenerateConfig
from sftkit.generation.engine import BatchStream, Request
from sftkit.generation.loading import Models


@dataclass(eq=False)
class Job:
    """One client request: its rows (``n`` choices per prompt), their settings, and where events go."""

    requests: list[Request]
    settings: GenerateConfig
    post: Callable[..., None]
    cancel: threading.Event = field(default_factory=threading.Event)

    def __post_init__(self):
        for request in self.requests:
            request.cancel = self.cancel


class Scheduler:
    """Runs jobs on one worker thread, batching waiting jobs that share their settings."""

    def __init__(self, models: Models, config: GenerateConfig):
        self.models = models
        self.limit = config.api_queue_size
        self.batch_rows = config.api_batch_size
        self.waiting: collections.deque[Job] = collections.deque()
        self.admitted = 0  # waiting + running jobs
        self.batches = 0
        self.condition = threading.Condition()
        self.stopping = False
        self.running = threading.Event()  # the running batch's: set, it ends at its next token
        self.thread = threading.Thread(target=self._run, name="sftkit-api-worker", daemon=True)
        self.thread.start()

    def submit(self, job: Job) -> bool:
        """Queue ``job``; False when the queue is full."""
        with self.condition:
            if self.admitted >= self.limit:
                return False
            self.admitted += 1
            self.waiting.append(job)
            self.condition.notify()
        return True

    def cancel(self, job: Job) -> None:
        """Cancel ``job``: a waiting job leaves the queue at once, a running one ends at its next token."""
        job.cancel.set()
        with self.condition:
            if job not in self.waiting:
                return
            self.waiting.remove(job)
            self.admitted -= 1
        job.post("done", None)

    def stop(self) -> None:
        with self.condition:
            self.stopping = True
            self.condition.notify()
            self.running.set()
        self.thread.join(timeout=30)

    def _take(self) -> list[Job] | None:
        with self.condition:
            while not self.waiting and not self.stopping:
                self.condition.wait()
            if self.stopping:
                return None
            self.running = threading.Event()
            first = self.waiting.popleft()
            batch, rows = [first], len(first.requests)
            for job in list(self.waiting):
                if job.settings == first.settings and rows + len(job.requests) <= self.batch_rows:
                    self.waiting.remove(job)
                    batch.append(job)
                    rows += len(job.requests)
            return batch

    def _finish(self, job: Job, *event) -> None:
        with self.condition:
            self.admitted -= 1
        job.post(*event)

    def _run(self) -> None:
        while (taken := self._take()) is not None:
            jobs = [job for job in taken if not job.cancel.is_set()]
            for job in taken:
                if job.cancel.is_set():  # cancelled between leaving the queue and running
                    self._finish(job, "done", None)
            if not jobs:
                continue
            self.batches += 1
            requests = [request for job in jobs for request in job.requests]
            owner = [(job, index) for job in jobs for index in range(len(job.requests))]
            stream = BatchStream(self.models, requests, jobs[0].settings, self.running)
            try:
                for row, piece in stream:
                    job, index = owner[row]
                    if not job.cancel.is_set():
                        job.post("piece", index, piece)
            except Exception as exc:  # a failed generate call answers its jobs with an error (a bug)
                for job in jobs:
                    self._finish(job, "error", f"{type(exc).__name__}: {exc}")
                continue
            answers = stream.answers or []
            for job in jobs:
                self._finish(job, "done", [answers[n] for n, (owner_job, _) in enumerate(owner) if owner_job is job])
