"""Kernel side: a submitted task as a ``concurrent.futures.Future``."""

from __future__ import annotations

import json
import logging
import reprlib
import threading
import time
from concurrent.futures import Future, InvalidStateError
from dataclasses import replace
from datetime import datetime, timezone
from typing import Any

from celery import states

from ._byref import unpack
from ._call_options import CallOptions, time_limit_note, waiting_note
from ._config import SHIPPED_TASK_NAME
from ._datastore import Progress
from ._errors import (
    MessageLostError,
    RemoteError,
    RemoteTraceback,
    ShippedTaskError,
    UntrustedResultError,
    WorkerLostError,
)
from ._future import WatchedFuture, monotonic_of
from ._liveness import UNKNOWN_NOTE
from ._output import Entry
from ._output_log import OutputLog, OutputTail
from ._payload import loads
from ._remote_errors import exception_from_info
from ._scatter import resolving
from ._schema import (
    FINAL_OUTPUT_KEY,
    LOST,
    OUTPUT_KEY,
    PROGRESS,
    REQUEUED,
    RUN_KEY,
    UNKNOWN,
    BarSnapshot,
    ProgressSnapshot,
    acceptable_state,
    parse_meta,
)
from ._signing import Opened, is_envelope, open_envelope
from ._sources import UNDECODABLE
from ._store import JobRecord

log = logging.getLogger(__name__)

MAX_RUNS = 3  # runs of a re-queued task that each lost its worker, before it is stopped
MAX_NAME = 200  # characters of a task name learnt from the backend or a worker
_short = reprlib.Repr()
_short.maxstring = _short.maxother = 80


def placeholder_name(task_id: str) -> str:
    """How a task is called while nothing better is known: ``task 1a2b3c4d``."""
    return f"task {task_id[:8]}"


def date_done(value: Any) -> float | None:
    """Celery's ``date_done`` (an ISO time with its offset) as a wall-clock time, or None
    (missing, or without a UTC offset: then which clock it was is unknown)."""
    if not isinstance(value, str):
        return None
    try:
        moment = datetime.fromisoformat(value)
    except ValueError:
        return None
    return moment.timestamp() if moment.tzinfo is not None else None


def _run_of(state: str, meta: dict[str, Any]) -> tuple[str, int] | None:
    """(hostname, pid) of the process a STARTED state comes from, else None."""
    info = meta.get("result")
    if state != states.STARTED or not isinstance(info, dict):
        return None
    hostname, pid = info.get("hostname"), info.get("pid")
    return (str(hostname), int(pid)) if hostname and isinstance(pid, int) else None


# Order in which non-final states may follow each other; a late message of an
# earlier state (catch-up racing pub/sub) must not move a job backwards.
_ORDER = {states.PENDING: 0, states.RECEIVED: 1, states.STARTED: 2, PROGRESS: 3}


def _let_go_of_the_call(job: Any) -> None:
    """A job that succeeded will not be retried: let go of its call (its arguments).
    Nor will one whose call carried scattered references: holding them would keep
    their data in the store for as long as the job is kept."""
    if job._carries_scattered:
        job._call = None
        job._no_retry = "its call carried scattered data, let go of when it ended"
    elif not job.cancelled() and job.exception(timeout=0) is None:
        job._call = None


class _Unverified(Exception):
    """A final state that does not carry a valid signature for a shipped job."""


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
        # A task name is one printable line; celerynb's own generic task names nothing.
        if not isinstance(name, str) or not name.isprintable() or len(name) > MAX_NAME:
            return
        if name in ("", SHIPPED_TASK_NAME):
            return
        with self._lock:
            if self.named:
                return
            self.named = True
            if self.call_repr == self.name:
                self.call_repr = name
            self.name = name
        self._notify()

    def _apply_meta(self, meta: dict[str, Any], live: bool = False) -> None:
        """Take a state read from the backend. ``live``: it was just written (not a
        read-back), so a change it brings is news that the worker is alive."""
        state = meta.get("status", states.PENDING)
        if not acceptable_state(state, custom=self._shipped is not True):
            self._ignore(f"a state that is not a Celery state ({_short.repr(state)})")
            return
        if not self.named:
            self._learn_name(meta.get("name"))
        if self._shipped is True:
            self._take_signed_run(meta.get("result"))
        if state == states.RETRY and self._shipped is True and not self._signed_error(meta):
            # A retry says the call failed and runs again: for a shipped job, only on its
            # worker's signed word
            what = _short.repr(str(meta.get("result")))
            self._ignore(f"an unsigned {state} ({what})")
            return
        outcome: tuple[str, Any] | None = None
        if state in states.READY_STATES:
            try:
                outcome = self._outcome(state, meta)
            except _Unverified as why:
                self._ignore(str(why))
                return
        if state in (PROGRESS, states.SUCCESS) and self._take_output(state, meta.get("result")):
            self._notify()  # even for a state that moves nothing else (a late one)
        too_many_runs = False
        with self._lock:
            if self.done():
                late = outcome is not None and self.watch_after_done
                if late:  # its worker came back after all
                    self._late_outcome = True
                    self._notes["worker"] = (
                        f"the task ended {state} after it was marked LOST: "
                        f"celerynb.attach({self.id!r}) follows it"
                    )
            else:
                late = None  # not done: go on below
        if late is not None:
            if late:
                self._notify()
            return
        with self._lock:
            if self.done():  # finished meanwhile (cancelled, abandoned)
                return
            current = self._snapshot
            run = _run_of(state, meta)
            rerun = False
            if run is not None and run not in self._runs:
                rerun = bool(self._runs)
                self._runs.append(run)
            if rerun:  # a STARTED from another process: the task runs again (re-queued)
                too_many_runs = self.requeued_if_worker_lost and len(self._runs) > MAX_RUNS
            elif state not in states.READY_STATES and not self._moves_forward(current, state, meta):
                return
            self._snapshot = parse_meta(state, meta.get("result"), current)
            if state != states.PENDING:
                self._notes.pop("queue", None)  # a worker took it
            if live and (state != current.state or self._snapshot.updated != current.updated):
                self._news_at = time.monotonic()
            if state == states.SUCCESS and not self._session.watcher.sees_every_update:
                self._snapshot = self._snapshot.completed()
            if state == PROGRESS:
                self._progress_updates += 1
        if state != states.PENDING and self._session.backend_caveat is not None:
            self._session.backend_caveat = None  # a worker does write to this backend
        if too_many_runs:
            self._stop_redelivery_loop()
            return
        if outcome is not None:
            # A verified outcome: an unsigned entry ignored before (e.g. the REVOKED that
            # Celery's revoke command writes for a task still queued) is moot now.
            self._notes.pop("entry", None)
            self._settle(*outcome, done_at=meta.get("date_done"))
        self._notify()

    def _take_output(self, state: str, result: Any) -> bool:
        """Merge the output lines a PROGRESS meta (or a shipped call's SUCCESS) carries;
        True when some were new. A late or repeated batch adds only lines not seen yet
        (they are numbered)."""
        key = OUTPUT_KEY if state == PROGRESS else FINAL_OUTPUT_KEY
        batch = result.get(key) if isinstance(result, dict) else None
        if batch is None:
            return False
        with self._lock:
            return bool(self._output.merge(batch))

    @property
    def note(self) -> str | None:
        """Why the job is not where one would expect, when celerynb knows; else None."""
        notes = []
        outage = None if self.done() else self._session.watcher.outage_note
        if outage:
            notes.append(outage)
        now = datetime.now(timezone.utc)
        if self.cancelled():
            notes.append(self._session.revoke_note(self.id))
            notes.append(waiting_note(self.call_options, self._sent_wall, now, ended=True))
        state = self.state
        if state in (states.PENDING, UNKNOWN) and self._unfollowed_note:
            notes.append(self._unfollowed_note)
        elif state == UNKNOWN:
            notes.append(UNKNOWN_NOTE)
        if state == states.PENDING:
            notes.append(self._session.backend_caveat)
            notes.append(waiting_note(self.call_options, self._sent_wall, now))
        if state == states.FAILURE:
            notes.append(time_limit_note(self.call_options, self._exception))
        notes += self._notes.values()
        return "; ".join(note for note in notes if note) or None

    @property
    def worker_run(self) -> tuple[str, int | None] | None:
        """(hostname, pid) of the process running the task, for judging whether it lives:
        for a shipped job only the run its worker signed (a forged progress entry naming
        some worker must not make it LOST); else what its states say."""
        if self._shipped is True:
            return self._vouched_run
        hostname = self._snapshot.hostname
        return (hostname, self._snapshot.pid) if hostname else None

    def _take_signed_run(self, result: Any) -> None:
        run = result.get(RUN_KEY) if isinstance(result, dict) else None
        if not isinstance(run, dict) or run.get("frame") == self._vouched_run_mac:
            return  # none, or the same run again (every progress write carries it)
        try:
            opened = open_envelope(run, secret=self._session.secret, purpose="run", task_id=self.id)
            info = json.loads(opened.segments[0].tobytes())
            self._vouched_run = (str(info["hostname"]), int(info["pid"]))
            self._vouched_run_mac = run["frame"]
        except Exception:  # unsigned or forged: not a run this kernel can judge by
            return

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

    def _ignore(self, what: str) -> None:
        """An entry from the backend that does not count: note it (one log line per job)."""
        if self.done():
            return
        note = f"ignored {what} found in the result backend"
        if "entry" not in self._notes:
            log.warning("celerynb: job %s: %s", self.id, note)
        self._set_note("entry", note)

    def _stop_redelivery_loop(self) -> None:
        """The task started ``MAX_RUNS + 1`` times: each run lost its worker and the app
        re-queued it. Revoke it so no worker takes it again, and fail (as dask's
        KilledWorker does) instead of letting it kill workers forever."""
        self._session.revoke(self.id, shipped=self._shipped is True)
        where = ", ".join(f"{host} pid {pid}" for host, pid in self._runs[:-1])
        self._abandon(
            WorkerLostError(
                f"task {self.id} lost its worker {len(self._runs) - 1} times ({where}) and was "
                "re-queued each time; stopped and revoked so it cannot kill more workers"
            )
        )

    @staticmethod
    def _moves_forward(current: ProgressSnapshot, state: str, meta: dict[str, Any]) -> bool:
        if state == states.RETRY:
            return True
        if _ORDER.get(state, 0) < _ORDER.get(current.state, 0):
            return False
        if state == PROGRESS and current.state == PROGRESS:
            result = meta.get("result")
            updated = result.get("updated") if isinstance(result, dict) else None
            if updated is not None and current.updated is not None:
                return updated >= current.updated
        return True

    def _outcome(self, state: str, meta: dict[str, Any]) -> tuple[str, Any]:
        """``("value", v)``, ``("error", e)`` or ``("cancel", None)`` for a final state.

        For a shipped job (or an attached one whose entry claims to be signed) only
        an outcome signed for this task counts: anything else raises ``_Unverified``.
        A signed entry that cannot be opened (a version mismatch) is the job's error.
        """
        result = meta.get("result")
        if meta.get(UNDECODABLE) and self._shipped is True:  # garbage can be written by anyone
            raise _Unverified(f"an entry that cannot be decoded ({result})")
        signed = self._shipped is True or (
            self._shipped is None and (is_envelope(result) or isinstance(result, ShippedTaskError))
        )
        if not signed:
            if state == states.REVOKED:
                return ("cancel", None)
            if state == states.SUCCESS:
                return ("value", result)
            return ("error", self._plain_error(result, meta.get("traceback")))
        secret = self._session.secret
        try:
            if state == states.SUCCESS:
                opened = open_envelope(result, secret=secret, purpose="result", task_id=self.id)
                if opened.ref is not None:  # big: read from the data store, off this thread
                    return ("fetch", opened)
                with resolving(secret, self._session.store_for):
                    return ("value", loads(opened.segments))
            opened = self._open_error(result)
            if state == states.REVOKED:
                return ("cancel", None)
            return ("error", exception_from_info(opened.segments[0], self._code))
        except UntrustedResultError as exc:
            what = _short.repr(getattr(result, "summary", None) or str(result))
            raise _Unverified(f"an unsigned {state} ({what}: {exc})") from None
        except Exception as exc:  # verified, but cannot be opened here
            return ("error", exc)

    def _open_error(self, result: Any) -> Any:
        """The error envelope ``result`` carries, opened: signed for this task by its
        worker (raises ``UntrustedResultError`` otherwise)."""
        envelope = result.envelope if isinstance(result, ShippedTaskError) else None
        secret = self._session.secret
        return open_envelope(envelope, secret=secret, purpose="error", task_id=self.id)

    def _signed_error(self, meta: dict[str, Any]) -> bool:
        """Whether ``meta`` carries an error its worker signed for this task."""
        try:
            self._open_error(meta.get("result"))
        except Exception:
            return False
        return True

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
        ref = reference.ref or {}
        try:
            opened = unpack(
                reference,
                secret=session.secret,
                purpose="result",
                task_id=self.id,
                store_for=session.store_for,
                progress=self._transfer_progress("receiving the result", int(ref["size"])),
            )
            with resolving(session.secret, session.store_for):
                outcome: tuple[str, Any] = ("value", loads(opened.segments))
            del opened
        except Exception as exc:  # gone, tampered, unreachable: the job says which
            outcome = ("error", exc)
        self._settle(*outcome, done_at)
        self._notify()
        store = session.store_for(ref["store"]) if isinstance(ref.get("store"), str) else None
        if store is not None:
            try:
                store.delete([ref["key"]])
            except Exception as exc:  # it expires anyway
                log.debug("celerynb: could not remove the result of %s: %s", self.id, exc)

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

    def _lose(self, hostname: str, silent_for: float) -> None:
        """The worker running this job stopped sending heartbeats: finish as LOST, or,
        for a task its app re-queues, show REQUEUED and follow its next run."""
        with self._lock:
            if self.done():
                return
            requeued = self.requeued_if_worker_lost
            self._snapshot = self._snapshot.with_state(REQUEUED if requeued else LOST)
        if requeued:
            self._notify()
            return
        silence = f"{silent_for:.0f}s ago" if silent_for else "(never heard here)"
        if self._send_again_when_lost(f"lost with worker {hostname}"):
            return
        self._abandon(
            WorkerLostError(
                f"worker {hostname} stopped sending heartbeats {silence} and answers no ping "
                f"while running task {self.id}: it was killed or cut off, so the task will "
                "not finish there (an app with acks_late may re-queue it; should it finish "
                f"after all, celerynb.attach({self.id!r}) follows it)"
            )
        )

    def _lose_message(self) -> None:
        """The broker restarted without its data while the task waited in a queue: its
        message is gone and it will not run. Finish as LOST, saying so."""
        with self._lock:
            if self.done() or self._snapshot.state != states.PENDING:
                return
            self._snapshot = self._snapshot.with_state(LOST)
        if self._send_again_when_lost("its message was lost with the broker's data"):
            return
        self._abandon(
            MessageLostError(
                f"task {self.id} was waiting in a queue when the broker restarted without "
                "its data (no persistence): its message is gone and it will not run; "
                "submit it again"
            )
        )

    def _send_again_when_lost(self, why: str) -> bool:
        """For a job sent with ``retry_lost``: send it again (on a transfer thread, not
        the watcher's) instead of finishing it LOST; True when it is sent again."""
        options = self.call_options
        with self._lock:
            if options is None or self._call is None or self._lost_runs >= options.retry_lost:
                return False
            self._lost_runs += 1
            note = f"{why}: sent again ({self._lost_runs} of {options.retry_lost})"
        self._session.transfers.run(lambda: self._rerun(keep_note=note))
        return True

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

    @staticmethod
    def _plain_error(error: Any, traceback_text: str | None) -> BaseException:
        """The exception of a registered task's FAILURE (Celery rebuilt it, or a text)."""
        if not isinstance(error, BaseException):
            error = RemoteError(str(error))
        if traceback_text:
            error.__cause__ = RemoteTraceback(str(traceback_text))
        return error
