"""Kernel side: a submitted task as a ``concurrent.futures.Future``."""

from __future__ import annotations

import logging
import threading
import time
from concurrent.futures import Future, InvalidStateError
from dataclasses import replace
from datetime import datetime, timezone
from typing import Any

from celery import states

from ._call_options import CallOptions
from ._datastore import Progress
from ._future import WatchedFuture, monotonic_of
from ._job_outcome import fetch_outcome, remove_fetched
from ._job_states import date_done, is_task_name, job_note, placeholder_name
from ._job_updates import apply_meta, lose, lose_message
from ._output import Entry
from ._output_log import OutputLog, OutputTail
from ._registry import registry
from ._schema import LOST, UNKNOWN, BarSnapshot, ProgressSnapshot
from ._signing import Opened
from ._store import JobRecord, store

# placeholder_name: re-exported, the session takes it from here.
__all__ = ["Job", "placeholder_name"]

log = logging.getLogger(__name__)


def _let_go_of_the_call(job: Any) -> None:
    """A job that succeeded will not be retried: let go of its call (its arguments).
    Nor will one whose call carried scattered references: holding them would keep
    their data in the store for as long as the job is kept."""
    if job._carries_scattered:
        job._drop_call("its call carried scattered data, let go of when it ended")
    elif not job.cancelled() and job.exception(timeout=0) is None:
        job._call = None


class Job(WatchedFuture):
    """A task running on Celery workers, watched live.

    A ``concurrent.futures.Future``: ``done()``, ``result(timeout)``,
    ``exception()``, ``add_done_callback``, ``cancel()``, and it works with
    ``concurrent.futures.wait``/``as_completed``. It can be awaited in a cell.
    Displaying it in Jupyter shows a live progress widget.
    """

    def __init__(
        self,
        task_id: str,
        name: str,
        session: Any,
        *,
        shipped: bool | None,
        call_repr: str = "",
        code: Any = None,
    ) -> None:
        super().__init__()
        self.id = task_id
        self.name = name
        self.call_repr = call_repr or name
        self._session = session
        self._shipped = shipped
        self._code = code  # the shipped callable, to restore source lines in its traceback
        self._snapshot = ProgressSnapshot()
        self._lock = threading.Lock()
        self._output = OutputLog()
        self._progress_updates = 0
        self.attached = False  # watched by id (attach), not submitted by this kernel
        self.queue: str | None = None  # where it was sent, when this kernel sent it
        self.requeued_if_worker_lost = False  # acks_late + reject_on_worker_lost
        self.acks_late = False  # its message may be sent again when its worker stops
        self._runs: list[tuple[str, int]] = []  # (hostname, pid) of each STARTED seen
        self.asked_workers = False
        self._late_outcome = False  # a final state came after the job was marked LOST
        self._notes: dict[str, str] = {}  # topic -> what is odd about this job now
        self._news_at: float | None = None  # when a live update last moved the job
        self._unfollowed_note: str | None = None  # why no state may ever come (rpc://)
        self._vouched_run: tuple[str, int] | None = None  # a shipped call's signed run
        self._vouched_run_mac: str | None = None  # its signature, verified once
        self._receiving = False  # a big result is being read from the data store
        self._cancel_claimed = False  # a _finish_cancelled call is cancelling it
        self.named = True  # False: shown as ``task 1a2b3c4d`` until its name is found
        self.asked_for_name = False
        self.call_options: CallOptions | None = None  # Celery's options it was sent with
        # What retry() sends again (set by the session that sent it; dropped on success).
        self._call: tuple[Any, ...] | None = None
        self._lost_runs = 0  # times it was sent again after being lost (retry_lost)
        self._group: Any = None  # the JobGroup it is a task of: its retries go through it
        self._carries_scattered = False
        self._no_retry = "it was not sent by this kernel: its call is not known here"
        self.add_done_callback(_let_go_of_the_call)
        self._sent_wall = datetime.now(timezone.utc)

    # -- public state ---------------------------------------------------------
    @property
    def state(self) -> str:
        """Celery's state name: PENDING, STARTED, PROGRESS, SUCCESS, FAILURE, REVOKED..."""
        return self._snapshot.state

    @property
    def progress(self) -> ProgressSnapshot:
        """The latest progress snapshot (n, total, desc, rate, elapsed, eta, percent)."""
        return self._snapshot

    @property
    def output(self) -> OutputTail:
        """What the task printed and logged so far: its last 1,000 lines (256 KiB) as
        ``(stream, text)`` (``stdout``, ``stderr``, ``log``), in order, and how many
        lines before or between them were ``dropped``. Updated live."""
        with self._lock:
            return self._output.tail()

    def _output_since(self, mark: int) -> tuple[list[Entry], int, int]:
        """The lines received after the first ``mark``, how many of them are gone, and
        the new mark (for a group that shows its tasks' lines)."""
        with self._lock:
            entries, missed = self._output.since(mark)
            return entries, missed, self._output.received

    @property
    def async_result(self) -> Any:
        """Celery's ``AsyncResult`` for this task."""
        return self._session.app.AsyncResult(self.id)

    def cancel(self) -> bool:
        """Revoke the task (terminating it where the pool allows); False if already done."""
        if self.done():
            return False
        self._session.revoke(self.id, shipped=self._shipped is True, on_change=self._notify)
        return self._finish_cancelled()

    def retry(self) -> Job:
        """Run a failed (or lost) job's call again, as this same job: same id, same
        widget, back to PENDING; its result is the new run's. Returns the job.

        Raises:
            RuntimeError: it is not finished, it succeeded, or this kernel did not send
                it (an attached job: its call is not known here).
        """
        with self._lock:
            if self._group is not None:
                raise RuntimeError(
                    f"job {self.id} is a task of {self._group.call_repr}: use its retry_failed()"
                )
            if not self.done():
                raise RuntimeError(f"job {self.id} is still running: nothing to retry")
            if self.cancelled():  # workers keep revoked ids for hours: it would not run
                raise RuntimeError(f"job {self.id} was cancelled: submit it again")
            if self._exception is None:
                raise RuntimeError(f"job {self.id} succeeded: nothing to retry")
            if self._call is None:
                raise RuntimeError(f"job {self.id} cannot run again: {self._no_retry}")
        return self._rerun()

    def _drop_call(self, why: str) -> None:
        """Let go of the call (its arguments): the job cannot run again, ``why`` says why."""
        self._call = None
        self._no_retry = why

    def _rerun(self, keep_note: str | None = None) -> Job:
        """Send ``_call`` again as this job (checked by the caller: call known);
        ``keep_note`` says why on the job from then on."""
        with self._lock:
            self._reset()
            if keep_note:
                self._notes["sent again"] = keep_note
        try:
            self._session.app.backend.forget(self.id)  # its old outcome must not end it again
        except Exception as exc:
            log.debug("celerynb: could not forget the old outcome of %s: %s", self.id, exc)
        self._notify()
        try:
            self._session.resend(self)
        except Exception as exc:  # not sent: it ends with why, never waits forever
            self._abandon(exc)
            raise
        return self

    def _reset(self) -> None:
        """Back to a job just sent (called with ``_lock`` held, the job done)."""
        self._reopen()
        self._snapshot = ProgressSnapshot()
        self._sent_wall = datetime.now(timezone.utc)
        self._runs, self._notes, self._news_at = [], {}, None
        self._late_outcome = self._receiving = self._cancel_claimed = False
        self._vouched_run = self._vouched_run_mac = None
        self._progress_updates = 0

    # -- fed by the watcher ---------------------------------------------------
    def _learn_name(self, name: Any) -> None:
        """Take the task's name, found in its stored state (``result_extended``) or in a
        worker's answer, when none was known (an id attached from elsewhere)."""
        if not is_task_name(name):
            return
        with self._lock:
            if self.named:
                return
            self.named = True
            if self.call_repr == self.name:
                self.call_repr = name
            self.name = name
        if self.id in registry:  # kept for this notebook: kept under its name from now on
            store.rename(self.id, name)
        self._notify()

    def _apply_meta(self, meta: dict[str, Any], live: bool = False) -> None:
        """Take a state read from the backend. ``live``: it was just written (not a
        read-back), so a change it brings is news that the worker is alive."""
        apply_meta(self, meta, live)

    @property
    def note(self) -> str | None:
        """Why the job is not where one would expect, when celerynb knows; else None."""
        session = self._session
        outage = None if self.done() else session.watcher.outage_note
        now = datetime.now(timezone.utc)
        cancelled = self.cancelled()
        return job_note(
            self.state,
            outage=outage,
            cancelled=cancelled,
            revoke_note=session.revoke_note(self.id) if cancelled else None,
            unfollowed=self._unfollowed_note,
            backend_caveat=session.backend_caveat,
            options=self.call_options,
            sent_wall=self._sent_wall,
            now=now,
            error=self._exception,
            notes=self._notes.values(),
        )

    @property
    def worker_run(self) -> tuple[str, int | None] | None:
        """(hostname, pid) of the process running the task, for judging whether it lives:
        for a shipped job only the run its worker signed (a forged progress entry naming
        some worker must not make it LOST); else what its states say."""
        if self._shipped is True:
            return self._vouched_run
        hostname = self._snapshot.hostname
        return (hostname, self._snapshot.pid) if hostname else None

    @property
    def watch_after_done(self) -> bool:
        """True for a job finished as LOST: its worker may still finish the task, and
        the watcher keeps listening so that the late outcome is told."""
        return self.state == LOST and not self._late_outcome

    def news_age(self, now: float) -> float | None:
        """Seconds since a live update last moved this job (None: none yet)."""
        return None if self._news_at is None else now - self._news_at

    def _set_note(self, topic: str, text: str | None) -> None:
        """Say (or, with None, stop saying) what is odd about this job, by topic."""
        with self._lock:
            if self._notes.get(topic) == text:
                return
            if text is None:
                del self._notes[topic]
            else:
                self._notes[topic] = text
        self._notify()

    def _not_followed(self, why: str) -> None:
        """No state of this task will reach this kernel (e.g. rpc:// replies that go to
        another client): show UNKNOWN and why, at once; a state that comes still wins."""
        self._unfollowed_note = why
        self._mark_unknown()

    def _settle(self, kind: str, value: Any, done_at: Any = None) -> None:
        if kind == "fetch":
            with self._lock:
                receiving, self._receiving = self._receiving, True
            if not receiving:  # the same SUCCESS may be read twice (catch-up and push)
                self._session.transfers.run(lambda: self._receive(value, done_at))
            return
        if kind == "cancel":
            self._finish_cancelled()
            return
        now = time.monotonic()
        stored = date_done(done_at)
        if self._counted_from_store and stored is not None:
            # Submitted by an earlier kernel, maybe finished long before this one looked:
            # its elapsed time ends when the worker stored the outcome.
            now = min(max(monotonic_of(stored), self._submitted_at), now)
        with self._lock:
            if self.done():  # cancelled meanwhile (a group's cancel): this outcome is too late
                return
            self._finished_at = now
        try:
            if kind == "value":
                self.set_result(value)
            else:
                self.set_exception(value)
        except InvalidStateError:
            pass

    def _receive(self, reference: Opened, done_at: Any) -> None:
        """Read a big result from the data store (on a transfer thread), then settle. The
        stored data is removed once read, whether it opened or not (tampered data never
        will), and expires if it cannot be."""
        session = self._session
        with self._lock:
            bars = self._snapshot.bars  # the task's own, shown again once it is here

        def progress(size: int) -> Progress:
            return self._transfer_progress("receiving the result", size)

        outcome = fetch_outcome(reference, session=session, task_id=self.id, progress=progress)
        with self._lock:
            self._snapshot = replace(self._snapshot, bars=bars)
        self._settle(*outcome, done_at)
        self._notify()
        remove_fetched(reference, session=session, task_id=self.id)

    def _transfer_progress(self, desc: str, total: int) -> Progress:
        """A callback showing a transfer of ``total`` bytes as the job's bar."""
        started = time.monotonic()

        def moved(done: int) -> None:
            elapsed = max(time.monotonic() - started, 1e-6)
            bar = BarSnapshot(done, total, desc, "B", done / elapsed, elapsed)
            with self._lock:
                if self.done():
                    return
                self._snapshot = replace(self._snapshot, bars=(bar,))
            self._notify()

        return moved

    def _finish_cancelled(self) -> bool:
        """Cancel here; True for the one call that did (a revoke's REVOKED may arrive
        while a group's cancel runs: whichever comes second is a no-op)."""
        with self._lock:
            if self.done() or self._cancel_claimed:
                return False
            self._cancel_claimed = True
        # Not under _lock: cancel() runs the done callbacks, and a group's takes the
        # group's lock, whose holder may be waiting for this one (_take_output_of).
        if not Future.cancel(self):  # an outcome was set meanwhile: it stands
            return False
        self.set_running_or_notify_cancel()
        with self._lock:
            self._finished_at = time.monotonic()
            self._snapshot = self._snapshot.with_state(states.REVOKED)
        self._notify()
        return True

    def _record(self) -> JobRecord:
        return JobRecord(self.id, self.name, self._shipped)  # never call_repr: it shows arguments

    def _mark_unknown(self) -> None:
        """Still PENDING, but nobody has the task: show UNKNOWN (a later state wins)."""
        with self._lock:
            if self.done() or self._snapshot.state != states.PENDING:
                return
            self._snapshot = self._snapshot.with_state(UNKNOWN)
        self._notify()

    def _lose(self, hostname: str, silent_for: float, why: str | None = None) -> None:
        """The worker running this job stopped sending heartbeats (or ``why``: it was
        stopped): finish as LOST, or, for a task its app re-queues, show REQUEUED and
        follow its next run."""
        lose(self, hostname, silent_for, why)

    def _lose_message(self) -> None:
        """The broker restarted without its data while the task waited in a queue: its
        message is gone and it will not run. Finish as LOST, saying so."""
        lose_message(self)

    def _abandon(self, error: BaseException) -> None:
        """Finish with ``error``: nothing will report on this job any more."""
        with self._lock:
            if self.done():
                return
            self._finished_at = time.monotonic()
        try:
            self.set_exception(error)
        except InvalidStateError:
            return
        self._notify()
