"""Kernel side: many items on many tasks as one Future with one aggregated bar."""

from __future__ import annotations

import concurrent.futures
import functools
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import CancelledError
from dataclasses import dataclass
from typing import Any

from celery import states

from ._chunks import ChunkResult
from ._future import WatchedFuture
from ._job import Job
from ._output import Entry
from ._output_log import OutputLog, OutputTail
from ._remote_errors import exception_from_info
from ._schema import PROGRESS, UNKNOWN, BarSnapshot, ProgressSnapshot
from ._store import JobRecord

Span = tuple[int, int]  # items [start, stop) of one task


def add_note(error: BaseException, note: str) -> None:
    """``error.add_note(note)`` (Python 3.11+), or its ``__notes__`` on 3.10."""
    if hasattr(error, "add_note"):
        error.add_note(note)
    else:
        error.__notes__ = [*getattr(error, "__notes__", []), note]  # type: ignore[attr-defined]


@dataclass(frozen=True)
class ItemCounts:
    """How many items are pending, running, done (without error), failed and cancelled.

    ``done + failed`` items ran to an outcome; ``cancelled`` items never will (their
    task was revoked, whether or not some of them had run: their results are lost).
    """

    pending: int = 0
    running: int = 0
    done: int = 0
    failed: int = 0
    cancelled: int = 0

    def text(self) -> str:
        parts = [f"{self.failed} failed"] if self.failed else []
        parts += [f"{self.cancelled} cancelled"] if self.cancelled else []
        parts += [f"{self.running} running"] if self.running else []
        parts += [f"{self.pending} pending"] if self.pending else []
        return ", ".join(parts)


# States in which a task's own progress counts: running, or finished with its items
# about to be stored (a done callback runs right after the state arrives).
_COUNTING_PROGRESS = frozenset({states.STARTED, PROGRESS, states.RETRY}) | states.READY_STATES


def count_items(
    spans: Sequence[Span],
    job_states: Sequence[str],
    in_task_done: Sequence[float],
    *,
    settled: Sequence[bool],
    cancelled: Sequence[bool],
    failed_items: int,
) -> ItemCounts:
    """Item counts from each task's span, state, in-task progress and outcome (pure).

    ``settled``: the task's items are stored; ``cancelled``: it was cancelled (its
    items count as cancelled); ``failed_items``: how many stored items failed.
    """
    pending = running = done = revoked = 0
    for (start, stop), state, partial, is_settled, is_cancelled in zip(
        spans, job_states, in_task_done, settled, cancelled, strict=True
    ):
        size = stop - start
        if is_cancelled:
            revoked += size
        elif is_settled or state == states.SUCCESS:
            # SUCCESS: every item ran, even while the chunk's values still download (the
            # job's bar then counts bytes, not items)
            done += size
        elif state in _COUNTING_PROGRESS:
            partial = int(min(max(partial, 0), size))
            done += partial
            running += size - partial
        else:
            pending += size
    return ItemCounts(pending, running, done - failed_items, failed_items, revoked)


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
        self._chunked = spans is not None and not open_ended
        self._spans = list(spans) if spans is not None else [(i, i + 1) for i in range(len(jobs))]
        self._session = session
        self._code = code
        # Open ended: tasks come later (``_grow``) and the group ends after ``_close``.
        self._open = open_ended
        self._expected: int | None = None  # items an open group will hold in all, if known
        # A map's call, to re-run failed items (set by map): (fn, items, star, make_call).
        self._items_call: tuple[Any, Any, bool, Any] | None = None
        self._rerun_offsets: dict[int, list[int]] = {}  # position -> offsets run again
        self._keep_values = keep_values
        self._total = self._spans[-1][1] if self._spans else 0
        self._values: list[Any] = [None] * self._total if keep_values else []
        self._errors: dict[int, BaseException] = {}  # failed items, never cancelled ones
        self._stored = [False] * len(self.jobs)  # the task's outcome is recorded here
        self._task_cancelled = [False] * len(self.jobs)
        self._task_has_failures = [False] * len(self.jobs)  # some of its items failed
        self._remaining = len(self.jobs)
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
            job._group = self if job._group is None else job._group
            job.add_listener(self._on_job_change)
            self._take_output_of(job)
            job.add_done_callback(functools.partial(self._on_job_done, position))
        if not self.jobs and not self._open:
            self._finish()

    # -- public ---------------------------------------------------------------
    def __len__(self) -> int:
        return self._total

    def __iter__(self) -> Iterator[Any]:
        """Item results in input order, each as soon as its task is done; a failed
        (or cancelled) item raises its exception."""
        return self._in_order()

    def _in_order(self, deadline: float | None = None) -> Iterator[Any]:
        """``__iter__``, raising TimeoutError when a result is not ready by ``deadline``
        (``time.monotonic()``)."""
        for position, (start, stop) in enumerate(self._spans):
            if deadline is not None:
                job = self.jobs[position]
                remaining = max(deadline - time.monotonic(), 0)
                if not concurrent.futures.wait([job], timeout=remaining).done:
                    raise concurrent.futures.TimeoutError(  # builtin's only from 3.11 on
                        f"{self.call_repr}: items {start} to {stop - 1} not ready"
                    )
            self._wait_stored(position)
            if self._all_succeeded(position):
                yield from self._values[start:stop]
                continue
            for index in range(start, stop):
                error = self._item_error(position, index)
                if error is not None:
                    raise error
                yield self._values[index]

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
        for position in range(len(self.jobs)):
            self._wait_stored(position)
        outcomes: list[Any] = []
        for position, (start, stop) in enumerate(self._spans):
            if self._all_succeeded(position):  # no per-item work: a map may have millions
                outcomes += self._values[start:stop]
                continue
            for index in range(start, stop):
                error = self._item_error(position, index)
                outcomes.append(self._values[index] if error is None else error)
        return outcomes

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
        positions: dict[concurrent.futures.Future, list[int]] = {
            job: self._positions[job.id] for job in self._positions_by_job()
        }
        for done in concurrent.futures.as_completed(positions, timeout=timeout):
            for position in positions[done]:
                self._wait_stored(position)
                start, stop = self._spans[position]
                for index in range(start, stop):
                    yield index, self._item_future(position, index)

    @property
    def exceptions(self) -> dict[int, BaseException]:
        """Failed items so far: index -> exception (with the remote traceback as cause).

        Cancelled items are not failures: ``counts.cancelled`` counts them.
        """
        with self._lock:
            return dict(sorted(self._errors.items()))

    @property
    def counts(self) -> ItemCounts:
        """How many items are pending, running, done, failed and cancelled now."""
        jobs = self.jobs
        with self._lock:
            stored = list(self._stored)
            cancelled = list(self._task_cancelled)
            failed = len(self._errors)
        partial = [job.progress.n if self._chunked else 0 for job in jobs]
        return count_items(
            self._spans,
            [job.state for job in jobs],
            partial,
            settled=stored,
            cancelled=cancelled,
            failed_items=failed,
        )

    @property
    def state(self) -> str:
        if self.done():
            if self.cancelled():
                return states.REVOKED
            return states.FAILURE if self._errors else states.SUCCESS
        if any(self._stored) or any(j.state in (states.STARTED, PROGRESS) for j in self.jobs):
            return PROGRESS
        if self.jobs and all(job.state == UNKNOWN for job in self.jobs):
            return UNKNOWN
        return states.PENDING

    @property
    def note(self) -> str | None:
        """Its tasks' notes: the first one, and how many tasks it concerns."""
        jobs = self._positions_by_job()
        notes = [note for note in (job.note for job in jobs) if note]
        if not notes:
            return None
        if len(jobs) == 1:
            return notes[0]
        others = len(notes) - notes.count(notes[0])
        more = f" (and {others} other notes)" if others else ""
        return f"{notes.count(notes[0])} of {len(jobs)} tasks: {notes[0]}{more}"

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
        counts = self.counts
        processed = counts.done + counts.failed
        elapsed = self.elapsed
        rate = processed / elapsed if processed and elapsed > 0 else None
        total: int | None = self._total
        if self._open:
            total = None if self._expected is None else max(self._expected, self._total)
        bar = BarSnapshot(processed, total, self.name, "it", rate, elapsed, counts.text())
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

    def retry_failed(self) -> JobGroup:
        """Run again what failed, in this group and under its bar: a task that failed
        whole runs again, and a map's chunk runs again with only its failed items.
        Items that succeeded keep their results. Returns the group, running again.

        Raises:
            RuntimeError: the group is not finished, nothing failed, or a failed task
                was not sent by this kernel (its call is not known here).
        """
        with self._lock:
            if not self.done() or self._cancelling:
                raise RuntimeError(f"{self.call_repr} is still running: nothing to retry")
            failed = sorted({p for p, has in enumerate(self._task_has_failures) if has})
            if not failed:
                raise RuntimeError(f"nothing of {self.call_repr} failed")
            plans = [self._retry_plan(position) for position in failed]
            for position, (_job, offsets) in zip(failed, plans, strict=True):
                for index in [self._spans[position][0] + o for o in offsets]:
                    self._errors.pop(index, None)
                self._rerun_offsets[position] = offsets
                self._stored[position] = False
                self._task_has_failures[position] = False
            self._remaining += len(failed)
            self._ended = False
            self._reopen()
        first_error = None
        for job, _offsets in plans:  # each sent, or ended with why: the count balances
            try:
                job._rerun()
            except Exception as exc:
                first_error = first_error or exc
        self._notify()
        if first_error is not None:
            raise first_error
        return self

    def _retry_plan(self, position: int) -> tuple[Job, list[int]]:
        """The job at ``position`` with its call set to run its failed items again, and
        their offsets in its span (under ``_lock``)."""
        job = self.jobs[position]
        start, stop = self._spans[position]
        failed = [i - start for i in range(start, stop) if i in self._errors]
        whole = job.cancelled() or job._exception is not None
        if self._chunked and not whole and self._items_call is not None:
            fn, items, star, make_call = self._items_call
            job._call = make_call(fn, [items[start + o] for o in failed], star)
            return job, failed
        if job._call is None:
            carried = any(j._carries_scattered for j in self.jobs)
            why = (
                "its calls carried scattered data, let go of when they ended"
                if carried
                else (job._no_retry)
            )
            raise RuntimeError(f"task {job.id} of {self.call_repr} cannot run again: {why}")
        return job, self._rerun_offsets.get(position) or list(range(stop - start))

    # -- an open-ended group (e.g. a joblib call) --------------------------------
    def _grow(self, jobs: Sequence[Job], sizes: Sequence[int]) -> None:
        """Add tasks of ``sizes`` items each; their items follow those the group has.

        Raises:
            CancelledError: the group was cancelled (or ended): the tasks are cancelled.
        """
        with self._lock:
            ended = self._ended or self._cancelling
            if not ended:
                first = len(self.jobs)
                if not self.jobs:
                    self._submitted_at = min(job._submitted_at for job in jobs)
                for job, size in zip(jobs, sizes, strict=True):
                    self._spans.append((self._total, self._total + size))
                    self._total += size
                    self.jobs.append(job)
                    self._positions.setdefault(job.id, []).append(len(self.jobs) - 1)
                if self._keep_values:
                    self._values += [None] * (self._total - len(self._values))
                self._stored += [False] * len(jobs)
                self._task_cancelled += [False] * len(jobs)
                self._task_has_failures += [False] * len(jobs)
                self._remaining += len(jobs)
        if ended:
            for job in jobs:
                job.cancel()
            raise CancelledError(f"{self.call_repr} was cancelled")
        for position, job in enumerate(jobs, first):
            job._group = self if job._group is None else job._group
            job.add_listener(self._on_job_change)
            self._take_output_of(job)
            job.add_done_callback(functools.partial(self._on_job_done, position))
        self._notify()

    def _expect(self, total: int) -> None:
        """The open group will hold ``total`` items in all (a joblib call over a list):
        its bar has a total, and so an ETA, before its last task is sent."""
        self._expected = total
        self._notify()

    def _close(self) -> None:
        """No more tasks will come: the group ends once those it has are done."""
        with self._lock:
            self._open = False
            last = self._remaining == 0 and not self._cancelling
        if last:
            self._finish()
        self._notify()

    # -- fed by the jobs (watcher thread) --------------------------------------
    def _take_output_of(self, job: Job) -> None:
        """The task's new output lines join the group's, in the order they came (also
        called when a task joins: it may have printed before the group existed)."""
        with self._lock:
            entries, missed, self._output_marks[job.id] = job._output_since(
                self._output_marks.get(job.id, 0)
            )
            self._output.append(entries)
            self._output.count_dropped(missed)

    def _on_job_change(self, job: Job) -> None:
        self._take_output_of(job)
        if not self._cancelling:  # cancel() notifies once, not once per task
            self._notify()

    def _on_job_done(self, position: int, job: Job) -> None:
        with self._lock:
            if self._stored[position]:  # already counted (a task done twice is one outcome)
                return
        start, stop = self._spans[position]
        cancelled = job.cancelled()
        errors: dict[int, BaseException] = {}
        if not cancelled:
            try:
                errors = self._collect(job, start, stop)
            except Exception as exc:  # unexpected: fail its items, never hang
                errors = dict.fromkeys(range(start, stop), exc)
        with self._settled:
            self._errors.update(errors)
            self._task_cancelled[position] = cancelled
            self._task_has_failures[position] = bool(errors)
            self._stored[position] = True
            self._remaining -= 1
            quiet = self._cancelling  # cancel() notifies once, not once per task
            last = self._remaining == 0 and not quiet and not self._open
            self._settled.notify_all()
        if last:
            self._finish()
        if not quiet:
            self._notify()

    def _collect(self, job: Job, start: int, stop: int) -> dict[int, BaseException]:
        """Store a finished task's values; return its failed items."""
        error = job.exception(timeout=0)
        if error is not None:  # the whole task failed: none of its items has a result
            offsets = self._rerun_offsets.get(self._positions[job.id][0])
            return dict.fromkeys([start + o for o in offsets] if offsets else range(start, stop),
                                 error)  # fmt: skip
        value = job.result(timeout=0)
        if not self._keep_values:
            return {}
        if not self._chunked:
            self._values[start] = value
            return {}
        offsets = self._rerun_offsets.get(self._positions[job.id][0])
        indexes = [start + o for o in offsets] if offsets else range(start, stop)
        size = len(indexes)
        if (
            not isinstance(value, ChunkResult)
            or len(value.values) != size
            or not all(isinstance(o, int) and 0 <= o < size for o in value.errors)
        ):
            mismatch = TypeError(
                f"task {job.id} of {self.call_repr} returned {type(value).__name__}, "
                f"not the results of its items {start} to {stop - 1}"
            )
            return dict.fromkeys(indexes, mismatch)
        for index, item_value in zip(indexes, value.values, strict=True):
            self._values[index] = item_value
        return {
            indexes[offset]: exception_from_info(info, self._code)
            for offset, info in value.errors.items()
        }

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
        """Every task's items are stored: end with the values, the first failure, or
        cancelled when a task was cancelled (its items have no values)."""
        if not self._claim_end():
            return
        if not self._errors or any(job._carries_scattered for job in self.jobs):
            self._items_call = None  # nothing to run again, or it would hold scattered data
        if any(self._task_cancelled):
            self._end_cancelled()
        elif self._errors:
            self._end_failed()
        else:
            self.set_result(self._values if self._keep_values else None)

    def _end_cancelled(self) -> None:
        concurrent.futures.Future.cancel(self)
        self.set_running_or_notify_cancel()

    def _end_failed(self) -> None:
        index = min(self._errors)
        error = self._errors[index]
        add_note(error, f"celerynb: item {index} of {self.call_repr}")
        self.set_exception(error)

    def _end_failed_or_cancelled(self) -> None:
        with self._lock:
            failed = bool(self._errors)
        if failed:
            self._end_failed()
        else:
            self._end_cancelled()

    def _positions_by_job(self) -> list[Job]:
        """Each job once (a task given twice is one job)."""
        return [self.jobs[positions[0]] for positions in self._positions.values()]

    def _wait_stored(self, position: int, timeout: float | None = None) -> None:
        """Wait until the task at ``position`` is done and its items are stored."""
        job = self.jobs[position]
        concurrent.futures.wait([job], timeout=timeout)
        with self._settled:
            # done callbacks run right after a job is done: this wait is short
            if not self._settled.wait_for(lambda: self._stored[position], timeout=10):
                raise concurrent.futures.TimeoutError(
                    f"task {job.id} finished but its items were not stored"
                )

    def _all_succeeded(self, position: int) -> bool:
        """Whether every item of the (stored) task at ``position`` has its value."""
        return not (self._task_cancelled[position] or self._task_has_failures[position])

    def _item_error(self, position: int, index: int) -> BaseException | None:
        if self._task_cancelled[position]:
            return CancelledError(f"item {index} of {self.call_repr} was cancelled")
        return self._errors.get(index)

    def _item_future(self, position: int, index: int) -> concurrent.futures.Future:
        """A done Future holding one item's outcome."""
        future: concurrent.futures.Future = concurrent.futures.Future()
        if self._task_cancelled[position]:
            future.cancel()
            return future
        error = self._errors.get(index)
        if error is not None:
            future.set_exception(error)
        else:
            future.set_result(self._values[index])
        return future
