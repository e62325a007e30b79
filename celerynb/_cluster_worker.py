"""The Celery worker a LocalCluster starts and keeps alive: its pool size, its command
line, waiting for it to answer, and the thread that has it replaced when it dies."""

from __future__ import annotations

import logging
import os
import subprocess
import sys
import threading
import time
import warnings
import weakref
from pathlib import Path
from typing import TYPE_CHECKING

from ._errors import ClusterStartError

if TYPE_CHECKING:
    from ._cluster import LocalCluster

# LocalCluster's logger: what it says of its worker comes under one name.
log = logging.getLogger("celerynb._cluster")


PROCESSES_PER_CPU = 256  # threads for I/O-bound tasks may be many; not a million


def _processes_argument(processes: int | None, workers: int | None) -> int:
    """The pool size asked for, from ``processes=`` or its deprecated name ``workers=``."""
    if workers is not None:
        if processes is not None:
            raise TypeError("give LocalCluster processes= only (workers= is its old name)")
        warnings.warn(
            "LocalCluster(workers=N) is deprecated: N is the number of pool processes of "
            "one worker; write LocalCluster(processes=N)",
            DeprecationWarning,
            stacklevel=3,
        )
        processes = workers
    if processes is None:
        return 2
    if not isinstance(processes, int) or isinstance(processes, bool) or processes < 1:
        raise ValueError(f"processes must be a positive int, got {processes!r}")
    most = PROCESSES_PER_CPU * (os.cpu_count() or 1)
    if processes > most:  # a typo's 10**6 would fork (or start threads) until the OS fails
        raise ValueError(
            f"processes={processes} is more than this machine can run: at most {most} "
            f"({PROCESSES_PER_CPU} per CPU)"
        )
    return processes


def worker_command(
    *,
    name: str,
    pool: str,
    processes: int,
    log_path: Path,
    queues: list[str] | None,
    memory_limit: int | None,
) -> list[str]:
    """The command line of a worker named ``name`` with ``processes`` ``pool`` processes,
    logging to ``log_path``, taking ``queues`` (else Celery's default) and replacing a
    pool process that stays over ``memory_limit`` bytes (None: no limit)."""
    command = [
        sys.executable,
        "-m",
        "celery",
        "-A",
        "celerynb.worker",
        "worker",
        f"--pool={pool}",
        f"--concurrency={processes}",
        "--loglevel=INFO",
        "-n",
        name,
        "--without-gossip",
        "--without-mingle",
        "-O",
        "fair",
        f"--logfile={log_path}",
    ]
    if queues:
        command += ["-Q", ",".join(queues)]
    if memory_limit is not None:
        # Celery replaces a process still this big after a task (a leak, say).
        command.append(f"--max-memory-per-child={memory_limit // 1024}")
    return command


def wait_for_answer(
    broker_url: str, name: str, worker: subprocess.Popen[bytes], timeout: float, directory: Path
) -> None:
    """Return once the worker ``name`` (the process ``worker``) answers a ping over
    ``broker_url``.

    Raises:
        ClusterStartError: it exited, or did not answer in ``timeout`` s; the end of its
            logs (in ``directory``) says why.
    """
    from celery import Celery

    probe = Celery("celerynb-probe", broker=broker_url, set_as_current=False)
    deadline = time.monotonic() + timeout
    try:
        while time.monotonic() < deadline:
            if worker.poll() is not None:
                raise ClusterStartError(
                    f"the Celery worker exited with code {worker.returncode}:\n"
                    f"{worker_logs(directory)}"
                )
            replies = probe.control.ping(destination=[name], timeout=0.5)
            if replies:
                return
        raise ClusterStartError(
            f"the Celery worker did not answer in {timeout:.0f}s:\n{worker_logs(directory)}"
        )
    finally:
        probe.close()


def worker_logs(directory: Path) -> str:
    """The end of the worker's stderr and log in ``directory``."""
    text = ""
    for name in ("worker.stderr", "worker.log"):
        path = directory / name
        if path.exists():
            text += path.read_text(errors="replace")[-2000:]
    return text


def _supervise(
    cluster_ref: weakref.ref[LocalCluster],
    worker: subprocess.Popen[bytes],
    stop: threading.Event,
) -> None:
    """Wait for ``worker`` to end; unless the cluster is closing, have it replaced at
    once (the thread holds no strong reference: a dropped cluster is still collected)."""
    worker.wait()
    cluster = cluster_ref()
    if cluster is None or stop.is_set():
        return
    try:
        cluster._check_worker()
    except Exception:  # said in the log; the cluster's repr says it has no worker
        if not stop.is_set():  # (closing makes the broker go away mid-wait)
            log.exception("celerynb: LocalCluster: could not restart the worker")
