"""LocalCluster: a real redis-server on a free loopback port and real Celery workers.

Its parts live beside it: the private Redis (``_redis_server``), the worker's command
line and supervisor thread (``_cluster_worker``), stopping processes and removing files
(``_processes``).
"""

from __future__ import annotations

import atexit
import contextlib
import html
import logging
import os
import secrets
import shutil
import signal
import socket
import subprocess
import tempfile
import threading
import time
import warnings
import weakref
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ._cluster_worker import _processes_argument, _supervise, wait_for_answer, worker_command
from ._config import BACKEND_ENV, BROKER_ENV, SECRET_ENV, default_backend, mask_url
from ._errors import ClusterStartError
from ._lifeline import Lifeline
from ._memory import MEMORY_LIMIT_ENV, memory_limit_bytes, readable_size
from ._processes import _data_directory, _private_file, _stop_all, _stop_process
from ._redis_server import find_redis_server, start_redis_server
from ._supervision import LogText, RestartBudget, how_it_ended, last_lines

log = logging.getLogger(__name__)

START_TIMEOUT = 60.0


class LocalCluster:
    """A private Redis (broker and result backend) and one Celery worker with
    ``processes`` pool processes: its ``--concurrency``, how many jobs run side by
    side (threads, with ``pool="threads"``).

    Everything it starts runs on this machine, bound to 127.0.0.1, with a fresh
    signing secret. Its Redis asks for a fresh password (``redis_password``, part
    of ``broker_url`` and ``backend_url``, masked in every repr) and refuses the
    commands that reach beyond the data (``DISABLED_REDIS_COMMANDS``); its files
    sit in a directory only this user can read. ``close()`` (or leaving the
    ``with`` block, or interpreter exit) stops every process it started and
    removes that directory; if this process dies without closing it, a watchdog
    (``Lifeline``) stops them, whichever thread made the cluster.

    The worker is supervised: when it dies (killed, crashed, out of memory) a new
    one starts within a few seconds, under a new name (the jobs that ran on the dead
    one end LOST, queued jobs run on the new one); after ``MAX_RESTARTS`` deaths
    within ``RESTART_WINDOW`` seconds it is given up on, and ``gave_up`` (and the
    repr) says why. ``restart()`` starts fresh worker processes (modules imported
    again), ``logs()`` shows the worker's last log lines.

    ``memory_limit`` bounds each pool process ("2GB", bytes; "auto", the default: the
    machine's memory over ``processes``; None: no limit): a task that goes over it
    fails with ``MemoryLimitError`` (see ``_memory``). ``scale(n)`` changes the number
    of processes while jobs run.

    ``broker`` (and ``backend``) use an existing broker and result backend instead
    of a private Redis, e.g. ``broker="pyamqp://guest@localhost//", backend="rpc://"``;
    its worker then takes a queue of its own (``queues``, ``celerynb-<id>``; a
    session connected to the cluster sends there), so that other workers on that
    broker never get its jobs, nor it theirs; or give ``queues``. ``workers=`` is
    the deprecated name of ``processes=``.

    Raises:
        ValueError: ``processes`` is not a positive int, ``memory_limit`` not a size.
        RedisServerNotFoundError: no redis-server to start (and no ``broker``).
        ClusterStartError: Redis or the worker did not come up in ``start_timeout`` s.
    """

    def __init__(
        self,
        processes: int | None = None,
        *,
        pool: str = "prefork",
        queues: list[str] | None = None,
        broker: str | None = None,
        backend: str | None = None,
        redis_server: str | None = None,
        start_timeout: float = START_TIMEOUT,
        memory_limit: str | int | None = "auto",
        workers: int | None = None,
    ) -> None:
        processes = _processes_argument(processes, workers)
        self.processes = processes
        self.pool = pool
        self._memory_limit_asked = memory_limit
        self.memory_limit = self._memory_limit_for(processes)
        self.queues = queues
        self.secret = secrets.token_hex(32)
        self._redis_path = None if broker else (redis_server or find_redis_server())
        self.redis_password = None if broker else secrets.token_urlsafe(32)
        self._lifeline = Lifeline()
        self._dir = Path(tempfile.mkdtemp(prefix="celerynb-cluster-"))
        self._processes: list[subprocess.Popen[bytes]] = []
        self._worker: subprocess.Popen[bytes] | None = None
        self._worker_ready = False  # it answered a ping: a death now is not at start
        self._lock = threading.RLock()
        self._budget = RestartBudget()
        self._generation = 0
        self.restarts = 0  # times a dead worker was replaced
        self.gave_up: str | None = None  # why a dead worker is not replaced any more
        self._stop_supervising = threading.Event()
        self._scaling = False  # scale() judges the worker it starts: no replacing it
        self._on_worker_stopped: list[Callable[[str, str], None]] = []
        self._on_close: list[Any] = [self._stop_supervising.set]
        # Big data between the kernel and the workers: a 0700 directory in memory
        # (/dev/shm) where there is one, removed with the cluster (see _localstore).
        data_dir = _data_directory(self._dir)
        self.store_url = f"file://{data_dir}"
        self._on_close.append(lambda: shutil.rmtree(data_dir, ignore_errors=True))
        # The callbacks ride along so that interpreter exit, too, stops the sessions'
        # watchers before Redis goes (else each would warn of a lost connection).
        self._finalizer = weakref.finalize(
            self, _stop_all, self._processes, str(self._dir), self._on_close, self._lifeline
        )
        atexit.register(self._finalizer)
        self.port: int | None = None
        try:
            if broker:
                self.broker_url = broker
                self.backend_url = backend or default_backend(broker)
                name = secrets.token_hex(4)
                if queues is None:  # a broker others use: a queue of its own, both ways
                    self.queues = [f"celerynb-{name}"]
            else:
                self.port = self._start_redis(start_timeout)
                url = f"redis://:{self.redis_password}@127.0.0.1:{self.port}"
                self.broker_url = f"{url}/0"
                self.backend_url = backend or f"{url}/1"
                name = str(self.port)
            self._base_name = f"celerynb-{name}"
            self.worker_name = f"{self._base_name}@{socket.gethostname()}"
            self._start_worker()
            self._wait_for_worker(start_timeout)
        except BaseException:
            self.close()
            raise

    # -- lifecycle ------------------------------------------------------------
    def close(self) -> None:
        """Stop watching (sessions connected to it), stop every process this cluster
        started and remove its files."""
        self._finalizer()

    def on_close(self, callback: Any) -> None:
        """Call ``callback()`` before the cluster stops (sessions stop watching)."""
        self._on_close.append(callback)

    def on_worker_stopped(self, callback: Callable[[str, str], None]) -> None:
        """Call ``callback(worker_name, why)`` when a worker of this cluster is gone
        (restarted, or dead and replaced): sessions end its running jobs LOST at once."""
        self._on_worker_stopped.append(callback)

    def _tell_worker_stopped(self, name: str, why: str) -> None:
        for callback in list(self._on_worker_stopped):
            try:
                callback(name, why)
            except Exception as exc:  # a closed session's: the others are still told
                log.debug("celerynb: telling that %s stopped failed: %s", name, exc)

    @property
    def closed(self) -> bool:
        return not self._finalizer.alive

    @property
    def workers(self) -> int:
        """Deprecated: ``processes``."""
        warnings.warn(
            "LocalCluster.workers is deprecated: it counts pool processes of one worker; "
            "use LocalCluster.processes",
            DeprecationWarning,
            stacklevel=2,
        )
        return self.processes

    def __enter__(self) -> LocalCluster:
        return self

    def __exit__(self, *exc_info: Any) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"<LocalCluster {mask_url(getattr(self, 'broker_url', '?'))} {self._state()}>"

    def _state(self) -> str:
        noun = "process" if self.processes == 1 else "processes"
        if self.closed:
            return "closed"
        if self.gave_up:
            return f"no worker: {self.gave_up}"
        restarted = f", restarted {self.restarts}x" if self.restarts else ""
        return f"1 worker, {self.processes} {noun}{restarted}"

    def _repr_html_(self) -> str:
        rows = [
            ("broker and backend", mask_url(getattr(self, "broker_url", "?"))),
            ("worker", getattr(self, "worker_name", "?")),
            ("processes", f"{self.processes} ({self.pool} pool)"),
            ("memory limit", self._limit_text()),
            ("state", self._state()),
            ("big data", self.store_url),
            ("log", f"{self.log_path} (cluster.logs())"),
        ]
        cells = "".join(
            f"<tr><th style='text-align:left'>{html.escape(k)}</th>"
            f"<td style='text-align:left'>{html.escape(v)}</td></tr>"
            for k, v in rows
        )
        return f"<div class='celerynb-cluster'><b>LocalCluster</b><table>{cells}</table></div>"

    def summary(self) -> str:
        """Its state in a line: ``1 worker, 2 processes, restarted 1x; memory limit
        2.0 GB per process`` (or why it has no worker)."""
        return f"{self._state()}; {self._limit_text()}"

    def _memory_limit_for(self, processes: int) -> int | None:
        """The limit per pool process, in bytes. Only prefork pool processes are limited
        (each sets it as it starts): another pool gets none, and asking for one is refused."""
        if self.pool == "prefork":
            return memory_limit_bytes(self._memory_limit_asked, processes)
        if self._memory_limit_asked not in (None, "auto"):
            raise ValueError(
                f"memory_limit bounds prefork pool processes; pool={self.pool!r} has none "
                "(use memory_limit=None or the prefork pool)"
            )
        return None

    def _limit_text(self) -> str:
        if self.memory_limit is None:
            return "no memory limit"
        return f"memory limit {readable_size(self.memory_limit)} per process"

    def scale(self, processes: int, timeout: float = START_TIMEOUT) -> None:
        """Run ``processes`` pool processes from now on, while jobs run: a worker of that
        size starts and takes the queue, and the current one stops taking jobs and
        exits once those it runs are done (Celery's warm shutdown; the ones it had
        taken but not started go back to the queue). With ``memory_limit="auto"`` the
        limit follows (the machine's memory over ``processes``).

        Raises:
            ValueError: ``processes`` is not a positive int, or more than the machine's
                memory can give 64 MiB each under ``memory_limit="auto"``.
            ClusterStartError: the new worker did not come up within ``timeout`` s: it is
                stopped, and the cluster goes on as it was (its worker, its size).
        """
        processes = _processes_argument(processes, None)
        if self.closed:
            raise ClusterStartError("this LocalCluster is closed")
        memory_limit = self._memory_limit_for(processes)  # a size refused: nothing changed
        with self._lock:
            before = (self.processes, self.memory_limit, self.worker_name, self.restarts)
            running = list(self._processes)
            old, self._worker = self._worker, None
            self.processes = processes
            self.memory_limit = memory_limit
            self._scaling = True
            self._start_next_worker()
        try:
            self._wait_for_worker(timeout)
        except ClusterStartError as exc:
            self._give_up_scaling(old, before, running)
            raise ClusterStartError(
                f"could not scale to {processes} processes; still {before[0]}: {exc}"
            ) from None
        except BaseException:  # interrupted (Ctrl-C): as it was, too
            self._give_up_scaling(old, before, running)
            raise
        finally:
            self._scaling = False
        self._check_worker()  # one that died while scale() was judging it: replaced now
        if old is not None and old.poll() is None:
            old.send_signal(signal.SIGTERM)  # its main process only: the pool finishes
            threading.Thread(
                target=self._reap, args=(old,), name="celerynb-scale-down", daemon=True
            ).start()

    def _give_up_scaling(
        self,
        old: subprocess.Popen[bytes] | None,
        before: tuple[int, int | None, str, int],
        running: list[subprocess.Popen[bytes]],
    ) -> None:
        """The worker ``scale`` started (or those the supervisor started in its place)
        did not come up: stop them and go back to ``old`` (unless it died meanwhile: the
        supervisor then replaces it, at the size it had)."""
        with self._lock:
            started = [proc for proc in self._processes if proc not in running]
            self._worker = old
            self.processes, self.memory_limit, self.worker_name, self.restarts = before
            self._worker_ready = old is not None  # it was ready before scale() began
            for proc in started:
                self._forget(proc)
            self._scaling = False
        self._check_worker()  # ``old`` died meanwhile: replaced as any dead worker is

    def _reap(self, worker: subprocess.Popen[bytes]) -> None:
        """Forget a worker stopped warm once it has exited (its jobs done)."""
        worker.wait()
        with self._lock:
            self._forget(worker)

    def logs(self, n: int = 100) -> LogText:
        """The last ``n`` lines of the worker's log (and of its stderr, where it wrote
        any: a worker that died at start says why there)."""
        text = "\n".join(last_lines(self.log_path, n))
        errors = last_lines(self._dir / "worker.stderr", n)
        if errors:
            text += "\n-- worker stderr --\n" + "\n".join(errors)
        return LogText(text)

    def restart(self, timeout: float = START_TIMEOUT) -> None:
        """Stop the worker (its running jobs end LOST) and start a fresh one: new
        processes, so modules are imported again. Also after ``gave_up``.

        Raises:
            ClusterStartError: the new worker did not come up within ``timeout`` s.
        """
        if self.closed:
            raise ClusterStartError("this LocalCluster is closed")
        with self._lock:
            worker, self._worker = self._worker, None  # the supervisor leaves it be
            stopped = self.worker_name
            if worker is not None:
                _stop_process(worker)
                self._forget(worker)
            self._budget, self.gave_up = RestartBudget(), None
            self._start_next_worker()
        if worker is not None:
            self._tell_worker_stopped(
                stopped, f"worker {stopped} stopped: cluster.restart() ended it while the job ran"
            )
        self._wait_for_worker(timeout)

    def _check_worker(self) -> None:
        """Replace a worker that died (the supervisor thread calls this)."""
        with self._lock:
            worker = self._worker
            if (
                worker is None
                or self._stop_supervising.is_set()
                or self._scaling
                or worker.poll() is None
            ):
                return
            ended = how_it_ended(worker.returncode)
            dead = self.worker_name
            self._forget(worker)  # its pool processes too: what they ran is lost
            self._worker = None
            restart = self._budget.allows_restart(time.monotonic(), self._worker_ready)
            if not restart:
                self.gave_up = self._budget.why_not(ended)
                log.warning("celerynb: LocalCluster: %s", self.gave_up)
            else:
                log.warning(
                    "celerynb: LocalCluster: the worker %s %s; starting a new one", dead, ended
                )
                self.restarts += 1
                self._start_next_worker()
        self._tell_worker_stopped(dead, f"worker {dead} stopped: it {ended} while the job ran")
        if not restart:
            return
        with contextlib.suppress(ClusterStartError):  # died at start: the next look counts it
            self._wait_for_worker(START_TIMEOUT)

    def _start_next_worker(self) -> None:
        self._generation += 1
        self.worker_name = f"{self._base_name}-{self._generation}@{socket.gethostname()}"
        self._start_worker()

    def _forget(self, worker: subprocess.Popen[bytes]) -> None:
        """A dead (or stopped) worker gone for good, its orphaned pool processes too."""
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(worker.pid, signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            worker.wait(5)
        with contextlib.suppress(ValueError):
            self._processes.remove(worker)

    @property
    def pids(self) -> list[int]:
        """PIDs of the processes started directly (redis-server, worker main process)."""
        return [p.pid for p in self._processes]

    @property
    def log_path(self) -> Path:
        return self._dir / "worker.log"

    def worker_env(self) -> dict[str, str]:
        """Environment for a worker of this cluster (also for extra workers you start)."""
        env = dict(os.environ)
        env[BROKER_ENV] = self.broker_url
        env[BACKEND_ENV] = self.backend_url
        env[SECRET_ENV] = self.secret
        env.pop(MEMORY_LIMIT_ENV, None)
        if self.memory_limit is not None:
            env[MEMORY_LIMIT_ENV] = str(self.memory_limit)
        path = os.pathsep.join(p for p in [os.getcwd(), env.get("PYTHONPATH", "")] if p)
        env["PYTHONPATH"] = path
        return env

    # -- processes ------------------------------------------------------------
    def _start_redis(self, timeout: float) -> int:
        return start_redis_server(
            str(self._redis_path),
            self._dir,
            str(self.redis_password),
            self._lifeline,
            self._processes,
            timeout,
        )

    def _start_worker(self) -> None:
        command = worker_command(
            name=self.worker_name,
            pool=self.pool,
            processes=self.processes,
            log_path=self.log_path,
            queues=self.queues,
            memory_limit=self.memory_limit,
        )
        if self._generation == 0:  # a restarted worker's lines follow its predecessor's
            _private_file(self.log_path)
            _private_file(self._dir / "worker.stderr")
        with open(self._dir / "worker.stderr", "ab") as stderr:
            proc = self._lifeline.popen(
                command,
                # Its owner died without closing it: nothing is left to shut down cleanly
                # for (Redis dies too, and a cold shutdown then hangs); its pool with it.
                stop_signal=signal.SIGKILL,
                env=self.worker_env(),
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=stderr,
            )
        self._processes.append(proc)
        self._worker, self._worker_ready = proc, False
        threading.Thread(
            target=_supervise,
            args=(weakref.ref(self), proc, self._stop_supervising),
            name="celerynb-supervisor",
            daemon=True,
        ).start()

    def _wait_for_worker(self, timeout: float) -> None:
        worker = self._worker
        if worker is None:
            raise ClusterStartError("no worker was started")
        wait_for_answer(self.broker_url, self.worker_name, worker, timeout, self._dir)
        with self._lock:
            if worker is self._worker:
                self._worker_ready = True
