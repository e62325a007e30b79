"""Processes that die with their owner, whichever thread started them.

Linux's ``PR_SET_PDEATHSIG`` signals a child when the *thread* that forked it ends
(a LocalCluster made in a helper thread died with that thread), and setting it needs
a ``preexec_fn``, which is unsafe in a process that runs threads (a kernel runs
several). Instead, ``Lifeline`` starts one small watchdog process holding the read
end of a pipe whose write end only the owner holds. The operating system closes that
end when the owner process dies, however it dies; the watchdog then reads EOF and
signals every process group tied to it. A clean shutdown releases it first.

The watchdog runs this file by path with ``python -I -S``: the standard library only,
no import of celerynb, Celery or site packages.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import threading
import time
from typing import Any

GRACE = 5.0  # seconds between a tied group's stop signal and SIGKILL
RELEASE = b"release\n"


class Lifeline:
    """Signals the process groups tied to it when this process dies.

    ``tie(pid, stop_signal)`` a process that leads its own session (``popen`` starts
    one so); ``release()`` once you stopped them yourself, else the watchdog stays (a
    Lifeline garbage-collected unreleased counts as its owner's death).
    """

    def __init__(self, grace: float = GRACE) -> None:
        read_end, write_end = os.pipe()  # not inheritable: no other child gets them
        # A file object: should this Lifeline be dropped unreleased, its end closes too.
        self._pipe = os.fdopen(write_end, "wb", buffering=0)
        try:
            self.watchdog = subprocess.Popen(
                [sys.executable, "-I", "-S", os.path.abspath(__file__), str(read_end), str(grace)],
                pass_fds=(read_end,),
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
                start_new_session=True,  # a kernel interrupt (SIGINT to its group) misses it
            )
        except BaseException:
            self._pipe.close()
            raise
        finally:
            os.close(read_end)
        self._lock = threading.Lock()
        self._released = False

    def popen(self, command: list[str], *, stop_signal: int, **kwargs: Any) -> subprocess.Popen:
        """``subprocess.Popen(command, **kwargs)`` in a session of its own, tied at once."""
        proc = subprocess.Popen(command, start_new_session=True, **kwargs)
        self.tie(proc.pid, stop_signal)
        return proc

    def tie(self, pid: int, stop_signal: int) -> None:
        """On this process's death, send ``stop_signal`` to the process group ``pid``
        (SIGKILL after the grace period)."""
        self._send(f"tie {int(pid)} {int(stop_signal)}\n".encode())

    def release(self, timeout: float = 5.0) -> None:
        """Let the watchdog exit without signalling anything. Idempotent."""
        with self._lock:
            if self._released:
                return
            self._released = True
            with contextlib.suppress(OSError):
                self._pipe.write(RELEASE)
            with contextlib.suppress(OSError):
                self._pipe.close()
        try:
            self.watchdog.wait(timeout)
        except subprocess.TimeoutExpired:
            self.watchdog.kill()
            self.watchdog.wait()

    def _send(self, line: bytes) -> None:
        with self._lock:
            if self._released:
                raise RuntimeError("this Lifeline was released")
            self._pipe.write(line)  # short lines: one atomic pipe write each

    def __enter__(self) -> Lifeline:
        return self

    def __exit__(self, *exc_info: Any) -> None:
        self.release()


# -- the watchdog process -------------------------------------------------------------
def _start_time(pid: int) -> str | None:
    """The kernel's start time of ``pid`` (tells a reused pid apart), None if unknown."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as stat:
            fields = stat.read().rsplit(b")", 1)[1].split()
    except (OSError, IndexError):
        return None
    return fields[19].decode() if len(fields) > 19 else None  # field 22, starttime


def _signal_group(pid: int, sig: int) -> bool:
    """Signal the group led by ``pid`` (or ``pid`` alone); False if nothing is left."""
    try:
        os.killpg(pid, sig)
        return True
    except ProcessLookupError:
        pass
    except PermissionError:
        return False
    try:
        os.kill(pid, sig)
        return True
    except (ProcessLookupError, PermissionError):
        return False


def stop_tied(tied: dict[int, tuple[int, str | None]], grace: float) -> None:
    """Send each tied group its stop signal, then SIGKILL what is left after ``grace``."""
    signalled = []
    for pid, (sig, started) in tied.items():
        now_started = _start_time(pid)
        if started is not None and now_started is not None and now_started != started:
            continue  # the pid is another process's now (a pgid in use is never reused)
        if _signal_group(pid, sig):
            signalled.append(pid)
    deadline = time.monotonic() + grace
    while signalled and time.monotonic() < deadline:
        signalled = [pid for pid in signalled if _signal_group(pid, 0)]
        time.sleep(0.05)
    for pid in signalled:
        _signal_group(pid, signal.SIGKILL)


def watch(fd: int, grace: float) -> None:
    """Read ties from ``fd`` until a release (return) or EOF (stop the tied groups)."""
    tied: dict[int, tuple[int, str | None]] = {}
    with os.fdopen(fd, "rb") as pipe:
        for line in pipe:
            if line == RELEASE:
                return
            words = line.split()
            if len(words) == 3 and words[0] == b"tie":
                pid, sig = int(words[1]), int(words[2])
                tied[pid] = (sig, _start_time(pid))
    stop_tied(tied, grace)


if __name__ == "__main__":
    watch(int(sys.argv[1]), float(sys.argv[2]))
