"""Kernel side: what the dashboard knows of the cluster's workers and tasks (pure).

``ClusterView`` is fed Celery's events (heartbeats, celerynb's worker reports, and
the task events of workers that send them) and the answers of ``inspect``; it keeps
every worker's latest numbers and a bounded task stream: one span per task run, on
the lane of the pool process that ran it. Times are the kernel's clock, as given by
the caller. Everything comes from the workers or the broker, so it is checked and
bounded here: strings cut, numbers checked, sizes capped.
"""

from __future__ import annotations

import math
from collections import OrderedDict
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, replace
from typing import Any

from celery import states

from ._liveness import LOST_AFTER
from ._worker_report import REPORT_EVENT
from ._workers import WorkerInfo

WINDOW = 300.0  # seconds of task stream kept and drawn
FORGET_AFTER = 300.0  # a gone worker is dropped after this
MAX_WORKERS = 100
MAX_SPANS = 5000
MAX_NAMES = 10_000  # task names remembered from task-received events
MAX_TEXT = 200  # characters kept of any string a worker sends
RUNNING = "RUNNING"  # a span's state while its task runs
ENDED = "ENDED"  # seen by polling only: it ended, how is not known

_ENDINGS = {
    "task-succeeded": states.SUCCESS,
    "task-failed": states.FAILURE,
    "task-revoked": states.REVOKED,
    "task-retried": states.RETRY,
    "task-rejected": states.REJECTED,
}


@dataclass(frozen=True)
class ProcessUsage:
    """One process of a worker as its last report said: CPU percent (None until a
    second report), resident bytes."""

    pid: int
    cpu: float | None
    rss: int | None


@dataclass
class WorkerState:
    """The latest of what was heard from one worker node."""

    hostname: str
    pool: str | None = None
    concurrency: int | None = None
    queues: tuple[str, ...] = ()
    active: int | None = None
    reserved: int | None = None
    loadavg: tuple[float, ...] = ()
    processes: tuple[ProcessUsage, ...] = ()
    memory_total: int | None = None
    pids: tuple[int, ...] = ()
    last_heard: float | None = None  # an event from it
    last_answered: float | None = None  # an inspect answer from it
    missing_from_inspect: bool = False  # the latest answer came without it
    offline: bool = False  # it said goodbye (worker-offline)
    gone_since: float | None = None


@dataclass
class TaskSpan:
    """One run of a task on one pool process."""

    task_id: str
    name: str
    hostname: str
    pid: int | None
    start: float
    end: float | None = None
    state: str = RUNNING
    polled: bool = False  # seen through inspect, not events: start and end are coarse


@dataclass(frozen=True)
class WorkerRow:
    """A worker as shown: its state plus whether it is gone."""

    worker: WorkerState
    gone: bool


@dataclass
class ClusterView:
    """Workers and the task stream, from events and inspect answers (see the module)."""

    window: float = WINDOW
    gone_after: float = LOST_AFTER
    forget_after: float = FORGET_AFTER
    max_spans: int = MAX_SPANS
    workers: dict[str, WorkerState] = field(default_factory=dict)
    task_events: bool = False  # a task event was heard: the stream comes from events
    listening_since: float | None = None  # the event listener is connected since
    _spans: OrderedDict[str, TaskSpan] = field(default_factory=OrderedDict)
    _names: OrderedDict[str, str] = field(default_factory=OrderedDict)

    # -- events ----------------------------------------------------------------
    def on_event(self, event: Mapping[str, Any], now: float) -> bool:
        """Take one event heard at ``now``; True when it changed anything shown."""
        kind = event.get("type")
        hostname = _text(event.get("hostname"))
        if not isinstance(kind, str) or not hostname:
            return False
        if kind.startswith("worker-"):
            return self._on_worker_event(kind, hostname, event, now)
        if kind.startswith("task-"):
            return self._on_task_event(kind, hostname, event, now)
        return False

    def _on_worker_event(
        self, kind: str, hostname: str, event: Mapping[str, Any], now: float
    ) -> bool:
        worker = self._worker(hostname)
        if worker is None:
            return False
        worker.last_heard = now
        worker.gone_since = None
        if kind == "worker-offline":
            worker.offline = True
            worker.gone_since = now
            return True
        worker.offline = False
        if kind in ("worker-heartbeat", "worker-online"):
            worker.active = _count(event.get("active"))
            loadavg = event.get("loadavg")
            if isinstance(loadavg, list | tuple):
                worker.loadavg = tuple(
                    v for v in (_number(x) for x in loadavg[:3]) if v is not None
                )
        elif kind == REPORT_EVENT:
            worker.processes = _processes(event.get("celerynb_processes"))
            worker.memory_total = _count(event.get("celerynb_memory_total"))
        return True

    def _on_task_event(
        self, kind: str, hostname: str, event: Mapping[str, Any], now: float
    ) -> bool:
        task_id = _text(event.get("uuid"))
        if not task_id:
            return False
        self.task_events = True
        if kind == "task-received":
            self._names[task_id] = _text(event.get("name")) or "?"
            self._names.move_to_end(task_id)
            while len(self._names) > MAX_NAMES:
                self._names.popitem(last=False)
            return False
        if kind == "task-started":
            # Its "pid" is the worker's main process, not the pool process that runs
            # it: the lane is chosen when drawn (or set by the next inspect round).
            self._add_span(TaskSpan(task_id, self._names.get(task_id, "?"), hostname, None, now))
            return True
        ending = _ENDINGS.get(kind)
        if ending is None:
            return False
        span = self._spans.get(task_id)
        if span is None or span.end is not None:
            runtime = _number(event.get("runtime"))
            if ending == states.REVOKED or runtime is None:
                return False  # revoked before it ran, or nothing to draw
            span = TaskSpan(task_id, self._names.get(task_id, "?"), hostname, None, now - runtime)
            self._add_span(span)
        span.end, span.state = now, ending
        return True

    # -- inspect answers -------------------------------------------------------------
    def on_inspect(self, answered: Iterable[WorkerInfo], now: float) -> None:
        """Take an ``inspect`` round's answers (pool, queues, processes, tasks). Without
        task events, the tasks running now open spans and those no longer running end."""
        seen = set()
        for info in answered:
            worker = self._worker(_text(info.name))
            if worker is None:
                continue
            seen.add(worker.hostname)
            worker.pool = _text(info.pool) or None
            worker.concurrency = _count(info.concurrency)
            worker.queues = tuple(_text(q) for q in info.queues[:50])
            worker.active = len(info.active)
            worker.reserved = len(info.reserved)
            worker.pids = tuple(info.pids[:256])
            worker.last_answered = now
            worker.missing_from_inspect = False
            worker.offline = False
            if self.task_events:
                self._pids_from_inspect(info)
            else:
                self._spans_from_inspect(worker.hostname, info, now)
        for worker in self.workers.values():
            if worker.hostname not in seen:
                worker.missing_from_inspect = True
                if not self.task_events:
                    self._end_polled_spans(worker.hostname, set(), now)

    def _pids_from_inspect(self, info: WorkerInfo) -> None:
        for task in info.running:
            span = self._spans.get(_text(task.id))
            if span is not None and span.end is None and task.pid is not None:
                span.pid = task.pid
                if span.name == "?":
                    span.name = _text(task.name) or "?"

    def _spans_from_inspect(self, hostname: str, info: WorkerInfo, now: float) -> None:
        running = {_text(task.id): task for task in info.running}
        for task_id, task in running.items():
            span = self._spans.get(task_id)
            if span is None or span.end is not None:
                # Its start as the worker says, when that is believable (same clocks).
                start = task.started if task.started is not None else now
                if not now - self.window <= start <= now:
                    start = now
                self._add_span(
                    TaskSpan(
                        task_id, _text(task.name) or "?", hostname, task.pid, start, polled=True
                    )
                )
        self._end_polled_spans(hostname, set(running), now)

    def _end_polled_spans(self, hostname: str, running: set[str], now: float) -> None:
        for span in self._spans.values():
            ended = span.polled and span.end is None and span.task_id not in running
            if ended and span.hostname == hostname:
                span.end, span.state = now, ENDED

    # -- reading -----------------------------------------------------------------
    def worker_rows(self, now: float) -> list[WorkerRow]:
        """Every worker known, gone ones marked (and forgotten ``forget_after`` later)."""
        rows = []
        for hostname in sorted(self.workers):
            worker = self.workers[hostname]
            gone = self._is_gone(worker, now)
            if gone:
                if worker.gone_since is None:
                    worker.gone_since = now
                if now - worker.gone_since > self.forget_after:
                    del self.workers[hostname]
                    continue
            else:
                worker.gone_since = None
            rows.append(WorkerRow(replace(worker), gone))  # a copy: events go on meanwhile
        return rows

    def _is_gone(self, worker: WorkerState, now: float) -> bool:
        if worker.offline:
            return True
        if worker.last_heard is not None:  # it sends heartbeats: they decide
            listening = self.listening_since is not None and now - self.listening_since >= (
                self.gone_after
            )
            return listening and now - worker.last_heard > self.gone_after
        return worker.missing_from_inspect  # never heard: the latest answer decides

    def spans(self, now: float) -> list[TaskSpan]:
        """The task stream's spans that overlap the last ``window`` seconds."""
        since = now - self.window
        for task_id in [t for t, s in self._spans.items() if s.end is not None and s.end < since]:
            del self._spans[task_id]
        return [replace(span) for span in self._spans.values()]

    def has_spans(self) -> bool:
        """Whether the task stream holds any span (pruned at each ``spans()``)."""
        return bool(self._spans)

    def running_count(self) -> int:
        """Tasks running as far as the stream knows."""
        return sum(1 for span in self._spans.values() if span.end is None)

    def _worker(self, hostname: str) -> WorkerState | None:
        worker = self.workers.get(hostname)
        if worker is None:
            if not hostname or len(self.workers) >= MAX_WORKERS:
                return None
            worker = self.workers[hostname] = WorkerState(hostname)
        return worker

    def _add_span(self, span: TaskSpan) -> None:
        self._spans.pop(span.task_id, None)  # a task run again (a retry): its latest run
        self._spans[span.task_id] = span
        while len(self._spans) > self.max_spans:
            self._spans.popitem(last=False)


def _text(value: Any) -> str:
    return value[:MAX_TEXT] if isinstance(value, str) else ""


def _number(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    number = float(value)
    return number if math.isfinite(number) else None


def _count(value: Any) -> int | None:
    number = _number(value)
    return int(number) if number is not None and number >= 0 else None


def _processes(rows: Any) -> tuple[ProcessUsage, ...]:
    if not isinstance(rows, list):
        return ()
    found = []
    for row in rows[:64]:
        if isinstance(row, list | tuple) and len(row) == 3:
            pid = _count(row[0])
            if pid is not None:
                cpu = _number(row[1])
                found.append(
                    ProcessUsage(pid, None if cpu is None or cpu < 0 else cpu, _count(row[2]))
                )
    return tuple(found)
