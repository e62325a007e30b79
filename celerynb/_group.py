"""Kernel side: many items on many tasks as one Future with one aggregated bar."""

from __future__ import annotations

import concurrent.futures
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from typing import Any

from celery import states

from ._future import WatchedFuture
from ._group_items import GroupItems
from ._group_progress import ItemCounts, Span, count_items, items_bar, tasks_note
from ._group_updates import close, grow, join, retry_failed, take_output_of
from ._job import Job
from ._output import Entry
from ._output_log import OutputLog, OutputTail
from ._schema import PROGRESS, UNKNOWN, ProgressSnapshot
from ._store import JobRecord


def add_note(error: BaseException, note: str) -> None:
    """``error.add_note(note)`` (Python 3.11+), or its ``__notes__`` on 3.10."""
    if hasattr(error, "add_note"):
        error.add_note(note)
    else:
        error.__notes__ = [*getattr(error, "__notes__", []), note]  # type: ignore[attr-defined]


class JobGroup(WatchedFuture):
    """Many items run by one or more Celery tasks, watched as one.

    A ``concurrent.futures.Future`` whose result is the list of item results in
    input order (``results()``). It fails with the first failed item's exception,
    and ends cancelled when any of its tasks was cancelled (by ``cancel()`` or a
    revoke from elsewhere). Iterating it yields the results in order as they become
    available; ``as_completed()`` yields every item once, as ``(index, future)``,
    as its task finishes; ``exceptions`` maps failed item indexes to their
    exceptions; ``counts`` tells pending, running, done, failed and cancelled
    items apart; ``jobs`` are the Celery tasks.
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
        open_ended: bool = False,
        keep_values: bool = True,
    ) -> None:
        super().__init__()
        self.id = group_id or str(uuid.uuid4())
        self.name = name
        self.call_repr = call_repr or name
        self.jobs = list(jobs)
        if self.jobs:  # its clock starts with its first task, not once the last one is sent
            self._submitted_at = min(job._submitted_at for job in self.jobs)
        self._items = GroupItems(
            list(spans) if spans is not None else [(i, i + 1) for i in range(len(jobs))],
            len(self.jobs),
            chunked=spans is not None and not open_ended,
            keep_values=keep_values,
            batches=open_ended,  # a joblib call's
        )
        self._session = session
        self._code = code
        # Open ended: tasks come later (``_grow``) and the group ends after ``_close``.
        self._open = open_ended
        self._expected: int | None = None  # items an open group will hold in all, if known
        # A map's call, to re-run failed items (set by map): (fn, items, star, make_call).
        self._items_call: tuple[Any, Any, bool, Any] | None = None
        self._remaining = len(self.jobs)
        self._ran_before = 0  # items that ran in earlier runs (before retry_failed)
        self._cancelling = False  # cancel() is cancelling the tasks: it ends the group
        self._ended = False  # the group's outcome is decided (set once, under the lock)
        self._lock = threading.Lock()
        self._output = OutputLog()
        self._output_marks: dict[str, int] = {}  # lines of each task already taken
        self._settled = threading.Condition(self._lock)
        # Positions, not ids: the same task may be given twice (attach([id, id])).
        self._positions: dict[str, list[int]] = {}
        for position, job in enumerate(self.jobs):
            self._positions.setdefault(job.id, []).append(position)
        for position, job in enumerate(self.jobs):
            join(self, position, job)
        if not self.jobs and not self._open:
            self._finish()

    # -- public ---------------------------------------------------------------
    def __len__(self) -> int:
        return self._items.total

    def __iter__(self) -> Iterator[Any]:
        """Item results in input order, each as soon as its task is done; a failed
        (or cancelled) item raises its exception."""
        return self._in_order()

    def _in_order(self, deadline: float | None = None, timeout: float = 0) -> Iterator[Any]:
        """``__iter__``, raising TimeoutError when a result is not ready by ``deadline``
        (``time.monotonic()``, ``timeout`` seconds after the caller began waiting)."""

        def ready(position: int) -> None:
            if deadline is not None:
                job = self.jobs[position]
                remaining = max(deadline - time.monotonic(), 0)
                if not concurrent.futures.wait([job], timeout=remaining).done:
                    start, stop = self._items.spans[position]
                    items = f"item {start}" if stop - start == 1 else f"items {start} to {stop - 1}"
                    raise concurrent.futures.TimeoutError(  # builtin's only from 3.11 on
                        f"{self.call_repr}: {items} not ready after {timeout:g} s"
                    )
            self._wait_stored(position)

        self._raise_if_released()
        return self._items.in_order(ready, self.call_repr)

    def results(
        self, timeout: float | None = None, *, return_exceptions: bool = False
    ) -> list[Any]:
        """Every item's result in input order.

        Raises the first failed item's exception (``CancelledError`` if the group
        was cancelled), or with ``return_exceptions`` puts each failed item's
        exception in its place, and a ``CancelledError`` in a cancelled item's.

        Raises:
            TimeoutError: if the group is not done after ``timeout`` seconds.
        """
        if not return_exceptions:
            return self.result(timeout)
        self._wait_or_raise(timeout)
        self._raise_if_released()
        for position in range(len(self.jobs)):
            self._wait_stored(position)
        return self._items.outcomes(self.call_repr)

    def as_completed(
        self, timeout: float | None = None
    ) -> Iterator[tuple[int, concurrent.futures.Future]]:
        """Every item once, as ``(index, future)``, as soon as its task finishes.

        ``future`` is a done ``concurrent.futures.Future`` for that one item:
        ``result()`` returns its value or raises its exception (with the remote
        traceback as cause), ``exception()`` returns it, and an item whose task
        was cancelled is ``cancelled()``. A failed item does not end the iteration:
        as with ``concurrent.futures.as_completed``, the caller decides::

            for index, item in sweep.as_completed():
                if item.exception() is None:
                    use(index, item.result())

        Raises:
            TimeoutError: if items are still unfinished ``timeout`` seconds after
                the iteration started.
        """
        self._raise_if_released()
        positions: dict[concurrent.futures.Future, list[int]] = {
            job: self._positions[job.id] for job in self._positions_by_job()
        }
        for done in concurrent.futures.as_completed(positions, timeout=timeout):
            for position in positions[done]:
                self._wait_stored(position)
                yield from self._items.item_futures(position)

    @property
    def exceptions(self) -> dict[int, BaseException]:
        """Failed items so far: index -> exception (with the remote traceback as cause).

        Cancelled items are not failures: ``counts.cancelled`` counts them.
        """
        with self._lock:
            return dict(sorted(self._items.errors.items()))

    @property
    def counts(self) -> ItemCounts:
        """How many items are pending, running, done, failed and cancelled now."""
        jobs, items = self.jobs, self._items
        with self._lock:
            stored = list(items.stored)
            cancelled = list(items.cancelled)
            failed = len(items.errors)
            not_run = items.not_run
            kept = [
                stop - start - len(items.rerun_offsets.get(position, range(stop - start)))
                for position, (start, stop) in enumerate(items.spans)
            ]
        partial = [job.progress.n if items.chunked else 0 for job in jobs]
        return count_items(
            items.spans,
            [job.state for job in jobs],
            partial,
            settled=stored,
            cancelled=cancelled,
            failed_items=failed,
            not_run_items=not_run,
            kept=kept,
        )

    @property
    def state(self) -> str:
        if self.done():
            if self.cancelled():
                return states.REVOKED
            return states.FAILURE if self._items.errors else states.SUCCESS
        if any(self._items.stored) or any(j.state in (states.STARTED, PROGRESS) for j in self.jobs):
            return PROGRESS
        if self.jobs and all(job.state == UNKNOWN for job in self.jobs):
            return UNKNOWN
        return states.PENDING

    @property
    def note(self) -> str | None:
        """Its tasks' notes: the first one, and how many tasks it concerns."""
        jobs = self._positions_by_job()
        return tasks_note([note for note in (job.note for job in jobs) if note], len(jobs))

    @property
    def output(self) -> OutputTail:
        """What its tasks printed and logged: the last 1,000 lines, in the order they
        came (see ``Job.output``)."""
        with self._lock:
            return self._output.tail()

    def _output_since(self, mark: int) -> tuple[list[Entry], int, int]:
        with self._lock:
            entries, missed = self._output.since(mark)
            return entries, missed, self._output.received

    @property
    def progress(self) -> ProgressSnapshot:
        """The aggregated bar: items that ran (done or failed, including in-task
        progress) of all; cancelled items are counted in the text, not the bar.

        An open-ended group whose final size is not known has no total (a count and
        a rate, no ETA): the items sent so far are not the total, and a bar over them
        would look nearly full all along (joblib sends only a few batches ahead)."""
        total: int | None = self._items.total
        if self._open:
            total = None if self._expected is None else max(self._expected, self._items.total)
        bar = items_bar(self.counts, total, self.name, self.elapsed, self._ran_before)
        return ProgressSnapshot(self.state, (bar,))

    def cancel(self) -> bool:
        """Cancel every unfinished task (one revoke broadcast); False if already done.

        The items of tasks that finished before keep their results; the others
        count as cancelled, and the group ends cancelled.
        """
        return self._cancel_unfinished(self._end_cancelled)

    def _abort_after_failure(self) -> bool:
        """Cancel every unfinished task, as ``cancel``, because an item failed (joblib's
        rule: an error ends the call): the group ends failed, with its first failed
        item's error, and the rest counts as cancelled. With no failed item (the caller
        stopped for another reason), it ends cancelled."""
        return self._cancel_unfinished(self._end_failed_or_cancelled)

    def _cancel_unfinished(self, end: Callable[[], None]) -> bool:
        with self._lock:
            if self._ended or self._cancelling:
                return False
            self._cancelling = True
        # Cancelled here before the revoke is sent: a result arriving from now on no
        # longer counts, and the REVOKED states the revoke brings find them finished.
        cancelled = [job for job in self._positions_by_job() if job._finish_cancelled()]

        def redraw() -> None:  # the revokes' notes changed: the jobs tell the group
            for job in cancelled:
                job._notify()

        if cancelled and self._session is not None:
            for shipped in (True, False):
                ids = [job.id for job in cancelled if (job._shipped is True) == shipped]
                if ids:
                    self._session.revoke(ids, shipped=shipped, on_change=redraw)
        with self._lock:
            self._cancelling = False
            last = self._remaining == 0 and not self._open
        if cancelled:
            # A task finishing in another thread right now may store its items
            # after this: they are its true outcome, and the group stays cancelled.
            if self._claim_end():
                end()
            self._notify()
            return True
        if last:  # every task had finished meanwhile: nothing was cancelled
            self._finish()
        self._notify()
        return False

    def short_result_repr(self) -> str:
        items = self._items
        if self.done() and not self.cancelled() and not items.errors and not items.keep_values:
            return f"{items.total:,} results"  # its caller has them (joblib), not the group
        text = super().short_result_repr()
        errors = items.errors
        if self.done() and not self.cancelled() and errors:
            index = min(errors)
            text += f" (item {index}; {len(errors)} of {self._items.total} failed)"
        return text

    def _record(self) -> JobRecord:
        return JobRecord(  # never call_repr: a name and a shape rebuild it
            self.id,
            self.name,
            True if self._items.chunked else None,
            tuple(job.id for job in self.jobs),
            tuple(self._items.spans) if self._items.chunked else None,
        )

    def retry_failed(self) -> JobGroup:
        """Run again what failed, in this group and under its bar: a task that failed
        whole runs again, and a map's chunk runs again with only its failed items.
        Items that succeeded keep their results. Returns the group, running again.

        Raises:
            RuntimeError: the group is not finished, nothing failed, or a failed task
                was not sent by this kernel (its call is not known here).
        """
        return retry_failed(self)

    # -- an open-ended group (e.g. a joblib call) --------------------------------
    def _grow(self, jobs: Sequence[Job], sizes: Sequence[int]) -> None:
        """Add tasks of ``sizes`` items each; their items follow those the group has.

        Raises:
            CancelledError: the group was cancelled (or ended): the tasks are cancelled.
        """
        grow(self, jobs, sizes)

    def _expect(self, total: int) -> None:
        """The open group will hold ``total`` items in all (a joblib call over a list):
        its bar has a total, and so an ETA, before its last task is sent."""
        self._expected = total
        self._notify()

    def _close(self) -> None:
        """No more tasks will come: the group ends once those it has are done."""
        close(self)

    # -- fed by the jobs (watcher thread) --------------------------------------
    def _on_job_change(self, job: Job) -> None:
        take_output_of(self, job)
        if not self._cancelling:  # cancel() notifies once, not once per task
            self._notify()

    def _claim_end(self) -> bool:
        """True for the one caller that decides the group's outcome."""
        with self._lock:
            if self._ended:
                return False
            self._ended = True
            # When its last task finished (long before, for a group re-attached later).
            ends = [job._finished_at for job in self.jobs if job._finished_at is not None]
            self._finished_at = max(ends, default=time.monotonic())
            return True

    def _finish(self) -> None:
        """Every task's items are stored: end with the first failure, or cancelled
        when a task was cancelled (its items have no values), or with the values."""
        if not self._claim_end():
            return
        items = self._items
        if not items.errors or any(job._carries_scattered for job in self.jobs):
            self._items_call = None  # nothing to run again, or it would hold scattered data
        if items.errors:  # a failed item says more than the cancelled ones
            self._end_failed()
        elif any(items.cancelled):
            self._end_cancelled()
        else:
            self.set_result(items.values if items.keep_values else None)
            if self._released is not None:  # let go of while it ended: not kept after all
                with self._condition:
                    self._result = None

    def _end_cancelled(self) -> None:
        concurrent.futures.Future.cancel(self)
        self.set_running_or_notify_cancel()

    def _end_failed(self) -> None:
        index = min(self._items.errors)
        error = self._items.errors[index]
        add_note(error, f"celerynb: item {index} of {self.call_repr}")
        self.set_exception(error)

    def _end_failed_or_cancelled(self) -> None:
        with self._lock:
            failed = bool(self._items.errors)
        if failed:
            self._end_failed()
        else:
            self._end_cancelled()

    def _release_results(self, why: str) -> None:
        """Let go of every item's result (a finished group whose one reader has them,
        ``why`` says who): the group stays in the kernel's job list without its data.
        Reading the items then raises ``ResultReleasedError``."""
        with self._condition:  # first: a reader from now on is told, not given nothing
            self._released = why
            self._result = None  # and if it is still ending, ``_finish`` lets go of it
        with self._lock:
            self._items.values = []
            self._items.keep_values = False
        for job in self._positions_by_job():
            job._release_result(why)

    def _positions_by_job(self) -> list[Job]:
        """Each job once (a task given twice is one job)."""
        return [self.jobs[positions[0]] for positions in self._positions.values()]

    def _wait_stored(self, position: int, timeout: float | None = None) -> None:
        """Wait until the task at ``position`` is done and its items are stored."""
        job = self.jobs[position]
        concurrent.futures.wait([job], timeout=timeout)
        with self._settled:
            # done callbacks run right after a job is done: this wait is short
            if not self._settled.wait_for(lambda: self._items.stored[position], timeout=10):
                raise concurrent.futures.TimeoutError(
                    f"task {job.id} finished but its items were not stored"
                )
