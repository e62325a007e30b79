"""Kernel side: which Celery workers are online, asked over the broker (``inspect``)."""

from __future__ import annotations

import math
import socket
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any, NamedTuple

from ._worker_report import sample

INSPECT_TIMEOUT = 1.0


class RunningTask(NamedTuple):
    """A task a worker runs, as ``inspect().active()`` says: its pool process included."""

    id: str
    name: str
    pid: int | None
    started: float | None = None  # time.time() on the worker's machine


@dataclass(frozen=True)
class WorkerInfo:
    """One online worker node as it answered ``celery inspect``."""

    name: str
    pool: str = "?"
    concurrency: int | None = None
    queues: tuple[str, ...] = ()
    active: tuple[tuple[str, str], ...] = field(default=())  # (task id, task name)
    reserved: tuple[tuple[str, str], ...] = field(default=())
    pids: tuple[int, ...] = ()  # its pool processes (prefork)
    running: tuple[RunningTask, ...] = ()  # ``active`` with the process running each


def inspect_workers(
    app: Any, timeout: float = INSPECT_TIMEOUT, expected: int | None = None
) -> list[WorkerInfo]:
    """Ask every worker for its pool, queues, active and reserved tasks.

    Waits ``timeout`` seconds for answers (less when ``expected`` nodes answer first).
    """
    stats = app.control.inspect(timeout=timeout, limit=expected).stats() or {}
    if not stats:
        return []
    nodes = sorted(stats)
    ask = app.control.inspect(destination=nodes, timeout=timeout, limit=len(nodes))
    active = ask.active(safe=True) or {}  # safe: the arguments' repr, not the arguments
    reserved = ask.reserved() or {}
    queues = ask.active_queues() or {}
    return [
        WorkerInfo(
            name=node,
            pool=_pool_name(stats[node]),
            concurrency=_positive_int_or_none(
                (stats[node].get("pool") or {}).get("max-concurrency")
            ),
            queues=tuple(q.get("name", "?") for q in queues.get(node) or ()),
            active=_tasks(active.get(node)),
            reserved=_tasks(reserved.get(node)),
            pids=_pids(stats[node]),
            running=_running(active.get(node)),
        )
        for node in nodes
    ]


def _pool_name(stats: dict[str, Any]) -> str:
    implementation = str((stats.get("pool") or {}).get("implementation", "?"))
    # "celery.concurrency.prefork:TaskPool" -> "prefork"
    return implementation.split(":")[0].rsplit(".", 1)[-1]


def _tasks(entries: Any) -> tuple[tuple[str, str], ...]:
    return tuple((str(t.get("id", "?")), str(t.get("name", "?"))) for t in entries or ())


def _pids(stats: dict[str, Any]) -> tuple[int, ...]:
    processes = (stats.get("pool") or {}).get("processes") or ()
    return tuple(pid for pid in processes if isinstance(pid, int))[:256]


def _running(entries: Any) -> tuple[RunningTask, ...]:
    return tuple(
        RunningTask(
            str(t.get("id", "?")),
            str(t.get("name", "?")),
            _int_or_none(t.get("worker_pid")),
            _float_or_none(t.get("time_start")),
        )
        for t in entries or ()
    )


def _int_or_none(value: Any) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def _positive_int_or_none(value: Any) -> int | None:
    """A count a worker reported (any answer to ``inspect`` may be forged: a string or a
    negative number would break or shrink the sums made of it)."""
    number = _int_or_none(value)
    return number if number is not None and number > 0 else None


def _float_or_none(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return float(value) if math.isfinite(value) else None


def registered_task_names(
    app: Any, timeout: float = INSPECT_TIMEOUT, nodes: list[str] | None = None
) -> set[str] | None:
    """Names of the tasks the online workers registered; None when no worker answered.

    With ``nodes`` (workers known to be online) the answer comes as soon as they replied.
    """
    ask = app.control.inspect(
        destination=nodes or None, timeout=timeout, limit=len(nodes) if nodes else None
    )
    replies = ask.registered() or {}
    if not replies:
        return None
    return {name.split(" ", 1)[0] for names in replies.values() for name in names or ()}


def pool_memory(online: Iterable[WorkerInfo], host: str | None = None) -> dict[str, int]:
    """Resident bytes of each worker's pool processes, for the workers on this machine
    (``host``: this one's name; read from ``/proc``, so Linux only)."""
    host = socket.gethostname() if host is None else host
    used = {}
    for worker in online:
        if worker.name.rpartition("@")[2] != host:
            continue
        found = [s.rss for s in map(sample, worker.pids) if s is not None]
        if found:
            used[worker.name] = sum(found)
    return used
