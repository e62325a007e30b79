"""Worker side: a light report of a worker's processes (CPU, memory) with its heartbeats.

Each time Celery's worker sends its heartbeat (every 2 s, also without ``-E``), its
main process sends one more event, ``worker-celerynb-report``: the CPU use and
resident memory of the main process and of its pool children, read from ``/proc``
(Linux; elsewhere nothing is sent). It is a ``worker-`` event, so Celery sends it
whenever it sends heartbeats, and the kernel's dashboard hears it on the same event
stream. Its fields carry a ``celerynb_`` prefix: tools that keep every worker event
(Flower) see them as extra attributes of the worker, never in place of their own.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

REPORT_EVENT = "worker-celerynb-report"
MAX_PROCESSES = 64  # a report stays small however big the pool
PROC = Path("/proc")
_TICKS = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100
_PAGE = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096


@dataclass(frozen=True)
class ProcessSample:
    """CPU seconds used so far and resident bytes of one process."""

    pid: int
    cpu_seconds: float
    rss: int


def parse_stat(text: str, ticks: int | None = None, page: int | None = None) -> tuple[float, int]:
    """``(cpu seconds, resident bytes)`` from a ``/proc/PID/stat`` line (pure).

    The command name (field 2) may hold spaces and parentheses: fields are counted
    after its last ``)``.
    """
    fields = text.rpartition(")")[2].split()
    # After the name: state is field 3, utime 14, stime 15, rss 24 (man 5 proc).
    utime, stime, rss = int(fields[11]), int(fields[12]), int(fields[21])
    return (utime + stime) / (ticks or _TICKS), rss * (page or _PAGE)


def sample(pid: int, proc: Path = PROC) -> ProcessSample | None:
    """One process's sample, or None when it is gone (or /proc is not there)."""
    try:
        cpu, rss = parse_stat((proc / str(pid) / "stat").read_text())
    except (OSError, ValueError, IndexError):
        return None
    return ProcessSample(pid, cpu, rss)


def children(pid: int, proc: Path = PROC) -> list[int]:
    """The child processes of ``pid`` (a pool's processes), from every thread's
    ``children`` file."""
    found: list[int] = []
    try:
        threads = list((proc / str(pid) / "task").iterdir())
    except OSError:
        return found
    for thread in threads:
        try:
            found += [int(child) for child in (thread / "children").read_text().split()]
        except (OSError, ValueError):
            continue
    return found[:MAX_PROCESSES]


def machine_memory(proc: Path = PROC) -> int | None:
    """Total memory of the machine in bytes (``MemTotal``), or None."""
    try:
        for line in (proc / "meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return None


class ProcessReport:
    """CPU percentages between two calls, and memory, of a process and its children."""

    def __init__(
        self,
        pid: int | None = None,
        *,
        clock: Callable[[], float] = time.monotonic,
        proc: Path = PROC,
    ) -> None:
        self.pid = pid or os.getpid()
        self._clock = clock
        self._proc = proc
        self._previous: dict[int, ProcessSample] = {}
        self._previous_at: float | None = None

    def fields(self) -> dict[str, Any]:
        """The event's fields: ``celerynb_processes`` as ``[pid, cpu %, rss]`` lists
        (the main process first; cpu None on a process's first report) and
        ``celerynb_memory_total``."""
        now = self._clock()
        pids = [self.pid, *children(self.pid, self._proc)]
        samples = [s for s in (sample(pid, self._proc) for pid in pids) if s is not None]
        elapsed = None if self._previous_at is None else now - self._previous_at
        rows = []
        for current in samples:
            before = self._previous.get(current.pid)
            cpu = None
            if before is not None and elapsed and elapsed > 0:
                cpu = round(max(current.cpu_seconds - before.cpu_seconds, 0.0) / elapsed * 100, 1)
            rows.append([current.pid, cpu, current.rss])
        self._previous = {s.pid: s for s in samples}
        self._previous_at = now
        return {
            "celerynb_processes": rows,
            "celerynb_memory_total": machine_memory(self._proc),
        }


_report: ProcessReport | None = None


def _send_report(sender: Any = None, **_: Any) -> None:
    """``heartbeat_sent``'s receiver, in the worker's main process (``sender``: its Heart)."""
    global _report
    eventer = getattr(sender, "eventer", None)
    if eventer is None or not PROC.is_dir():
        return
    try:
        if _report is None or _report.pid != os.getpid():
            _report = ProcessReport()
        eventer.send(REPORT_EVENT, **_report.fields())
    except Exception as exc:  # a report never disturbs the worker
        log.debug("celerynb: the worker report was not sent: %s", exc)


def install() -> None:
    """Send a report with every heartbeat of a worker started in this process.

    Must run before the worker starts (Celery looks for receivers of
    ``heartbeat_sent`` once): ``celerynb.worker.register`` calls it.
    """
    from celery.signals import heartbeat_sent

    heartbeat_sent.connect(_send_report, weak=False, dispatch_uid="celerynb-worker-report")
