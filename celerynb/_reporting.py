"""Worker side: progress from inside a running Celery task.

``tqdm`` is a drop-in ``tqdm.auto.tqdm`` subclass. Inside a task it forwards its
state to the result backend as Celery's PROGRESS state (schema in ``_schema``);
outside a task it is plain ``tqdm.auto.tqdm``. Writes are throttled per task.
"""

from __future__ import annotations

import builtins
import logging
import os
import socket
import sys
import threading
import time
import types
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

from celery import current_task
from celery.signals import task_postrun
from tqdm.auto import tqdm as _auto_tqdm

from ._capture import output_of
from ._claims import signed_run
from ._schema import OUTPUT_KEY, PROGRESS, RUN_KEY, bar_meta, task_meta

DEFAULT_MAX_WRITES_PER_SECOND = 10.0
# A kernel polls a backend that does not push (a database) every 0.5 s, reading only the
# latest write: each write repeats the output lines sent this long ago or less.
REPEAT_SECONDS_WHEN_POLLED = 1.5


def pushes_every_state(task: Any) -> bool:
    """Whether the kernel gets every state the task writes (Redis pub/sub, rpc:// replies),
    not only the latest one it polls."""
    from celery.backends.redis import RedisBackend
    from celery.backends.rpc import RPCBackend

    backend = getattr(task, "backend", None)
    backend = getattr(backend, "backend", backend)  # celerynb's signing wrapper
    return isinstance(backend, RedisBackend | RPCBackend)


log = logging.getLogger(__name__)


class TaskProgress:
    """The bars of one running task and the throttled writes of their state."""

    def __init__(
        self,
        task: Any,
        max_writes_per_second: float = DEFAULT_MAX_WRITES_PER_SECOND,
        clock: Callable[[], float] = time.monotonic,
    ):
        self._clock = clock
        self.run = signed_run(task.request.id)  # made in the task's thread, on first use
        self.report_started: float | None = None  # the first ``report()`` of the task
        self.task = task
        self.task_id: str = task.request.id
        self.hostname = getattr(task.request, "hostname", None) or socket.gethostname()
        self.min_interval = 1.0 / max_writes_per_second if max_writes_per_second > 0 else 0.0
        self.bars: dict[int, dict[str, Any]] = {}
        self.writes = 0
        self._last_write = float("-inf")
        self._pending = False
        self._lock = threading.Lock()
        # Writes one at a time: the output flusher writes from its own thread.
        self._write_lock = threading.Lock()
        self._flusher_may_write = False  # within capture_output(), until it closes
        self._pushed = pushes_every_state(task)
        self._request, self._thread = task.request, threading.get_ident()
        self.write_failed = False

    def update_bar(self, key: int, meta: dict[str, Any], *, force: bool = False) -> None:
        """Record one bar's state; write if the throttle allows or ``force``."""
        with self._lock:
            self.bars[key] = meta
            self._pending = True
            now = self._clock()
            if not force and now - self._last_write < self.min_interval:
                return
            self._last_write = now
            self._pending = False
            bars = list(self.bars.values())
        self._write(bars)

    def add_bar(self, key: int, meta: dict[str, Any]) -> None:
        """Record a bar without writing: it goes out with the next write, in the place
        of a bar added first (the primary bar), whatever bars come later."""
        with self._lock:
            self.bars.setdefault(key, meta)

    def drop_bar(self, key: int) -> None:
        """Forget a bar (a finished transfer's): the next write leaves it out."""
        with self._lock:
            self.bars.pop(key, None)

    def close_bar(self, key: int, meta: dict[str, Any]) -> None:
        """Final write for a bar; the bar stays in the meta (it finished, not vanished)."""
        self.update_bar(key, meta, force=True)

    @contextmanager
    def _as_the_tasks_thread(self) -> Iterator[None]:
        """Celery's request as the task's own thread has it, from another thread (the
        flusher): an ``rpc://`` backend sends states to the request's reply queue."""
        stack = getattr(self.task, "request_stack", None)
        if stack is None or threading.get_ident() == self._thread:
            yield
            return
        stack.push(self._request)
        try:
            yield
        finally:
            stack.pop()

    def send_output(self) -> None:
        """Write the task's waiting output lines, if the throttle allows (the flusher's
        call, within ``capture_output()``)."""
        output = output_of(self.task_id)
        if output is None or not output.buffer.pending:
            return
        with self._lock:
            now = self._clock()
            if now - self._last_write < self.min_interval:
                return
            self._last_write = now
            self._pending = False
            bars = list(self.bars.values())
        self._write(bars, flusher=True)

    def open_output(self) -> None:
        """From now on the flusher may write this task's output."""
        with self._write_lock:
            self._flusher_may_write = True

    def close_output(self) -> None:
        """Stop the flusher's writes (waiting for one under way), then write every line
        still waiting, from the task's own thread: before the task stores its outcome,
        which a later PROGRESS write would overwrite."""
        with self._write_lock:
            self._flusher_may_write = False
        for _ in range(16):  # bounded: what waits is at most a few batches
            with self._lock:
                bars = list(self.bars.values())
            if not self._write(bars, final=True):
                return

    def _write(
        self, bars: list[dict[str, Any]], *, flusher: bool = False, final: bool = False
    ) -> bool:
        """Write PROGRESS with ``bars`` and the output lines waiting (``final``: only if
        lines wait, all of them); False when nothing was written."""
        with self._write_lock:
            if flusher and not self._flusher_may_write:
                return False
            output = output_of(self.task_id)
            again = 0.0 if self._pushed else REPEAT_SECONDS_WHEN_POLLED
            batch = output.take(final=final, again=again) if output is not None else None
            if final and batch is None:
                return False
            meta = task_meta(bars, hostname=self.hostname, pid=os.getpid())
            if batch is not None:
                meta[OUTPUT_KEY] = batch
            if self.run is not None:  # a shipped call: its signed run, for the kernel
                meta[RUN_KEY] = self.run
            try:
                with self._as_the_tasks_thread():
                    self.task.update_state(task_id=self.task_id, state=PROGRESS, meta=meta)
            except Exception as exc:  # progress is best effort: never fail the task for it
                with self._lock:
                    self._pending = True  # the next update writes again
                if not self.write_failed:
                    log.warning(
                        "celerynb: could not write the progress of task %s: %s", self.task_id, exc
                    )
                self.write_failed = True
                return False
            self.write_failed = False
            self.writes += 1
            return True


_registry_lock = threading.Lock()
_registry: dict[str, TaskProgress] = {}


def running_task() -> Any | None:
    """The Celery task running in this thread, or None outside a task."""
    task = current_task._get_current_object() if current_task else None
    if task is None or not getattr(task.request, "id", None):
        return None
    return task


def progress_for(task: Any) -> TaskProgress:
    """The one TaskProgress of a running task (created on first use)."""
    task_id = task.request.id
    with _registry_lock:
        progress = _registry.get(task_id)
        if progress is None:
            progress = _registry[task_id] = TaskProgress(task)
        return progress


def last_bars(task_id: str) -> list[dict[str, Any]]:
    """The bars a running task has reported (none: an empty list)."""
    with _registry_lock:
        progress = _registry.get(task_id)
    if progress is None:
        return []
    with progress._lock:
        return list(progress.bars.values())


@task_postrun.connect(weak=False)
def _forget_finished_task(task_id: str | None = None, **_: Any) -> None:
    with _registry_lock:
        if task_id is not None:
            _registry.pop(task_id, None)


class tqdm(_auto_tqdm):  # noqa: N801 - a drop-in for tqdm keeps its name
    """``tqdm.auto.tqdm`` that, inside a Celery task, reports to the task's state.

    Inside a task the bar draws nothing locally (workers have no terminal) and
    writes at most ``max_writes_per_second`` PROGRESS updates for the task,
    plus a final one when it closes. Outside a task it is plain tqdm.
    """

    def __init__(self, *args: Any, max_writes_per_second: float | None = None, **kwargs: Any):
        task = running_task() if kwargs.get("disable") is not True else None
        self._celerynb_progress: TaskProgress | None = None
        if task is not None:
            kwargs["disable"] = False
            kwargs["file"] = open(os.devnull, "w")  # noqa: SIM115 - closed in close()
            kwargs.setdefault("mininterval", 0.1)
            progress = progress_for(task)
            if max_writes_per_second is not None:
                progress.min_interval = 1.0 / max_writes_per_second
            self._celerynb_progress = progress
        # tqdm's __init__ refreshes once, which writes this bar's first state.
        super().__init__(*args, **kwargs)

    def _celerynb_bar_meta(self) -> dict[str, Any]:
        d = self.format_dict
        rate = d.get("rate")
        if rate is None and d["elapsed"]:
            rate = d["n"] / d["elapsed"]
        return bar_meta(
            n=d["n"],
            total=d["total"],
            desc=d.get("prefix"),
            unit=d.get("unit", "it"),
            rate=rate,
            elapsed=d["elapsed"],
            postfix=d.get("postfix"),
        )

    def display(self, *args: Any, **kwargs: Any) -> Any:
        if self._celerynb_progress is None:
            return super().display(*args, **kwargs)
        self._celerynb_progress.update_bar(id(self), self._celerynb_bar_meta())
        return None

    def close(self) -> None:
        progress = getattr(self, "_celerynb_progress", None)
        if progress is None or self.disable:
            super().close()
            return
        super().close()
        progress.close_bar(id(self), self._celerynb_bar_meta())
        self.fp.close()


def trange(*args: Any, **kwargs: Any) -> tqdm:
    """``tqdm(range(*args), **kwargs)``, as tqdm's own ``trange``."""
    return tqdm(range(*args), **kwargs)


# tqdm's modules whose ``tqdm`` and ``trange`` draw text bars (asyncio's and rich's
# bars are left alone: they are not drop-ins for a plain loop).
PLAIN_TQDM_MODULES = ("tqdm", "tqdm.std", "tqdm.auto", "tqdm.autonotebook", "tqdm.notebook")


def _plain_bars() -> dict[Any, Any]:
    """Plain tqdm classes and trange functions loaded in this process -> ours."""
    substitutes: dict[Any, Any] = {}
    for name in PLAIN_TQDM_MODULES:
        module = sys.modules.get(name)
        for attribute, ours in (("tqdm", tqdm), ("trange", trange), ("tnrange", trange)):
            plain = getattr(module, attribute, None)
            if plain is not None:
                substitutes[plain] = ours
    return substitutes


def reporting_view(value: Any) -> Any:
    """``value`` as code run in a task should see it: a plain tqdm class, ``trange`` or
    tqdm module becomes one whose bars report the task's progress instead of drawing
    text; anything else is returned as is (used for a ``%%celery_submit`` cell)."""
    return _view(value, _plain_bars(), depth=2)


def _view(value: Any, substitutes: dict[Any, Any], depth: int) -> Any:
    if not isinstance(value, types.ModuleType):
        try:
            return substitutes.get(value, value)
        except TypeError:  # unhashable: not a tqdm class
            return value
    if value.__name__ not in PLAIN_TQDM_MODULES or depth == 0:
        return value
    view = types.ModuleType(value.__name__, value.__doc__)
    for attribute, inner in vars(value).items():  # tqdm.auto inside the tqdm package too
        view.__dict__[attribute] = _view(inner, substitutes, depth - 1)
    return view


def reporting_import(
    name: str,
    globals: dict[str, Any] | None = None,  # noqa: A002 - __import__'s own signature
    locals: dict[str, Any] | None = None,  # noqa: A002
    fromlist: Any = (),
    level: int = 0,
) -> Any:
    """``__import__`` for code run in a task: ``from tqdm import tqdm`` (or ``tqdm.auto``,
    ``import tqdm``...) gives bars that report the task's progress."""
    module = builtins.__import__(name, globals, locals, fromlist, level)
    return reporting_view(module) if level == 0 else module


def report(
    current: float,
    total: float | None = None,
    desc: str | None = None,
    *,
    force: bool = False,
) -> bool:
    """Report progress of code that is not a loop; returns False outside a task.

    ``report(3, 10, "fitting")`` sets the task's progress to 3 of 10, throttled
    like ``tqdm`` unless ``force``.
    """
    task = running_task()
    if task is None:
        return False
    progress = progress_for(task)
    if progress.report_started is None:
        progress.report_started = time.monotonic()
    elapsed = time.monotonic() - progress.report_started
    rate = current / elapsed if elapsed > 0 and current else None
    meta = bar_meta(current, total, desc, rate=rate, elapsed=elapsed)
    progress.update_bar(-1, meta, force=force or (total is not None and current >= total))
    return True
