"""Kernel side: a submitted task as a ``concurrent.futures.Future``."""

from __future__ import annotations

import asyncio
import reprlib
import threading
import time
from collections.abc import Callable, Generator
from concurrent.futures import Future, InvalidStateError
from typing import Any

import cloudpickle
from celery import states

from ._errors import RemoteError, RemoteTraceback, ShippedTaskError
from ._schema import PROGRESS, ProgressSnapshot, parse_meta
from ._signing import open_envelope
from ._tracebacks import restore_sources, source_map

# Order in which non-final states may follow each other; a late message of an
# earlier state (catch-up racing pub/sub) must not move a job backwards.
_ORDER = {states.PENDING: 0, states.RECEIVED: 1, states.STARTED: 2, PROGRESS: 3}


class Job(Future):
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
        shipped: bool,
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
        self._submitted_at = time.monotonic()
        self._finished_at: float | None = None
        self._listeners: list[Callable[[Job], None]] = []
        self._lock = threading.Lock()
        self._progress_updates = 0
        self._shown_in_cell: int | None = None

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

    @property
    def elapsed(self) -> float:
        """Seconds since submission, frozen once the job is done."""
        end = self._finished_at if self._finished_at is not None else time.monotonic()
        return end - self._submitted_at

    def cancel(self) -> bool:
        """Revoke the task (terminating it where the pool allows); False if already done."""
        if self.done():
            return False
        self._session.revoke(self.id)
        return self._finish_cancelled()

    def __await__(self) -> Generator[Any, None, Any]:
        return asyncio.wrap_future(self).__await__()

    # -- listeners (display) --------------------------------------------------
    def add_listener(self, listener: Callable[[Job], None]) -> None:
        """Call ``listener(job)`` from the watcher thread on every change."""
        self._listeners.append(listener)

    def remove_listener(self, listener: Callable[[Job], None]) -> None:
        if listener in self._listeners:
            self._listeners.remove(listener)

    def _notify(self) -> None:
        for listener in list(self._listeners):
            try:
                listener(self)
            except Exception:  # a broken display must not stop the watcher
                pass

    # -- fed by the watcher ---------------------------------------------------
    def _apply_meta(self, meta: dict[str, Any]) -> None:
        state = meta.get("status", states.PENDING)
        with self._lock:
            if self.done():
                return
            current = self._snapshot
            if state not in states.READY_STATES and not self._moves_forward(current, state, meta):
                return
            self._snapshot = parse_meta(state, meta.get("result"), current)
            if state == PROGRESS:
                self._progress_updates += 1
        if state in states.READY_STATES:
            self._settle(state, meta)
        self._notify()

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
        if not self._shipped:
            return result
        data = open_envelope(result, secret=self._session.secret, purpose="result", task_id=self.id)
        return cloudpickle.loads(data)

    def _decode_error(self, error: Any, traceback_text: str | None) -> BaseException:
        if self._shipped and isinstance(error, ShippedTaskError):
            data = open_envelope(
                error.envelope, secret=self._session.secret, purpose="error", task_id=self.id
            )
            info = cloudpickle.loads(data)
            rebuilt: BaseException | None = None
            if info.get("exc") is not None:
                try:
                    rebuilt = cloudpickle.loads(info["exc"])
                except Exception:
                    rebuilt = None
            if not isinstance(rebuilt, BaseException):
                rebuilt = RemoteError(f"{info.get('type')}: {info.get('message')}")
            tb_text = restore_sources(info.get("tb", ""), source_map(self._code))
            rebuilt.__cause__ = RemoteTraceback(tb_text)
            return rebuilt
        if not isinstance(error, BaseException):
            error = RemoteError(str(error))
        if traceback_text:
            error.__cause__ = RemoteTraceback(traceback_text)
        return error

    @property
    def remote_traceback(self) -> str | None:
        """The worker's traceback text when the job failed, else None."""
        if not self.done() or self.cancelled():
            return None
        error = self.exception(timeout=0)
        cause = getattr(error, "__cause__", None)
        return cause.tb if isinstance(cause, RemoteTraceback) else None

    # -- display --------------------------------------------------------------
    def status_line(self) -> str:
        """One line of text: name, state and progress, tqdm-formatted."""
        from ._format import job_status_line

        return job_status_line(self)

    def __repr__(self) -> str:
        return f"<Job {self.call_repr} id={self.id} {self.status_line()}>"

    def show(self) -> None:
        """Show the job live: a widget in Jupyter, a tqdm text bar on stderr elsewhere."""
        from ._display import current_cell, display_job

        self._shown_in_cell = current_cell()
        display_job(self)

    def _ipython_display_(self) -> None:
        from ._display import current_cell

        # `job = %celery_submit f()` shows the job; `job` as the cell's last line too:
        # shown automatically once per cell.
        if self._shown_in_cell is None or self._shown_in_cell != current_cell():
            self.show()

    def short_result_repr(self) -> str:
        """A short repr of the result (or exception) for displays."""
        if not self.done():
            return ""
        if self.cancelled():
            return "cancelled"
        error = self.exception(timeout=0)
        if error is not None:
            return f"{type(error).__name__}: {error}"
        return reprlib.repr(self.result(timeout=0))
