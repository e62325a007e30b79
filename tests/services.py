"""The machine's real servers the tests use (RabbitMQ, PostgreSQL), and what the tests
create on them (a queue, a database), removed afterwards. Skips, never hangs, when
a server is not reachable."""

from __future__ import annotations

import os
import random
import socket
import subprocess
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

AMQP_URL = os.environ.get("CELERYNB_TEST_AMQP_URL", "pyamqp://guest:guest@127.0.0.1:5672//")
POSTGRES_URL = os.environ.get(
    "CELERYNB_TEST_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/postgres"
)


def reachable(host: str, port: int, timeout: float = 1.0) -> bool:
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def require_rabbitmq() -> str:
    if not reachable("127.0.0.1", 5672):
        pytest.skip(
            "RabbitMQ is not reachable at 127.0.0.1:5672 (start: rabbitmq-server -detached)"
        )
    return AMQP_URL


@contextmanager
def private_amqp_queue() -> Iterator[str]:
    """A queue name of this test run, deleted from RabbitMQ afterwards."""
    import kombu

    name = f"celerynb-test-{uuid.uuid4().hex[:10]}"
    try:
        yield name
    finally:
        with kombu.Connection(AMQP_URL, connect_timeout=3) as connection:
            kombu.Queue(name)(connection.default_channel).delete()


@contextmanager
def private_postgres_database() -> Iterator[str]:
    """A database of this test run (``db+postgresql://`` URL), dropped afterwards."""
    psycopg = pytest.importorskip("psycopg")
    if not reachable("127.0.0.1", 5432):
        pytest.skip("PostgreSQL is not reachable at 127.0.0.1:5432")
    name = f"celerynb_test_{uuid.uuid4().hex[:10]}"
    admin = psycopg.connect(POSTGRES_URL, connect_timeout=3, autocommit=True)
    try:
        with admin.cursor() as cursor:
            cursor.execute(f'CREATE DATABASE "{name}"')
        base = POSTGRES_URL.rsplit("/", 1)[0]
        try:
            yield f"db+{base}/{name}"
        finally:
            with admin.cursor() as cursor:
                cursor.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    finally:
        admin.close()


def restartable_port() -> int:
    """A free loopback port below the kernel's ephemeral range, for a server a test
    stops and starts again on it: while it is down, no outgoing connection can be given
    that port as its own (seen: a restart failed to bind a port ``free_port`` chose)."""
    try:
        low = int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        low = 32768
    rng = random.Random()
    for _ in range(200):
        port = rng.randrange(20000, max(low, 20001))
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            try:
                sock.bind(("127.0.0.1", port))
            except OSError:
                continue
        return port
    raise RuntimeError("no free port below the ephemeral range")


def start_redis(directory: object, port: int, *options: str) -> subprocess.Popen[bytes]:
    """A private redis-server on 127.0.0.1:``port`` (``options``: e.g. a password or
    persistence); stop it with ``celerynb._processes._stop_process``."""
    from celerynb._redis_server import find_redis_server

    return subprocess.Popen(
        [find_redis_server(), "--port", str(port), "--bind", "127.0.0.1", "--save", "",
         "--dir", str(directory), *options],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
    )  # fmt: skip


def pings(client: object) -> bool:
    """True when the redis ``client``'s server answers."""
    try:
        return bool(client.ping())  # type: ignore[attr-defined]
    except Exception:
        return False
