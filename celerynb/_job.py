"""Kernel side: a submitted task as a ``concurrent.futures.Future``."""

from __future__ import annotations

import threading
import time
from concurrent.futures import Future, InvalidStateError
from typing import Any

import cloudpickle
from celery import states

from ._errors import RemoteError, RemoteTraceback, ShippedTaskError
from ._future import WatchedFuture
from ._liveness import LOST, REQUEUED, UNKNOWN, WorkerLostError
from ._schema import PROGRESS, ProgressSnapshot, parse_meta
from ._signing import is_envelope, open_envelope
from ._store import JobRecord
from ._tracebacks import restore_sources, source_map

MAX_RUNS = 3  # runs of a re-queued task that each lost its worker, before it is stopped


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
        self._progress_updates = 0
        self.attached = False  # watched by id (attach), not submitted by this kernel
        self.requeued_if_worker_lost = False  # acks_late + reject_on_worker_lost
        self._runs: list[tuple[str, int]] = []  # (hostname, pid) of each STARTED seen
        self.asked_workers = False

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
    def async_result(self) -> Any:
        """Celery's ``AsyncResult`` for this task."""
        return self._session.app.AsyncResult(self.id)

    def cancel(self) -> bool:
        """Revoke the task (terminating it where the pool allows); False if already done."""
        if self.done():
            return False
        self._session.revoke(self.id)
        return self._finish_cancelled()

    # -- fed by the watcher ---------------------------------------------------
    def _apply_meta(self, meta: dict[str, Any]) -> None:
        state = meta.get("status", states.PENDING)
        too_many_runs = False
        with self._lock:
            if self.done():
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
            if state == states.SUCCESS and not self._session.watcher.sees_every_update:
                self._snapshot = self._snapshot.completed()
            if state == PROGRESS:
                self._progress_updates += 1
        if too_many_runs:
            self._stop_redelivery_loop()
            return
        if state in states.READY_STATES:
            self._settle(state, meta)
        self._notify()

    def _stop_redelivery_loop(self) -> None:
        """The task started ``MAX_RUNS + 1`` times: each run lost its worker and the app
        re-queued it. Revoke it so no worker takes it again, and fail (as dask's
        KilledWorker does) instead of letting it kill workers forever."""
        self._session.revoke(self.id)
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

    def _settle(self, state: str, meta: dict[str, Any]) -> None:
        if state == states.REVOKED:
            self._finish_cancelled()
            return
        try:
            if state == states.SUCCESS:
                value = self._decode_value(meta.get("result"))
                self._finished_at = time.monotonic()
                self.set_result(value)
            else:
                error = self._decode_error(meta.get("result"), meta.get("traceback"))
                self._finished_at = time.monotonic()
                self.set_exception(error)
        except InvalidStateError:
            pass
        except Exception as exc:  # untrusted or undecodable result
            self._finished_at = time.monotonic()
            try:
                self.set_exception(exc)
            except InvalidStateError:
                pass

    def _finish_cancelled(self) -> bool:
        with self._lock:
            if not Future.cancel(self):
                return False
            self.set_running_or_notify_cancel()
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
        self._abandon(
            WorkerLostError(
                f"worker {hostname} stopped sending heartbeats {silent_for:.0f}s ago while "
                f"running task {self.id}: it was killed or cut off, so the task will not "
                "finish there (an app with acks_late may re-queue it)"
            )
        )

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

    def _decode_value(self, result: Any) -> Any:
        if not self._shipped and not (self._shipped is None and is_envelope(result)):
            return result
        data = open_envelope(result, secret=self._session.secret, purpose="result", task_id=self.id)
        return cloudpickle.loads(data)

    def _decode_error(self, error: Any, traceback_text: str | None) -> BaseException:
        if self._shipped is not False and isinstance(error, ShippedTaskError):
            data = open_envelope(
                error.envelope, secret=self._session.secret, purpose="error", task_id=self.id
            )
            return exception_from_info(data, self._code)
        if not isinstance(error, BaseException):
            error = RemoteError(str(error))
        if traceback_text:
            error.__cause__ = RemoteTraceback(traceback_text)
        return error


def exception_from_info(data: bytes, code: Any = None) -> BaseException:
    """Rebuild a worker's exception from its pickled info (see ``_runner``), with the
    remote traceback (source lines restored from ``code``) as its cause."""
    info = cloudpickle.loads(data)
    rebuilt: BaseException | None = None
    if info.get("exc") is not None:
        try:
            rebuilt = cloudpickle.loads(info["exc"])
        except Exception:
            rebuilt = None
    if not isinstance(rebuilt, BaseException):
        rebuilt = RemoteError(f"{info.get('type')}: {info.get('message')}")
    tb_text = restore_sources(info.get("tb", ""), source_map(code))
    rebuilt.__cause__ = RemoteTraceback(tb_text)
    return rebuilt
