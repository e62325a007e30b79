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
import shipped
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


# -- parallel test processes (pytest-xdist: `-n 4 --dist loadgroup` in pyproject's addopts) --
# Most tests wait on workers, Redis or a kernel, not on the CPU: four processes share the
# machine's cores. Each process has its own session fixtures (LocalCluster, project worker,
# IPython shell, job store). Tests run one at a time per process, each with its own
# free ports, private Redis servers, RabbitMQ queues and PostgreSQL databases.
#
# Tests that must run in one process, one after the other, form a group: TEST_GROUPS maps a
# prefix of their node ids to the group's name. xdist's own `xdist_group` mark cannot be used:
# with pytest >= 9.2 it is silently ignored (pytest-dev/pytest-xdist#1386), and tests that
# met in parallel would fail only now and then. test_dev_tools checks each key names tests.
TEST_GROUPS = {
    # The tests that keep the CPU busy (1,000 jobs or chunks, long notebook loops,
    # JupyterLab and chromium): one at a time, so that they do not slow each other down
    # (some time a kernel's answers meanwhile).
    "tests/test_kernel.py::test_widget_updates_keep_flowing_while_another_cell": "cpu",
    "tests/test_kernel.py::test_notebook_runs_top_to_bottom[01-": "cpu",
    "tests/test_kernel.py::test_notebook_runs_top_to_bottom[05-": "cpu",
    "tests/test_scale.py::": "cpu",
    "tests/test_map.py::test_cancelling_a_map_while_its_chunks_finish": "cpu",
    "tests/test_browser.py::": "cpu",
    "tests/test_browser_dashboard.py::": "cpu",
    "tests/test_attack_browser.py::": "cpu",
    # Tests that time polling rounds or must see a poll catch a job mid-run: a busy CPU
    # delays the polling thread (they fail then, in one process too). test_brokers also
    # shares a cluster per broker/backend (a module fixture) between its tests.
    "tests/test_brokers.py::": "cpu",
    "tests/test_jobs.py::test_polling_source_follows_jobs_at_a_bounded_rate": "cpu",
    # Notebook 03 consumes the fixed RabbitMQ queue "celerynb-tutorial": its two runs at
    # once would take each other's tasks (signed with the other cluster's secret).
    "tests/test_kernel.py::test_notebook_runs_top_to_bottom[03-": "notebook-03",
    "tests/test_kernel.py::test_the_backends_notebook_says_what_to_install_": "notebook-03",
    # A module fixture shared by the module's tests (a kernel; a cluster per Redis
    # binary), set up once when the module runs in one process.
    "tests/test_magics.py::": "magics",
    "tests/test_attack_local_redis.py::": "attack-local-redis",
    # Gigabytes through one LocalCluster of the module's own (memory and CPU): its tests
    # one after the other, beside the CPU group rather than in it (they wait on I/O).
    "tests/test_heavy_data.py::": "heavy-data",
    "tests/test_datastore.py::": "datastore",
}
# Modules whose tests take 5-30 s each: started right after the groups, so that no long
# test is left to run alone at the end. Order only: a stale entry costs time, no test.
START_FIRST = (
    "tests/test_kernel.py::",
    "tests/test_dashboard_kernel.py::",
    "tests/test_faults.py::",
    "tests/test_liveness_faults.py::",
    "tests/test_secret_scan.py::",
    "tests/test_restart.py::",
    "tests/test_outages.py::",
    "tests/test_cluster.py::",
)


def group_of(nodeid: str) -> str | None:
    """The group (TEST_GROUPS) of the test ``nodeid``, or None."""
    return next((name for key, name in TEST_GROUPS.items() if nodeid.startswith(key)), None)


@pytest.hookimpl(tryfirst=True, optionalhook=True)
def pytest_xdist_make_scheduler(config: pytest.Config, log: object) -> object | None:
    """``--dist loadgroup`` with the groups of TEST_GROUPS; the groups first, in their
    order there, then the tests of START_FIRST, then the others in collection order."""
    if config.getvalue("dist") != "loadgroup":
        return None
    from xdist.scheduler import LoadScopeScheduling

    groups = list(dict.fromkeys(TEST_GROUPS.values()))

    def start_rank(scope: str) -> int:
        if scope in groups:
            return groups.index(scope)
        return len(groups) + (0 if scope.startswith(START_FIRST) else 1)

    class GroupScheduling(LoadScopeScheduling):
        ordered = False

        def _split_scope(self, nodeid: str) -> str:
            return group_of(nodeid) or nodeid

        def _assign_work_unit(self, node: object) -> None:
            if not self.ordered:  # the work queue is complete at the first assignment
                self.ordered = True
                units = sorted(self.workqueue.items(), key=lambda unit: start_rank(unit[0]))
                self.workqueue.clear()
                self.workqueue.update(units)  # sorted() keeps collection order within a rank
            super()._assign_work_unit(node)

    return GroupScheduling(config, log)


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
    cloudpickle.register_pickle_by_value(shipped)


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


def celery_user_env(cluster: celerynb.LocalCluster) -> dict[str, str]:
    """``project_env``, with the broker and backend known only as ``CELERY_BROKER_URL`` and
    ``CELERY_RESULT_BACKEND``, as a Celery user would set them (``%celery_connect``)."""
    env = project_env(cluster)
    env["CELERY_BROKER_URL"] = env.pop("CELERYNB_BROKER_URL")
    env["CELERY_RESULT_BACKEND"] = env.pop("CELERYNB_RESULT_BACKEND")
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
    from celerynb._processes import _stop_process

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
    from celerynb._processes import _stop_process

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

    def lingers(p: psutil.Process) -> bool:
        try:  # it may exit between any two looks at it
            return p.pid not in before and p.status() != psutil.STATUS_ZOMBIE
        except psutil.NoSuchProcess:
            return False

    def leftovers() -> list[psutil.Process]:
        return [p for p in psutil.Process().children(recursive=True) if lingers(p)]

    wait_for(lambda: not leftovers(), timeout=10)
    assert not leftovers(), f"processes left behind: {[p.cmdline() for p in leftovers()]}"


@pytest.fixture
def own_cluster(monkeypatch):
    """Start a LocalCluster of the test's own (``processes=1`` unless told, any other
    option) and a session to it; both closed after the test."""
    from celerynb import _session as session_module

    made = []

    def start(**options):
        options.setdefault("processes", 1)
        local = celerynb.LocalCluster(**options)
        monkeypatch.setattr(session_module, "_current", session_module._current)
        made.append((local, celerynb.connect(local)))
        return made[-1]

    yield start
    for local, session in made:
        session.close()
        local.close()
