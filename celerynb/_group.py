"""Kernel side: many items on many tasks as one Future with one aggregated bar."""

from __future__ import annotations

import concurrent.futures
import threading
import time
import uuid
from collections.abc import Iterator, Sequence
from concurrent.futures import CancelledError, InvalidStateError
from dataclasses import dataclass
from typing import Any

from celery import states

from ._chunks import ChunkResult
from ._future import WatchedFuture
from ._job import Job
from ._remote_errors import exception_from_info
from ._schema import PROGRESS, BarSnapshot, ProgressSnapshot
from ._store import JobRecord

Span = tuple[int, int]  # items [start, stop) of one task


@dataclass(frozen=True)
class ItemCounts:
    """How many items are pending, running, done and failed."""

    pending: int = 0
    running: int = 0
    done: int = 0
    failed: int = 0

    def text(self) -> str:
        parts = [f"{self.failed} failed"] if self.failed else []
        parts += [f"{self.running} running"] if self.running else []
        parts += [f"{self.pending} pending"] if self.pending else []
        return ", ".join(parts)


def count_items(
    spans: Sequence[Span],
    job_states: Sequence[str],
    in_task_done: Sequence[float],
    finished: Sequence[bool],
    failed_items: int,
) -> ItemCounts:
    """Item counts from each task's span, state and in-task progress (pure)."""
    pending = running = done = 0
    for (start, stop), state, partial, is_finished in zip(
        spans, job_states, in_task_done, finished
    ):
        size = stop - start
        if is_finished:
            done += size
        elif state in (states.STARTED, PROGRESS, states.RETRY):
            partial = int(min(max(partial, 0), size))
            done += partial
            running += size - partial
        else:
            pending += size
    return ItemCounts(pending, running, done - failed_items, failed_items)


class JobGroup(WatchedFuture):
    """Many items run by one or more Celery tasks, watched as one.

    A ``concurrent.futures.Future`` whose result is the list of item results in
    input order (``results()``); it fails with the first failed item's exception.
    Iterating it yields the results in order as they become available;
    ``as_completed()`` yields ``(index, result)`` as tasks finish; ``exceptions``
    maps failed item indexes to their exceptions; ``jobs`` are the Celery tasks.
    """

    def __init__(
        self,
        jobs: Sequence[Job],
        spans: Sequence[Span] | None = None,
        *,
        name: str,
        call_repr: str = "",
        session: Any = None,
        code: Any = None,
        group_id: str | None = None,
    ) -> None:
        super().__init__()
        self.id = group_id or str(uuid.uuid4())
        self.name = name
        self.call_repr = call_repr or name
        self.jobs = list(jobs)
        self._chunked = spans is not None
        self._spans = list(spans) if spans is not None else [(i, i + 1) for i in range(len(jobs))]
        self._session = session
        self._code = code
        self._total = self._spans[-1][1] if self._spans else 0
        self._values: list[Any] = [None] * self._total
        self._errors: dict[int, BaseException] = {}
        self._finished = [False] * len(self.jobs)
        self._remaining = len(self.jobs)
        self._lock = threading.Lock()
        self._settled = threading.Condition(self._lock)
        self._index_of = {job.id: i for i, job in enumerate(self.jobs)}
        for job in self.jobs:
            job.add_listener(self._on_job_change)
            job.add_done_callback(self._on_job_done)
        if not self.jobs:
            self._finish()

    # -- public ---------------------------------------------------------------
    def __len__(self) -> int:
        return self._total

    def __iter__(self) -> Iterator[Any]:
        """Item results in input order, each as soon as its task is done."""
        for job, (start, stop) in zip(self.jobs, self._spans):
            self._wait_settled(job)
            for index in range(start, stop):
                yield self._item_result(index)

    def results(
        self, timeout: float | None = None, *, return_exceptions: bool = False
    ) -> list[Any]:
        """Every item's result in input order.

        Raises the first failed item's exception, or with ``return_exceptions``
        puts each failed item's exception in its place.
        """
        if not return_exceptions:
            return self.result(timeout)
        concurrent.futures.wait([self], timeout=timeout)
        if not self.done():
            raise TimeoutError(f"{self.call_repr} is not done after {timeout}s")
        errors = self.exceptions
        return [errors.get(i, value) for i, value in enumerate(self._values)]

    def as_completed(self, timeout: float | None = None) -> Iterator[tuple[int, Any]]:
        """``(index, result)`` pairs as their tasks finish; a failed item raises."""
        for job in concurrent.futures.as_completed(self.jobs, timeout=timeout):
            start, stop = self._spans[self._index_of[job.id]]
            self._wait_settled(job)
            for index in range(start, stop):
                yield index, self._item_result(index)

    @property
    def exceptions(self) -> dict[int, BaseException]:
        """Failed items so far: index -> exception (with the remote traceback as cause)."""
        with self._lock:
            return dict(sorted(self._errors.items()))

    @property
    def counts(self) -> ItemCounts:
        jobs = self.jobs
        with self._lock:
            finished = list(self._finished)
            failed = len(self._errors)
        partial = [job.progress.n if self._chunked else 0 for job in jobs]
        return count_items(self._spans, [job.state for job in jobs], partial, finished, failed)

    @property
    def state(self) -> str:
        if self.done():
            if self.cancelled():
                return states.REVOKED
            return states.FAILURE if self._errors else states.SUCCESS
        if any(self._finished) or any(j.state in (states.STARTED, PROGRESS) for j in self.jobs):
            return PROGRESS
        return states.PENDING

    @property
    def progress(self) -> ProgressSnapshot:
        """The aggregated bar: processed items (including in-task progress) of all."""
        counts = self.counts
        processed = counts.done + counts.failed
        elapsed = self.elapsed
        rate = processed / elapsed if processed and elapsed > 0 else None
        bar = BarSnapshot(processed, self._total, self.name, "it", rate, elapsed, counts.text())
        return ProgressSnapshot(self.state, (bar,))

    def cancel(self) -> bool:
        """Revoke every unfinished task (one broadcast); False if already done."""
        with self._lock:
            if not concurrent.futures.Future.cancel(self):
                return False
            self.set_running_or_notify_cancel()
            self._finished_at = time.monotonic()
        unfinished = [job for job in self.jobs if not job.done()]
        if unfinished and self._session is not None:
            for shipped in (True, False):
                ids = [job.id for job in unfinished if (job._shipped is True) == shipped]
                if ids:
                    self._session.revoke(ids, shipped=shipped)
        for job in unfinished:
            job._finish_cancelled()
        self._notify()
        return True

    def short_result_repr(self) -> str:
        text = super().short_result_repr()
        if self.done() and not self.cancelled() and self._errors:
            index = min(self._errors)
            text += f" (item {index}; {len(self._errors)} of {self._total} failed)"
        return text

    def _record(self) -> JobRecord:
        return JobRecord(  # never call_repr: a name and a shape rebuild it
            self.id,
            self.name,
            True if self._chunked else None,
            tuple(job.id for job in self.jobs),
            tuple(self._spans) if self._chunked else None,
        )

    # -- fed by the jobs (watcher thread) --------------------------------------
    def _on_job_change(self, _job: Job) -> None:
        self._notify()

    def _on_job_done(self, job: Job) -> None:
        position = self._index_of[job.id]
        start, stop = self._spans[position]
        try:
            errors = self._collect(job, start, stop)
        except Exception as exc:  # an undecodable result fails its items, never hangs
            errors = dict.fromkeys(range(start, stop), exc)
        with self._settled:
            self._errors.update(errors)
            self._finished[position] = True
            self._remaining -= 1
            last = self._remaining == 0
            self._settled.notify_all()
        if last:
            self._finish()
        self._notify()

    def _collect(self, job: Job, start: int, stop: int) -> dict[int, BaseException]:
        """Store a finished task's values; return its failed items."""
        if job.cancelled():
            return {i: CancelledError(f"item {i} was cancelled") for i in range(start, stop)}
        error = job.exception(timeout=0)
        if error is not None:
            return dict.fromkeys(range(start, stop), error)
        value = job.result(timeout=0)
        if not self._chunked:
            self._values[start] = value
            return {}
        if not isinstance(value, ChunkResult) or len(value.values) != stop - start:
            raise TypeError(f"task {job.id} returned {type(value).__name__}, not its chunk")
        self._values[start:stop] = value.values
        return {
            start + offset: exception_from_info(info, self._code)
            for offset, info in value.errors.items()
        }

    def _finish(self) -> None:
        # When its last task finished (long before, for a group re-attached after a restart).
        ends = [job._finished_at for job in self.jobs if job._finished_at is not None]
        self._finished_at = max(ends, default=time.monotonic())
        try:
            if self._errors:
                index = min(self._errors)
                error = self._errors[index]
                if not isinstance(error, CancelledError):
                    error.add_note(f"celerynb: item {index} of {self.call_repr}")
                self.set_exception(error)
            else:
                self.set_result(self._values)
        except InvalidStateError:  # cancelled meanwhile
            pass

    def _wait_settled(self, job: Job, timeout: float | None = None) -> None:
        """Wait until ``job`` is done and its items are stored."""
        concurrent.futures.wait([job], timeout=timeout)
        position = self._index_of[job.id]
        with self._settled:
            # done callbacks run right after a job is done: this wait is short
            if not self._settled.wait_for(lambda: self._finished[position], timeout=10):
                raise TimeoutError(f"task {job.id} finished but its items were not stored")

    def _item_result(self, index: int) -> Any:
        error = self._errors.get(index)
        if error is not None:
            raise error
        return self._values[index]
