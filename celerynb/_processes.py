"""What a LocalCluster leaves on this machine: its files made private, its processes
stopped for good, and the data directories of clusters whose owner died removed."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import stat
import subprocess
import tempfile
from pathlib import Path
from typing import Any

from ._lifeline import Lifeline

DATA_PREFIX = "celerynb-data-"


def _private_file(path: Path, text: str = "") -> Path:
    """Create (or empty) ``path`` readable by this user only (0600), holding ``text``.

    Log files too are created here, before the process that writes them opens them
    with its own (wider) mode.
    """
    fd = os.open(path, os.O_CREAT | os.O_WRONLY | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as file:
        file.write(text)
    return path


def _stop_process(proc: subprocess.Popen[bytes], grace: float = 5.0) -> None:
    if proc.poll() is not None:
        return
    try:
        # Each process leads its own session: signal the whole group (pool children too).
        # SIGQUIT is Celery's cold shutdown (running tasks are not waited for); Redis
        # shuts down cleanly on SIGTERM.
        command = proc.args
        program = command[0] if isinstance(command, list | tuple) else command
        is_redis = Path(str(program)).name == "redis-server"
        stop_signal = signal.SIGTERM if is_redis else signal.SIGQUIT
        pgid = os.getpgid(proc.pid)
        if pgid == proc.pid:
            os.killpg(pgid, stop_signal)
        else:
            proc.send_signal(stop_signal)
        proc.wait(grace)
    except (ProcessLookupError, subprocess.TimeoutExpired, PermissionError):
        pass
    if proc.poll() is None:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            if os.getpgid(proc.pid) == proc.pid:
                os.killpg(proc.pid, signal.SIGKILL)
            else:
                proc.kill()
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(grace)


def _data_directory(fallback: Path) -> str:
    """A new 0700 directory in ``/dev/shm`` (memory), else inside ``fallback``. Its name
    carries this process's pid: the directories of clusters whose owner died without
    closing them (SIGKILL, a crash) are removed here, so memory is not held forever."""
    shm = Path("/dev/shm")
    if shm.is_dir() and os.access(shm, os.W_OK | os.X_OK):
        remove_orphan_data_directories(shm)
        try:
            return tempfile.mkdtemp(prefix=f"{DATA_PREFIX}{os.getpid()}-", dir=shm)
        except OSError:
            pass
    data = fallback / "data"
    data.mkdir(mode=0o700)
    return str(data)


def remove_orphan_data_directories(parent: Path) -> list[str]:
    """Remove this user's cluster data directories in ``parent`` whose owner process is
    gone; return their names."""
    removed = []
    for entry in parent.glob(f"{DATA_PREFIX}*-*"):
        pid = entry.name[len(DATA_PREFIX) :].split("-", 1)[0]
        try:
            found = entry.lstat()  # a symlink planted by another user is never followed
            if not pid.isdigit() or not stat.S_ISDIR(found.st_mode) or found.st_uid != os.getuid():
                continue
            os.kill(int(pid), 0)
        except ProcessLookupError:  # its owner is dead
            shutil.rmtree(entry, ignore_errors=True)
            removed.append(entry.name)
        except OSError:  # alive (maybe another user's), or gone meanwhile
            continue
    return removed


def _stop_all(
    processes: list[subprocess.Popen[bytes]],
    directory: str,
    on_close: list[Any],
    lifeline: Lifeline,
) -> None:
    # Sessions first: their watchers would take Redis stopping for an outage.
    while on_close:
        with contextlib.suppress(Exception):
            on_close.pop()()
    # Files next: a kernel being shut down may be signalled while the stops below
    # wait, and the processes die with it anyway (the lifeline); the files would not.
    shutil.rmtree(directory, ignore_errors=True)
    # Workers first (they talk to Redis while shutting down), then Redis.
    for proc in reversed(processes):
        with contextlib.suppress(KeyboardInterrupt):
            _stop_process(proc)
    # A pool child that outlived its parent still holds the group; make sure it is gone.
    for proc in processes:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, signal.SIGKILL)
    processes.clear()
    lifeline.release()
