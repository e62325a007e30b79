"""The local job store (SQLite): what a restarted kernel reads back, and nothing more."""

import time

import pytest

from celerynb import _store
from celerynb._store import JobRecord, JobStore, backend_key, default_path


@pytest.fixture
def other_kernel(monkeypatch):
    """Pretend that records written so far came from an earlier kernel process."""

    def restart():
        monkeypatch.setattr(_store, "RUN_ID", f"{_store.RUN_ID}-later")

    return restart


def test_path_comes_from_the_environment(monkeypatch, tmp_path):
    monkeypatch.setenv("CELERYNB_STORE", str(tmp_path / "mine.sqlite3"))
    assert default_path() == tmp_path / "mine.sqlite3"
    monkeypatch.delenv("CELERYNB_STORE")
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "data"))
    assert default_path() == tmp_path / "data" / "celerynb" / "jobs.sqlite3"


def test_jobs_of_earlier_kernels_come_back_per_notebook_and_backend(
    tmp_path, monkeypatch, other_kernel
):
    store = JobStore(tmp_path / "jobs.sqlite3")
    redis_a = backend_key("redis://:secret@host:6379/1")
    monkeypatch.setenv("JPY_SESSION_NAME", "/work/sweep.ipynb")
    single = JobRecord("t-1", "simulate", shipped=True, submitted=time.time())
    group = JobRecord(
        "g-1", "square", None, ("c-1", "c-2"), ((0, 2), (2, 4)), submitted=time.time() - 60
    )  # fmt: skip
    store.record(single, redis_a)
    store.record(group, redis_a)
    store.record(JobRecord("t-2", "other", False), backend_key("redis://elsewhere/1"))
    monkeypatch.setenv("JPY_SESSION_NAME", "/work/another.ipynb")
    store.record(JobRecord("t-3", "theirs", False), redis_a)

    monkeypatch.setenv("JPY_SESSION_NAME", "/work/sweep.ipynb")
    assert store.previous(redis_a) == [], "this kernel's own jobs are not 'previous'"
    other_kernel()
    found = store.previous(redis_a)
    assert [r.id for r in found] == ["g-1", "t-1"]  # oldest first
    assert found[0] == JobRecord(
        "g-1", "square", None, ("c-1", "c-2"), ((0, 2), (2, 4)), submitted=found[0].submitted
    )  # fmt: skip
    assert found[1].shipped is True
    store.record(single, redis_a)  # re-attached by the new kernel: still found next time
    assert [r.id for r in store.previous(redis_a)] == ["g-1", "t-1"]
    store.close()


def test_passwords_never_reach_the_file(tmp_path):
    store = JobStore(tmp_path / "jobs.sqlite3")
    store.record(JobRecord("t-1", "f", False), backend_key("redis://:hunter2@host/1"))
    store.close()
    assert b"hunter2" not in (tmp_path / "jobs.sqlite3").read_bytes()


def test_old_records_are_dropped(tmp_path, other_kernel):
    path = tmp_path / "jobs.sqlite3"
    store = JobStore(path)
    key = backend_key("redis://host/1")
    store.record(JobRecord("old", "f", False, submitted=time.time() - 8 * 86400), key)
    store.record(JobRecord("new", "f", False), key)
    store.close()
    other_kernel()
    assert [r.id for r in JobStore(path).previous(key)] == ["new"]


def test_an_unusable_store_is_reported_and_never_stops_a_job(tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a directory")
    store = JobStore(blocker / "jobs.sqlite3")
    store.record(JobRecord("t-1", "f", False), backend_key("redis://host/1"))
    assert store.error and "cannot record jobs in" in store.error
    assert store.previous(backend_key("redis://host/1")) == []
    assert "cannot read jobs from" in store.error
