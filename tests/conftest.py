"""Shared fixtures: one real LocalCluster (private redis-server + Celery workers)."""

from __future__ import annotations

import atexit
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import cloudpickle
import psutil
import pytest
from celery import Celery

# The `needs_server` marker, `--without-servers` and its guard (see that module).
from without_servers import (  # noqa: F401
    pytest_addoption,
    pytest_collection_modifyitems,
    pytest_configure,
    refuse_servers,
)

import celerynb
from celerynb._lifeline import Lifeline

# The suite's own job store, never the user's ~/.local/share/celerynb (kernels inherit it;
# the store resolves its path on first use).
_STORE_DIR = tempfile.mkdtemp(prefix="celerynb-test-store-")
os.environ["CELERYNB_STORE"] = os.path.join(_STORE_DIR, "jobs.sqlite3")
atexit.register(shutil.rmtree, _STORE_DIR, ignore_errors=True)


class FakeClock:
    """Time that moves only when the test says so (``now``, or ``sleep``): a swappable
    clock for timing logic (throttles, leases, backoff, liveness, rendering)."""

    def __init__(self, now: float = 1000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.now += seconds


def wait_for(
    predicate: Callable[[], object], timeout: float = 20.0, interval: float = 0.02
) -> bool:
    """Poll ``predicate`` until it is truthy or ``timeout`` passes; return the last answer."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(interval)
    return bool(predicate())


@pytest.fixture(autouse=True)
def ship_test_functions_by_value(request: pytest.FixtureRequest) -> None:
    """Workers cannot import test modules: ship their functions by value, as a
    user does for a local module with ``cloudpickle.register_pickle_by_value``."""
    cloudpickle.register_pickle_by_value(request.module)


@pytest.fixture(scope="session")
def cluster() -> Iterator[celerynb.LocalCluster]:
    with celerynb.LocalCluster(processes=2) as local_cluster:
        yield local_cluster


PROJECT_DIR = Path(__file__).resolve().parent / "project"


def project_env(cluster: celerynb.LocalCluster) -> dict[str, str]:
    """Environment of the test project ``myproject`` (its app reads its URLs from here)."""
    env = cluster.worker_env()
    env["MYPROJECT_BROKER_URL"] = cluster.broker_url
    env["MYPROJECT_RESULT_BACKEND"] = cluster.backend_url
    env["PYTHONPATH"] = os.pathsep.join([str(PROJECT_DIR), env.get("PYTHONPATH", "")])
    return env


@pytest.fixture(scope="session")
def lifeline() -> Iterator[Lifeline]:
    """Stops the workers the tests start themselves should the test run be killed."""
    with Lifeline() as line:
        yield line


def start_project_worker(
    lifeline: Lifeline,
    env: dict[str, str],
    name: str,
    queue: str,
    log: Path,
    concurrency: int = 2,
) -> subprocess.Popen[bytes]:
    """Start ``celery -A myproject worker`` on ``queue`` and wait until it answers a ping."""
    return start_worker(lifeline, env, name, queue, log, app="myproject", concurrency=concurrency)


def start_worker(
    lifeline: Lifeline,
    env: dict[str, str],
    name: str,
    queue: str,
    log: Path,
    *,
    app: str = "celerynb.worker",
    concurrency: int = 1,
) -> subprocess.Popen[bytes]:
    """Start ``celery -A APP worker -n NAME -Q QUEUE`` (modules of tests/project importable)
    and wait until it answers a ping; ``env`` holds its broker (a cluster's worker_env())."""
    from celerynb._cluster import _stop_process

    env = dict(env)
    env["PYTHONPATH"] = os.pathsep.join([str(PROJECT_DIR), env.get("PYTHONPATH", "")])
    proc = lifeline.popen(
        [sys.executable, "-m", "celery", "-A", app, "worker",
         f"--concurrency={concurrency}", "--loglevel=INFO", "-n", name, "-Q", queue,
         "--without-gossip", "--without-mingle", f"--logfile={log}"],
        stop_signal=signal.SIGQUIT, env=env, cwd=PROJECT_DIR, stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    broker = env.get("MYPROJECT_BROKER_URL") or env["CELERYNB_BROKER_URL"]
    probe = Celery("probe", broker=broker, set_as_current=False)
    try:
        answered = wait_for(
            lambda: proc.poll() is not None or probe.control.ping(destination=[name], timeout=0.5),
            timeout=60,
        )
    finally:
        probe.close()
    if not answered or proc.poll() is not None:
        _stop_process(proc)
        raise AssertionError(f"worker {name} of {app} did not start: {log}")
    return proc


@pytest.fixture(scope="session")
def project_worker(
    cluster: celerynb.LocalCluster, lifeline: Lifeline, tmp_path_factory
) -> Iterator[str]:
    """A worker of the user's own app (``celery -A myproject worker``), queue ``myproject``."""
    from celerynb._cluster import _stop_process

    name = f"myproject-{cluster.port}@localhost"
    log = tmp_path_factory.mktemp("myproject") / "worker.log"
    proc = start_project_worker(lifeline, project_env(cluster), name, "myproject", log)
    try:
        yield name
    finally:
        _stop_process(proc)


@pytest.fixture(scope="session")
def shell():
    """IPython's in-process test shell with the magics loaded (no kernel started). One per
    run: a second ``start_ipython()`` returns None."""
    from IPython.testing.globalipapp import get_ipython, start_ipython

    ip = start_ipython() or get_ipython()
    ip.run_line_magic("load_ext", "celerynb")
    return ip


@pytest.fixture(scope="session")
def shared_session(cluster: celerynb.LocalCluster) -> celerynb.Session:
    return celerynb.connect(cluster)


@pytest.fixture
def session(shared_session: celerynb.Session, monkeypatch: pytest.MonkeyPatch) -> celerynb.Session:
    """The suite's session, current for this test whatever other tests connected to."""
    import celerynb._session

    monkeypatch.setattr(celerynb._session, "_current", shared_session)
    return shared_session


@pytest.fixture(autouse=True, scope="session")
def no_process_left_behind() -> Iterator[None]:
    """Fail the run if any redis-server or worker process outlives the suite."""
    before = {p.pid for p in psutil.Process().children(recursive=True)}
    yield
    import gc

    gc.collect()

    def leftovers() -> list[psutil.Process]:
        return [
            p
            for p in psutil.Process().children(recursive=True)
            if p.pid not in before and p.is_running() and p.status() != psutil.STATUS_ZOMBIE
        ]

    wait_for(lambda: not leftovers(), timeout=10)
    assert not leftovers(), f"processes left behind: {[p.cmdline() for p in leftovers()]}"
