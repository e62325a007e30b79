"""Shared fixtures: one real LocalCluster (private redis-server + Celery workers)."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator

import cloudpickle
import psutil
import pytest

import celerynb


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
    with celerynb.LocalCluster(workers=2) as local_cluster:
        yield local_cluster


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
