"""Which tests need no server: the quick run on every other Python (``--without-servers``).

A test *needs a server* when it starts or reaches one: a Redis (a LocalCluster's own
included), RabbitMQ, PostgreSQL, Celery workers, a Jupyter kernel or JupyterLab. Such
a test carries the ``needs_server`` marker: added here when it uses one of
``SERVER_FIXTURES``, written by hand (``pytestmark``, or on the test) when it starts
one itself. Every other test needs no server and runs on every Python the README
promises (``python3 dev.py test-pythons``, run by ``.ci/run``); a new test is in that
run unless it says otherwise.

``pytest --without-servers`` runs only those, and keeps the marking honest: in that
run a test that starts a redis-server, a Celery worker, a kernel, JupyterLab or a
LocalCluster (in a child Python too), or connects to the machine's Redis, RabbitMQ
or PostgreSQL, fails and says to mark it.

``every_python`` marks the few server tests that run on every promised Python as
well (``pytest -m every_python``): a real kernel's ``%%celery_submit`` round trip.
"""

from __future__ import annotations

import os
import re
import socket
import subprocess
from collections.abc import Iterator
from typing import Any

import pytest

# Fixtures that start servers; tests using them (or fixtures built on them) need one.
SERVER_FIXTURES = frozenset({"cluster", "lifeline", "own_cluster"})

# The machine's Redis, RabbitMQ and PostgreSQL.
SERVICE_PORTS = frozenset({6379, 5672, 5432})
LOOPBACK = frozenset({"127.0.0.1", "localhost", "::1"})

# Command lines of servers: redis-server, `celery worker`, kernels, JupyterLab, and a
# child Python that makes a LocalCluster.
SERVER_COMMAND = re.compile(
    r"redis-server|LocalCluster\(|-m celery\b|/celery\s|ipykernel_launcher|/jupyter(-lab)?\s"
)

OPTION = "--without-servers"


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        OPTION,
        action="store_true",
        help="run only the tests that need no server; fail any of them that starts one "
        "(tests/without_servers.py)",
    )


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers", "needs_server: starts or reaches a server (tests/without_servers.py)"
    )
    config.addinivalue_line(
        "markers", "every_python: a server test run on every promised Python as well"
    )


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        if SERVER_FIXTURES & set(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.needs_server)
    if config.getoption(OPTION):
        deselected = [item for item in items if item.get_closest_marker("needs_server")]
        if deselected:
            config.hook.pytest_deselected(items=deselected)
            items[:] = [item for item in items if not item.get_closest_marker("needs_server")]


@pytest.fixture(autouse=True, scope="session")
def refuse_servers(request: pytest.FixtureRequest) -> Iterator[None]:
    """In a ``--without-servers`` run, fail a test that starts or reaches a server
    (session-wide: a module or session fixture that starts one is caught too)."""
    if not request.config.getoption(OPTION):
        yield
        return

    def refuse(what: str) -> None:
        test = os.environ.get("PYTEST_CURRENT_TEST", "a test").rsplit(" ", 1)[0]
        pytest.fail(f"{test} {what}: mark it `needs_server` (tests/without_servers.py)", False)

    popen_init = subprocess.Popen.__init__
    connect = socket.socket.connect

    def guarded_popen(self: subprocess.Popen[Any], args: Any, *rest: Any, **kwargs: Any) -> None:
        line = str(args if isinstance(args, str | bytes) else " ".join(map(str, args)))
        if SERVER_COMMAND.search(line):
            refuse(f"starts a server ({line[:80]!r})")
        popen_init(self, args, *rest, **kwargs)

    def guarded_connect(self: socket.socket, address: Any) -> None:
        if isinstance(address, tuple) and address[0] in LOOPBACK and address[1] in SERVICE_PORTS:
            refuse(f"connects to a server at port {address[1]}")
        connect(self, address)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(subprocess.Popen, "__init__", guarded_popen)
        patch.setattr(socket.socket, "connect", guarded_connect)
        yield
