"""Kernel side: what Jobs and JobGroups share — a Future that can be watched and shown."""

from __future__ import annotations

import asyncio
import concurrent.futures
import reprlib
import sys
import threading
import time
from collections.abc import Callable, Generator
from concurrent.futures import Future
from typing import Any

from ._errors import RemoteTraceback, ResultReleasedError, message_of
from ._format import job_status_line
from ._output_log import OutputTail

# How ``show()`` draws a job: set by ``_display`` (display depends on jobs, not the reverse).
display: Callable[[Any], Any] | None = None


def ipython_shell() -> Any:
    """The running IPython shell, or None (never imports IPython)."""
    ipython_module = sys.modules.get("IPython")
    return ipython_module.get_ipython() if ipython_module is not None else None


def current_cell() -> int | None:
    """The execution count of the running cell, or None outside IPython."""
    return getattr(ipython_shell(), "execution_count", None)


DISPLAY_GRACE = 2.0  # seconds result() waits at most for displays to show the outcome


def monotonic_of(wall: float) -> float:
    """The ``time.monotonic()`` reading of a past wall-clock time (a future one: now)."""
    return time.monotonic() - max(time.time() - wall, 0.0)


def _completing_in_this_thread(future: Future[Any]) -> None:
    """The first done callback of every WatchedFuture (see ``_wait_for_displays``)."""
    future._completing_thread = threading.get_ident()  # type: ignore[attr-defined]


class WatchedFuture(Future):
    """A ``concurrent.futures.Future`` fed by the watcher, with listeners and a live display.

    Subclasses provide ``id``, ``name``, ``call_repr``, ``state`` and ``progress``.
    """

    id: str
    name: str
    call_repr: str

    def __init__(self) -> None:
        super().__init__()
        self._every_callback: list[Callable[[Any], Any]] = []
        self._submitted_at = time.monotonic()
        # Kept, not derived from the monotonic clock: derived, it would jitter across a
        # second and redraw a waiting job's widget ("sent 12:03:04") for nothing.
        self._sent_at = time.time()
        self._finished_at: float | None = None
        self._counted_from_store = False  # submitted by an earlier kernel (see _count_from)
        self._listeners: list[Callable[[Any], None]] = []
        self._shown_in_cell: int | None = None
        self._displays_pending: list[threading.Event] = []
        # The thread running the done callbacks, until the listeners are told: a callback
        # that asks for the result must not wait for displays that are drawn only after.
        self._completing_thread: int | None = None
        self._released: str | None = None  # why its result was let go of (see there)
        self.add_done_callback(_completing_in_this_thread)

    def _display_pending(self) -> threading.Event:
        """An Event a display sets once it has shown the outcome. Until then (at most
        ``DISPLAY_GRACE`` s) ``result()`` and ``exception()`` do not return, so a text
        display's final line comes before what the waiting code prints next."""
        event = threading.Event()
        self._displays_pending.append(event)
        return event

    def _wait_for_displays(self, timeout: float | None) -> None:
        if timeout == 0 or not self.done():  # a look (timeout=0) never waits
            return
        if self._completing_thread == threading.get_ident():
            return
        deadline = time.monotonic() + DISPLAY_GRACE
        for event in list(self._displays_pending):
            event.wait(max(deadline - time.monotonic(), 0.0))

    def add_done_callback(self, fn: Callable[[Any], Any]) -> None:
        """As ``concurrent.futures.Future``'s; every callback is also kept, to run again
        if the future is reopened (a retry) and finishes again."""
        self._every_callback.append(fn)
        super().add_done_callback(fn)

    def _reopen(self) -> None:
        """Back to not done (a retry): ``concurrent.futures.Future``'s own state reset,
        and every done callback ever added armed again (one added after it was done ran
        at once and was not kept by the Future)."""
        with self._condition:
            self._state = "PENDING"
            self._result = None
            self._exception = None
            self._done_callbacks = list(self._every_callback)
            self._released = None
        self._submitted_at, self._finished_at = time.monotonic(), None
        self._sent_at = time.time()

    @property
    def sent_at(self) -> float:
        """When it was submitted (or retried), as ``time.time()``."""
        return self._sent_at

    @property
    def elapsed(self) -> float:
        """Seconds since submission, frozen once done."""
        end = self._finished_at if self._finished_at is not None else time.monotonic()
        return end - self._submitted_at

    def _count_from(self, submitted: float) -> None:
        """Count ``elapsed`` from ``submitted``, a wall-clock time (``time.time()``) as the
        job store keeps it: a job watched again after a restart goes on from its
        submission. (Elapsed time itself is measured on the monotonic clock.)"""
        self._submitted_at = monotonic_of(submitted)
        self._sent_at = submitted
        self._counted_from_store = True

    def __await__(self) -> Generator[Any, None, Any]:
        self._raise_if_released()  # asyncio would only log the error, and wait on
        return asyncio.wrap_future(self).__await__()

    # -- listeners (display) --------------------------------------------------
    def add_listener(self, listener: Callable[[Any], None]) -> None:
        """Call ``listener(self)`` from the watcher thread on every change."""
        self._listeners.append(listener)

    def remove_listener(self, listener: Callable[[Any], None]) -> None:
        if listener in self._listeners:
            self._listeners.remove(listener)

    def _notify(self) -> None:
        for listener in list(self._listeners):
            try:
                listener(self)
            except Exception:  # a broken display must not stop the watcher
                pass
        if self._completing_thread is not None:  # told after its done callbacks ran
            self._completing_thread = None

    @property
    def state(self) -> str:
        """Celery's state name (or celerynb's: LOST, UNKNOWN, REQUEUED)."""
        raise NotImplementedError

    @property
    def note(self) -> str | None:
        """Why it is not where one would expect, when known (shown under the bar)."""
        return None

    @property
    def output(self) -> OutputTail:
        """What its tasks printed and logged (see ``Job.output``)."""
        return OutputTail()

    def _output_since(self, mark: int) -> tuple[list[tuple[str, str]], int, int]:
        """Output lines received after the first ``mark``, how many of those are gone,
        and the new mark (for displays that print lines as they come)."""
        return [], 0, mark

    # -- outcome ----------------------------------------------------------------
    def result(self, timeout: float | None = None) -> Any:
        """The result, waiting up to ``timeout`` seconds (None: as long as it takes).

        Returns once a text display of the job has written its final line, so that
        line comes before what the caller prints next.

        Raises:
            TimeoutError: not done in time; the message names the job, its state and
                why it waits when that is known (``concurrent.futures.TimeoutError``).
            concurrent.futures.CancelledError: it was cancelled.
            Exception: the remote exception, with the worker's traceback as its cause.
        """
        self._wait_or_raise(timeout)
        try:
            value = super().result(timeout=0)
            self._raise_if_released()
            return value
        finally:
            self._wait_for_displays(timeout)

    def _raise_if_released(self) -> None:
        if self._released is not None:
            raise ResultReleasedError(
                f"the result of {self.call_repr} (job {self.id}) was {self._released} "
                "and is no longer kept here"
            )

    def _release_result(self, why: str) -> None:
        """Let go of the result once its one reader has it (``why`` says who): the job
        stays in the kernel's job list, which would otherwise hold the data for as long
        as the kernel runs. ``result()`` then raises ``ResultReleasedError``."""
        with self._condition:
            if self._state == "FINISHED" and self._exception is None:
                self._result = None
                self._released = why

    def exception(self, timeout: float | None = None) -> BaseException | None:
        """The remote exception (None if it succeeded), waiting as ``result`` does."""
        self._wait_or_raise(timeout)
        try:
            return super().exception(timeout=0)
        finally:
            self._wait_for_displays(timeout)

    def _wait_or_raise(self, timeout: float | None) -> None:
        # Future's own TimeoutError has no message: say which job, how it stands, why.
        if self.done() or concurrent.futures.wait([self], timeout=timeout).done:
            return
        note = self.note
        raise concurrent.futures.TimeoutError(
            f"{self.call_repr} (job {self.id}) is still {self.state} after {timeout:g}s"
            + (f": {note}" if note else "")
        )

    @property
    def remote_traceback(self) -> str | None:
        """The worker's traceback text when it failed, else None."""
        if not self.done() or self.cancelled():
            return None
        error = self.exception(timeout=0)
        cause = getattr(error, "__cause__", None)
        return cause.tb if isinstance(cause, RemoteTraceback) else None

    def short_result_repr(self) -> str:
        """A short repr of the result (or exception) for displays."""
        if not self.done():
            return ""
        if self.cancelled():
            return "cancelled"
        error = self.exception(timeout=0)
        if error is not None:
            return f"{type(error).__name__}: {message_of(error)}"
        if self._released is None:
            try:
                return reprlib.repr(self.result(timeout=0))
            except ResultReleasedError:  # let go of meanwhile (another thread)
                pass
        return f"(result {self._released})"

    # -- display --------------------------------------------------------------
    def status_line(self) -> str:
        """One line of text: name, state and progress, tqdm-formatted."""
        return job_status_line(self)

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.call_repr} id={self.id} {self.status_line()}>"

    def show(self) -> None:
        """Show it live: a widget in Jupyter, a tqdm text bar on stderr elsewhere."""
        self._shown_in_cell = current_cell()
        if display is None:
            raise RuntimeError("no display: import celerynb (its package sets one)")
        display(self)

    def _ipython_display_(self) -> None:
        # `job = %celery_submit f()` shows the job; `job` as the cell's last line too:
        # shown automatically once per cell.
        if self._shown_in_cell is None or self._shown_in_cell != current_cell():
            self.show()
