"""Worker side: capture a running task's stdout, stderr and logging records as lines.

Once per process, ``sys.stdout``/``sys.stderr`` are wrapped by a ``RoutedStream`` that
hands what a task's thread writes to that task's ``OutputBuffer`` and still writes it
where it went before (Celery's redirect to the worker log, which is unchanged), and a
``RoutedLogHandler`` on the root logger does the same for logging records (Celery's
redirect logs on ``celery.redirected``: those records are the same text again, skipped).

Every task is captured from ``task_prerun`` to ``task_postrun``; its lines are sent
only with the PROGRESS writes of a task that reports with ``celerynb.tqdm``/``report``
(in its own thread: never after the task stored its outcome). ``capture_output()``
(shipped calls and cells use it; a user's task may) sends them within about a second
too, from a flusher thread, and sends the last lines before the task returns.
"""

from __future__ import annotations

import io
import logging
import os
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import ContextDecorator, contextmanager
from typing import Any

from celery.signals import task_postrun, task_prerun

from ._output import OutputBuffer

FLUSH_SECONDS = 0.25  # how often the flusher looks for lines to send
IDLE_SECONDS = 30.0  # the flusher thread ends after this long without a captured task

log = logging.getLogger(__name__)


class TaskOutput:
    """One running task's captured output: its buffer and how it is sent."""

    def __init__(self, task_id: str, thread: int) -> None:
        self.task_id = task_id
        self.thread = thread
        self.buffer = OutputBuffer(f"{os.getpid():x}-{uuid.uuid4().hex[:8]}")
        self.lock = threading.Lock()  # guards the buffer: the task and the flusher use it
        self.writer: Any = None  # the TaskProgress that sends it, set by capture_output
        self.depth = 0  # nested capture_output() blocks

    def write(self, stream: str, text: str) -> None:
        with self.lock:
            self.buffer.write(stream, text)

    def log(self, text: str) -> None:
        with self.lock:
            self.buffer.log(text)

    def take(self, *, final: bool = False, again: float = 0.0) -> dict[str, Any] | None:
        with self.lock:
            if final:
                self.buffer.end_lines()
            return self.buffer.take(final=final, again=again)

    def recent(self) -> dict[str, Any] | None:
        with self.lock:
            return self.buffer.recent()


_lock = threading.Lock()
_by_thread: dict[int, TaskOutput] = {}
_by_task: dict[str, TaskOutput] = {}
_sole: TaskOutput | None = None  # the one task captured in this process, if only one


def output_of(task_id: str) -> TaskOutput | None:
    """The captured output of a running task, if it is captured."""
    with _lock:
        return _by_task.get(task_id)


def _route() -> TaskOutput | None:
    """Where the calling thread's writes go: its task's output; from another thread,
    the only task captured in this process (a thread the task started), if one is."""
    return _by_thread.get(threading.get_ident()) or _sole


class RoutedStream:
    """``sys.stdout``/``sys.stderr`` as wrapped: a task's writes also go to its output."""

    def __init__(self, name: str, original: Any) -> None:
        self.stream_name = name
        self.original = original

    def write(self, text: str) -> int:
        output = _route()
        if output is not None and isinstance(text, str):
            try:
                output.write(self.stream_name, text)
            except Exception:  # capture is best effort: never fail a print
                pass
        kept = getattr(_recording, "streams", None)
        if kept is not None:
            kept[self.stream_name].write(text)
        return self.original.write(text)

    def writelines(self, lines: Any) -> None:
        for line in lines:
            self.write(line)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.original, name)


class RoutedLogHandler(logging.Handler):
    """Hands a task's logging records (from its own thread) to its output."""

    SKIPPED = ("celery.redirected",)  # Celery's redirect of stdout: already captured

    def __init__(self) -> None:
        super().__init__()
        self.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))

    def emit(self, record: logging.LogRecord) -> None:
        output = _by_thread.get(record.thread or 0)
        if output is None or record.name in self.SKIPPED:
            return
        try:
            output.log(self.format(record))
        except Exception:
            self.handleError(record)


def _install() -> None:
    """Wrap the streams and add the log handler unless they are (at each task's start:
    a forked pool process inherits them, and something may have replaced a stream)."""
    for name in ("stdout", "stderr"):
        stream = getattr(sys, name)
        if not isinstance(stream, RoutedStream):
            setattr(sys, name, RoutedStream(name, stream))
    root = logging.getLogger()
    if not any(isinstance(handler, RoutedLogHandler) for handler in root.handlers):
        root.addHandler(RoutedLogHandler())


_recording = threading.local()  # .streams: where this thread's writes are also kept


@contextmanager
def recording() -> Iterator[dict[str, io.StringIO]]:
    """Within it, what the calling thread writes to ``sys.stdout``/``sys.stderr`` is also
    kept, in the ``"stdout"`` and ``"stderr"`` buffers it gives (a cell's ``CellResult``).
    Unlike ``contextlib.redirect_stdout`` it changes nothing for other threads (a threads
    pool runs several tasks in one process)."""
    _install()
    streams = {"stdout": io.StringIO(), "stderr": io.StringIO()}
    previous = getattr(_recording, "streams", None)
    _recording.streams = streams
    try:
        yield streams
    finally:
        _recording.streams = previous


def start(task_id: str) -> TaskOutput:
    """Capture the calling thread's output as ``task_id``'s (the running one's if
    already captured)."""
    _install()
    thread = threading.get_ident()
    with _lock:
        output = _by_task.get(task_id)
        if output is None:
            output = _by_task[task_id] = TaskOutput(task_id, thread)
        _by_thread[thread] = output
        _set_sole()
        return output


def stop(task_id: str) -> None:
    """Stop capturing ``task_id`` (its unsent lines are dropped)."""
    with _lock:
        output = _by_task.pop(task_id, None)
        if output is not None and _by_thread.get(output.thread) is output:
            del _by_thread[output.thread]
        _set_sole()


def _set_sole() -> None:
    global _sole
    _sole = next(iter(_by_task.values())) if len(_by_task) == 1 else None


@task_prerun.connect(weak=False)
def _capture_every_task(task_id: str | None = None, **_: Any) -> None:
    if task_id is not None:
        start(task_id)


@task_postrun.connect(weak=False)
def _stop_capturing(task_id: str | None = None, **_: Any) -> None:
    if task_id is not None:
        stop(task_id)


class _Flusher:
    """One thread per process that sends the lines of tasks in ``capture_output()``
    every ``FLUSH_SECONDS`` (within their throttle); it ends once none has come for
    ``IDLE_SECONDS``, not at once. A task comes and goes without waking it (it looks at
    each round): a thread started for each of many short tasks (a map's chunks, joblib's
    batches), or woken twice for each, cost a pool process several percent of its time."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._outputs: set[TaskOutput] = set()
        self._thread: threading.Thread | None = None
        self._last_task = time.monotonic()  # when a task last came or went

    def add(self, output: TaskOutput) -> None:
        with self._lock:
            self._outputs.add(output)
            self._last_task = time.monotonic()
            if self._thread is None or not self._thread.is_alive():
                self._thread = threading.Thread(
                    target=self._run, name="celerynb-output", daemon=True
                )
                self._thread.start()

    def remove(self, output: TaskOutput) -> None:
        with self._lock:
            self._outputs.discard(output)
            self._last_task = time.monotonic()

    def _run(self) -> None:
        while True:
            time.sleep(FLUSH_SECONDS)
            with self._lock:
                outputs = list(self._outputs)
                if not outputs and time.monotonic() - self._last_task >= IDLE_SECONDS:
                    self._thread = None
                    return
            for output in outputs:
                writer = output.writer
                if writer is not None:
                    try:
                        writer.send_output()
                    except Exception as exc:  # best effort, as all progress
                        log.debug("celerynb: could not send output of %s: %s", output.task_id, exc)


_flusher = _Flusher()


def _forget_in_child() -> None:
    """In a process a task forks (multiprocessing), nothing is captured: the parent's
    tasks are not its own, and a lock another thread held at the fork stays held."""
    global _lock, _sole, _flusher
    _lock, _sole, _flusher = threading.Lock(), None, _Flusher()
    _by_thread.clear()
    _by_task.clear()


os.register_at_fork(after_in_child=_forget_in_child)


@contextmanager
def _capturing() -> Iterator[None]:
    from ._reporting import progress_for, running_task

    task = running_task()
    if task is None:  # not in a task: nothing to capture
        yield
        return
    output = start(task.request.id)
    progress = progress_for(task)
    output.writer = progress
    output.depth += 1
    if output.depth == 1:
        progress.open_output()
        _flusher.add(output)
    try:
        yield
    finally:
        output.depth -= 1
        if output.depth == 0:
            _flusher.remove(output)
            progress.close_output()  # the last lines, before the task stores its outcome


def capture_output(fn: Callable[..., Any] | None = None) -> Any:
    """Send the output of a task (stdout, stderr, logging records) to the notebook.

    A decorator of a task's function (under ``@app.task``), or a ``with`` block inside
    a task: within it, what the task prints or logs reaches its job's display within
    about a second, and the last lines are sent before it ends. Outside a task it does
    nothing. celerynb's shipped calls and ``%%celery_submit`` cells are captured so
    without asking; a task that reports with ``celerynb.tqdm``/``report`` sends its
    lines with its progress even without it.

    ``@capture_output``, ``@capture_output()`` and ``with capture_output():`` all work.
    """
    capture = _OutputCapture()
    return capture if fn is None else capture(fn)


class _OutputCapture(ContextDecorator):
    """``capture_output()``: a context manager that also decorates."""

    def __init__(self) -> None:
        self._blocks = threading.local()

    def __enter__(self) -> _OutputCapture:
        block = _capturing()
        block.__enter__()
        stack = getattr(self._blocks, "stack", None)
        if stack is None:
            stack = self._blocks.stack = []
        stack.append(block)
        return self

    def __exit__(self, *exc_info: Any) -> None:
        self._blocks.stack.pop().__exit__(*exc_info)
