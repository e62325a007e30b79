"""Kernel side: what Jobs and JobGroups share — a Future that can be watched and shown."""

from __future__ import annotations

import asyncio
import concurrent.futures
import reprlib
import sys
import time
from collections.abc import Callable, Generator
from concurrent.futures import Future
from typing import Any

from ._errors import RemoteTraceback
from ._format import job_status_line

# How ``show()`` draws a job: set by ``_display`` (display depends on jobs, not the reverse).
display: Callable[[Any], Any] | None = None


def current_cell() -> int | None:
    """The execution count of the running cell, or None outside IPython."""
    ipython_module = sys.modules.get("IPython")
    shell = ipython_module.get_ipython() if ipython_module is not None else None
    return getattr(shell, "execution_count", None)


class WatchedFuture(Future):
    """A ``concurrent.futures.Future`` fed by the watcher, with listeners and a live display.

    Subclasses provide ``id``, ``name``, ``call_repr``, ``state`` and ``progress``.
    """

    id: str
    name: str
    call_repr: str

    def __init__(self) -> None:
        super().__init__()
        self._submitted_at = time.monotonic()
        self._finished_at: float | None = None
        self._listeners: list[Callable[[Any], None]] = []
        self._shown_in_cell: int | None = None

    @property
    def elapsed(self) -> float:
        """Seconds since submission, frozen once done."""
        end = self._finished_at if self._finished_at is not None else time.monotonic()
        return end - self._submitted_at

    def __await__(self) -> Generator[Any, None, Any]:
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

    @property
    def state(self) -> str:
        """Celery's state name (or celerynb's: LOST, UNKNOWN, REQUEUED)."""
        raise NotImplementedError

    @property
    def note(self) -> str | None:
        """Why it is not where one would expect, when known (shown under the bar)."""
        return None

    # -- outcome ----------------------------------------------------------------
    def result(self, timeout: float | None = None) -> Any:
        """The result, waiting up to ``timeout`` seconds (None: as long as it takes).

        Raises:
            TimeoutError: not done in time; the message names the job, its state and
                why it waits when that is known (``concurrent.futures.TimeoutError``).
            concurrent.futures.CancelledError: it was cancelled.
            Exception: the remote exception, with the worker's traceback as its cause.
        """
        self._wait_or_raise(timeout)
        return super().result(timeout=0)

    def exception(self, timeout: float | None = None) -> BaseException | None:
        """The remote exception (None if it succeeded), waiting as ``result`` does."""
        self._wait_or_raise(timeout)
        return super().exception(timeout=0)

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
            return f"{type(error).__name__}: {error}"
        return reprlib.repr(self.result(timeout=0))

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
