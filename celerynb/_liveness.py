"""Kernel side: telling a job whose worker died from a job that is merely slow.

A worker killed as a whole (SIGKILL, a lost machine) never writes a final state:
its tasks stay STARTED or PROGRESS until their results expire. Evidence, weakest
first:

- heartbeats: Celery workers send a ``worker-heartbeat`` event every 2 s (even
  without ``-E``); ``WorkerMonitor`` listens on one broker connection. Silence alone
  is not death: a ``solo`` pool (or a threads pool holding the GIL) sends none while
  a task runs, a worker may not be heard yet (just started, or before this kernel
  was), and nothing is heard while the broker itself is away;
- news: a job whose task keeps writing progress is alive, heartbeats or not;
- a probe, for a worker that is silent (or never heard) while its job brings no
  news: a control ``ping`` to that worker, and, when the worker runs on this machine,
  the state of the task's process (alive, stopped by SIGSTOP, or gone).

``judge`` (pure) decides from that evidence; the watcher acts on it: ``LOST`` only
when the worker neither answers nor has a live process here, a note otherwise.
"""

from __future__ import annotations

import logging
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

# Imported now, in the importing thread: left to its first use, it is imported by the
# listener thread while the thread sending the first job imports it through Celery too,
# and two threads importing a package and its submodule at once can fail with
# "_DeadlockError: deadlock detected by _ModuleLock('celery.events.receiver')".
import celery.events  # noqa: F401

log = logging.getLogger(__name__)

LOST_AFTER = 6.0  # seconds without a heartbeat: three missed beats of Celery's 2 s
OFFLINE_GRACE = 2.0  # seconds after a worker-offline event
NOT_HEARD_GRACE = 3.0  # seconds of listening before a worker never heard is probed
PROBE_EVERY = 3.0  # seconds between probes of one worker
PING_TIMEOUT = 1.0
UNKNOWN_AFTER = 5.0  # seconds an attached task may stay PENDING before workers are asked
UNKNOWN_NOTE = (
    "no state is stored for this task and no worker has it: a wrong id, a result that "
    "expired (result_expires), or a task still waiting in a queue"
)

# What a probe found of the task's process on this machine.
PROCESS_ALIVE, PROCESS_STOPPED, PROCESS_GONE = "alive", "stopped", "gone"


@dataclass(frozen=True)
class Probe:
    """What asking a worker directly gave: did it answer a ping, and, when it runs on
    this machine, the state of the task's process (else None)."""

    at: float
    answered: bool
    process: str | None = None


@dataclass(frozen=True)
class Evidence:
    """What the kernel knows of the worker running one job, at one moment."""

    listening_for: float  # seconds the heartbeat listener has been connected (0: not)
    heard: bool  # a heartbeat (or online event, or ping answer) came from it
    silent_for: float | None  # known silence since then (None: nothing can be said)
    news_age: float | None  # seconds since the job last brought news (None: never)
    probe: Probe | None  # the latest probe, fresh enough


ALIVE, PROBE, WAIT, LOST = "alive", "probe", "wait", "lost"


def judge(
    evidence: Evidence,
    *,
    lost_after: float = LOST_AFTER,
    not_heard_grace: float = NOT_HEARD_GRACE,
) -> tuple[str, str | None]:
    """``(verdict, note)``: ALIVE, PROBE (ask the worker), WAIT (alive as far as can be
    told, with a note saying what is odd) or LOST (pure)."""
    if evidence.news_age is not None and evidence.news_age < lost_after:
        return ALIVE, None
    if evidence.listening_for <= 0:
        return ALIVE, None  # no connection to the broker: nothing can be said
    if evidence.heard:
        if evidence.silent_for is None or evidence.silent_for < lost_after:
            return ALIVE, None
    elif evidence.listening_for < not_heard_grace:
        return ALIVE, None
    probe = evidence.probe
    if probe is None:
        return PROBE, None
    if probe.answered:
        return ALIVE, None
    if probe.process == PROCESS_STOPPED:
        return (
            WAIT,
            "its worker process is stopped (SIGSTOP?): the job goes on when it is continued",
        )
    if probe.process == PROCESS_ALIVE:
        return WAIT, (
            "its worker sends no heartbeats and answers no ping, but its process is alive "
            "(a solo or threads pool busy in a task?)"
        )
    return LOST, None


def process_state(pid: int, proc: Path = Path("/proc")) -> str:
    """``alive``, ``stopped`` or ``gone`` for a process of this machine."""
    try:
        stat = (proc / str(pid) / "stat").read_text()
    except OSError:
        return PROCESS_GONE
    state = stat.rpartition(")")[2].split()[:1]
    if not state or state[0] in ("Z", "X", "x"):
        return PROCESS_GONE
    return PROCESS_STOPPED if state[0] in ("T", "t") else PROCESS_ALIVE


def on_this_machine(hostname: str) -> bool:
    """Whether a Celery node name (``name@host``) names this machine."""
    return hostname.partition("@")[2] == socket.gethostname()


class WorkerMonitor:
    """Heartbeats heard from each worker, and probes of the silent ones."""

    def __init__(
        self,
        app: Any,
        lost_after: float = LOST_AFTER,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._app = app
        self.lost_after = lost_after
        self._clock = clock
        self._last_heard: dict[str, float] = {}
        self._offline: set[str] = set()
        self._fresh_at = 0.0  # when the listening thread last drained the connection
        self._connected_since: float | None = None
        self._probes: dict[str, Probe] = {}
        self._probing: set[str] = set()
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
        """True once a heartbeat (or online event, or ping answer) of ``hostname`` came."""
        return hostname in self._last_heard

    def listening_for(self, now: float | None = None) -> float:
        """Seconds the listener has been connected to the broker (0 when it is not)."""
        since = self._connected_since
        return 0.0 if since is None else (self._clock() if now is None else now) - since

    def silent_for(self, hostname: str, now: float | None = None) -> float | None:
        """Seconds since ``hostname`` was last heard, when that is known to be
        silence: the listener drained the connection since then, has been connected
        long enough to have heard a beat, and the worker was heard before. None when
        nothing can be said."""
        now = self._clock() if now is None else now
        last = self._last_heard.get(hostname)
        if last is None:
            return None
        if self.listening_for(now) < self.lost_after and hostname not in self._offline:
            return None  # just (re)connected: beats sent meanwhile were lost with it
        if hostname not in self._offline and self._fresh_at - last < self.lost_after:
            return None  # the listener itself may be behind (a busy kernel)
        return now - last

    def evidence(self, hostname: str, news_age: float | None, now: float) -> Evidence:
        """What is known of ``hostname`` now (see ``judge``)."""
        probe = self._probes.get(hostname)
        if probe is not None and now - probe.at > 2 * PROBE_EVERY:
            probe = None
        silent = self.silent_for(hostname, now)
        if hostname in self._offline and silent is not None and silent >= OFFLINE_GRACE:
            silent = max(silent, self.lost_after)  # it said it left
        return Evidence(self.listening_for(now), self.heard(hostname), silent, news_age, probe)

    # -- probes -------------------------------------------------------------------
    def probe(self, hostname: str, pid: int | None) -> None:
        """Ask ``hostname`` for a ping (and look at ``pid`` here when it runs on this
        machine), in a thread of its own; at most one probe per worker at a time and
        one every ``PROBE_EVERY`` seconds."""
        now = self._clock()
        with self._lock:
            last = self._probes.get(hostname)
            if hostname in self._probing or (last is not None and now - last.at < PROBE_EVERY):
                return
            self._probing.add(hostname)
        threading.Thread(
            target=self._probe, args=(hostname, pid), name="celerynb-probe", daemon=True
        ).start()

    def _probe(self, hostname: str, pid: int | None) -> None:
        try:
            try:
                replies = self._app.control.ping(destination=[hostname], timeout=PING_TIMEOUT)
            except Exception as exc:  # the broker is away: nothing learnt
                log.debug("celerynb: pinging %s failed: %s", hostname, exc)
                return
            answered = any(hostname in reply for reply in replies or ())
            process = None
            if not answered and pid and on_this_machine(hostname):
                process = process_state(pid)
            now = self._clock()
            self._probes[hostname] = Probe(now, answered, process)
            if answered:
                self._last_heard[hostname] = now
                self._offline.discard(hostname)
        finally:
            with self._lock:
                self._probing.discard(hostname)

    # -- listening thread -------------------------------------------------------
    def _run(self) -> None:
        backoff = 0.5
        while not self._stop.is_set():
            try:
                with self._app.connection_for_read() as connection:
                    receiver = self._app.events.Receiver(
                        connection,
                        # worker-* events only: task events (one or more per task, when
                        # workers send them) would cost this kernel a decode each, for nothing.
                        routing_key="worker.#",
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
                    connection.ensure_connection(max_retries=1)
                    self._connected_since = self._clock()
                    # wakeup: ask every worker for a heartbeat now, to know them at once
                    receiver.capture(limit=None, timeout=None, wakeup=True)
                    backoff = 0.5
            except Exception as exc:
                log.debug("celerynb: listening to worker heartbeats failed: %s", exc)
                self._connected_since = None
                if self._stop.wait(backoff):
                    return
                backoff = min(backoff * 2, 5.0)
            finally:
                self._connected_since = None

    def _drained(self) -> None:
        self._fresh_at = self._clock()

    def _heard(self, event: dict[str, Any]) -> None:
        hostname = event.get("hostname")
        if hostname:
            now = self._clock()
            self._last_heard[hostname] = now
            self._fresh_at = now
            self._offline.discard(hostname)

    def _gone(self, event: dict[str, Any]) -> None:
        hostname = event.get("hostname")
        if hostname:
            self._offline.add(hostname)
            self._last_heard.setdefault(hostname, self._clock())


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
