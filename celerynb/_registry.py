"""Kernel side: every job this process submitted or attached, across connections."""

from __future__ import annotations

import threading
from typing import Any

from ._errors import UnknownJobError
from ._store import store

MAX_JOBS_KEPT = 10_000  # a kernel that runs for weeks does not keep every finished job


class JobRegistry:
    """The jobs of this kernel, in submission order. Thread-safe.

    Beyond ``max_kept`` jobs the oldest finished ones are let go (a tenth at a
    time); unfinished jobs and the newest job are always kept.
    """

    def __init__(self, max_kept: int = MAX_JOBS_KEPT) -> None:
        self._jobs: dict[str, Any] = {}
        self._lock = threading.Lock()
        self.max_kept = max_kept

    def add(self, job: Any) -> None:
        """Keep ``job`` (a Job or JobGroup) and record it for this notebook."""
        with self._lock:
            self._jobs[job.id] = job
            if len(self._jobs) > self.max_kept:
                self._let_go_of_old_finished_jobs()
        session = getattr(job, "_session", None)
        if session is not None:
            store.record(job._record(), session.backend_key)

    def _let_go_of_old_finished_jobs(self) -> None:
        excess = len(self._jobs) - self.max_kept + max(self.max_kept // 10, 1)
        newest = next(reversed(self._jobs))  # just added: kept, even if already finished
        old_finished = [
            task_id for task_id, job in self._jobs.items() if job.done() and task_id != newest
        ][:excess]
        for task_id in old_finished:
            del self._jobs[task_id]

    def all(self) -> list[Any]:
        with self._lock:
            return list(self._jobs.values())

    def __len__(self) -> int:
        return len(self._jobs)

    def __contains__(self, task_id: object) -> bool:
        return task_id in self._jobs

    def find_exact(self, task_id: str) -> Any:
        """The job with exactly this id; KeyError if none."""
        with self._lock:
            return self._jobs[task_id]

    def find(self, id_or_prefix: str) -> Any:
        """The one job whose id is, or starts with, ``id_or_prefix``."""
        key = id_or_prefix.strip()
        with self._lock:
            if key in self._jobs:
                return self._jobs[key]
            matches = [
                job for task_id, job in self._jobs.items() if key and task_id.startswith(key)
            ]
        if len(matches) == 1:
            return matches[0]
        if not matches:
            raise UnknownJobError(f"no job of this kernel has an id starting with {key!r}")
        raise UnknownJobError(
            f"{len(matches)} jobs have ids starting with {key!r}: give more characters"
        )


registry = JobRegistry()
