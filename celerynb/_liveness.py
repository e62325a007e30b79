"""Kernel side: telling a job whose worker died from a job that is merely slow.

A worker killed as a whole (SIGKILL, a lost machine) never writes a final state:
its tasks stay STARTED or PROGRESS until their results expire. Celery workers send
a ``worker-heartbeat`` event every 2 s (even without ``-E``). ``WorkerMonitor``
listens to them on one broker connection from one thread; the watcher asks it
which workers fell silent and finishes their running jobs as ``LOST``.
"""

from __future__ import annotations

import logging
import threading
import time
from typing import Any

from ._errors import CelerynbError

log = logging.getLogger(__name__)

LOST_AFTER = 6.0  # seconds without a heartbeat: three missed beats of Celery's 2 s
OFFLINE_GRACE = 2.0  # seconds after a worker-offline event
UNKNOWN_AFTER = 5.0  # seconds an attached task may stay PENDING before workers are asked
UNKNOWN_NOTE = (
    "no state is stored for this task and no worker has it: a wrong id, a result that "
    "expired (result_expires), or a task still waiting in a queue"
)


class WorkerLostError(CelerynbError):
    """The worker running a job stopped sending heartbeats: it was killed or cut off."""


class WorkerMonitor:
    """Last heartbeat heard from each worker; workers never heard are not judged."""

    def __init__(self, app: Any, lost_after: float = LOST_AFTER) -> None:
        self._app = app
        self.lost_after = lost_after
        self._last_heard: dict[str, float] = {}
        self._offline: set[str] = set()
        self._fresh_at = 0.0  # when the listening thread last drained the connection
        self._stop = threading.Event()
        self._receiver: Any = None
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()

    def start(self) -> None:
        with self._lock:
            if self._thread is None or not self._thread.is_alive():
                self._stop.clear()
                self._thread = threading.Thread(
                    target=self._run, name="celerynb-heartbeats", daemon=True
                )
                self._thread.start()

    def stop(self, timeout: float = 5.0) -> None:
        self._stop.set()
        receiver = self._receiver
        if receiver is not None:
            receiver.should_stop = True
        if self._thread is not None:
            self._thread.join(timeout)

    def workers_heard(self) -> list[str]:
        """Workers heard and not gone offline."""
        return [h for h in list(self._last_heard) if h not in self._offline]

    def heard(self, hostname: str) -> bool:
        """True once a heartbeat (or online event) of ``hostname`` was received."""
        return hostname in self._last_heard

    def silent_for(self, hostname: str, now: float | None = None) -> float | None:
        """Seconds since ``hostname`` was last heard, when that is known to be
        silence: the listener drained the connection since then and the worker was
        heard before. None when nothing can be said."""
        now = time.monotonic() if now is None else now
        last = self._last_heard.get(hostname)
        if last is None:
            return None
        if hostname not in self._offline and self._fresh_at - last < self.lost_after:
            return None  # the listener itself may be behind (a busy kernel)
        return now - last

    def is_lost(self, hostname: str) -> bool:
        """True when ``hostname`` is known to have been silent for ``lost_after``
        seconds (2 s after it said it went offline: its last writes may be in flight)."""
        silent = self.silent_for(hostname)
        if silent is None:
            return False
        return silent >= (OFFLINE_GRACE if hostname in self._offline else self.lost_after)

    # -- listening thread -------------------------------------------------------
    def _run(self) -> None:
        backoff = 0.5
        while not self._stop.is_set():
            try:
                with self._app.connection_for_read() as connection:
                    receiver = self._app.events.Receiver(
                        connection,
                        handlers={
                            "worker-heartbeat": self._heard,
                            "worker-online": self._heard,
                            "worker-offline": self._gone,
                        },
                    )
                    receiver.on_iteration = self._drained
                    self._receiver = receiver
                    if self._stop.is_set():
                        return
                    # wakeup: ask every worker for a heartbeat now, to know them at once
                    receiver.capture(limit=None, timeout=None, wakeup=True)
                    backoff = 0.5
            except Exception as exc:
                log.debug("celerynb: listening to worker heartbeats failed: %s", exc)
                if self._stop.wait(backoff):
                    return
                backoff = min(backoff * 2, 5.0)

    def _drained(self) -> None:
        self._fresh_at = time.monotonic()

    def _heard(self, event: dict[str, Any]) -> None:
        hostname = event.get("hostname")
        if hostname:
            now = time.monotonic()
            self._last_heard[hostname] = now
            self._fresh_at = now
            self._offline.discard(hostname)

    def _gone(self, event: dict[str, Any]) -> None:
        hostname = event.get("hostname")
        if hostname:
            self._offline.add(hostname)
            self._last_heard.setdefault(hostname, time.monotonic())


def tasks_on_workers(app: Any, task_ids: list[str], timeout: float = 1.0) -> dict[str, str]:
    """``{task id: task name}`` of the ``task_ids`` an online worker has (active, reserved
    or scheduled); the name is "" where a worker's answer does not give one."""
    replies = app.control.inspect(timeout=timeout).query_task(*task_ids) or {}
    found: dict[str, str] = {}
    for tasks in replies.values():
        for task_id, answer in (tasks or {}).items():  # id -> [state, request info]
            info = answer[1] if isinstance(answer, list | tuple) and len(answer) == 2 else None
            name = info.get("name") if isinstance(info, dict) else None
            found[task_id] = name if isinstance(name, str) else found.get(task_id, "")
    return found
