"""The job store, attacked from a second local account: it holds no call arguments and no
cell text, not even in SQLite's -wal/-shm files or freed pages; its directory is 0700 and
its files 0600, so another user cannot read it; files of older versions, which did hold
call text, are rewritten so the text is gone and their jobs still re-attach."""

import os
import shutil
import sqlite3
import stat
import subprocess
import tempfile
import time
from pathlib import Path

import pytest
from kernel_helpers import Kernel

import celerynb
from celerynb import _many, _store
from celerynb._chunks import run_chunk
from celerynb._store import JobStore, backend_key, notebook_key

NOBODY = 65534
SIDECARS = ("-wal", "-shm")

# The table of celerynb before this fix: call_repr held the call's text.
OLD_SCHEMA = """
CREATE TABLE IF NOT EXISTS jobs (
    id TEXT PRIMARY KEY, notebook TEXT NOT NULL, run TEXT NOT NULL, backend TEXT NOT NULL,
    name TEXT NOT NULL, call_repr TEXT NOT NULL, shipped INTEGER, task_ids TEXT, spans TEXT,
    submitted REAL NOT NULL
)
"""


def store_files(path: Path) -> list[Path]:
    """The database and, where they exist, its -wal and -shm files."""
    return [f for f in (path, *(Path(f"{path}{s}") for s in SIDECARS)) if f.exists()]


def assert_nowhere(path: Path, *markers: str) -> None:
    for file in store_files(path):
        data = file.read_bytes()
        leaked = [marker for marker in markers if marker.encode() in data]
        assert not leaked, f"{leaked} in {file.name}"


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


@pytest.fixture
def usual_umask():
    """The umask of most desktops (022): files are world-readable unless made private."""
    before = os.umask(0o022)
    yield
    os.umask(before)


@pytest.fixture
def open_directory():
    """A directory every local user can enter (pytest's tmp_path is 0700: it would hide
    the store from the other account whatever celerynb does)."""
    directory = Path(tempfile.mkdtemp(prefix="celerynb-attack-"))
    directory.chmod(0o755)
    yield directory
    shutil.rmtree(directory, ignore_errors=True)


def write_old_store(path: Path, rows: list[tuple]) -> sqlite3.Connection:
    """A store file as an older celerynb left it: WAL mode, call text in call_repr, the
    first rows checkpointed into the file, one deleted (its text in a free page), the
    last rows still in the WAL. Returns the old kernel's connection, still open."""
    old = sqlite3.connect(path)
    old.execute("PRAGMA journal_mode=WAL")
    old.execute("PRAGMA wal_autocheckpoint=0")
    old.execute(OLD_SCHEMA)
    half = len(rows) // 2
    old.executemany("INSERT INTO jobs VALUES (?,?,?,?,?,?,?,?,?,?)", rows[:half])
    old.execute(
        "INSERT INTO jobs VALUES (?,?,?,?,?,?,?,?,?,?)",
        ("gone", notebook_key(), "old", "b", "f", "f(token='deleted-marker')", 1, None, None, 0),
    )
    old.commit()
    old.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    old.execute("DELETE FROM jobs WHERE id = 'gone'")
    old.executemany("INSERT INTO jobs VALUES (?,?,?,?,?,?,?,?,?,?)", rows[half:])
    old.commit()
    for file in store_files(path):
        file.chmod(0o644)  # as an older celerynb made them
    return old


# -- (a) no argument and no cell text reaches the files ------------------------------


def test_a_kernels_calls_and_cells_leave_no_text_in_the_store_files(cluster, tmp_path):
    store = tmp_path / "store" / "jobs.sqlite3"
    env = cluster.worker_env()
    env["CELERYNB_STORE"] = str(store)
    env["JPY_SESSION_NAME"] = str(tmp_path / "secrets.ipynb")
    kernel = Kernel(cwd=str(tmp_path), env=env)
    try:
        kernel.ok("import celerynb\n%load_ext celerynb")
        kernel.ok("%celery_connect")
        kernel.ok("def login(user, password):\n    return len(password)")
        kernel.ok("call = %celery_submit login('alice', password='hunter2-marker')")
        kernel.ok("%%celery_submit -o n\napi_key = 'key-marker'\nn = len(api_key)")
        kernel.ok("print(call.result(timeout=30), celerynb.jobs()[-1].result(timeout=30))")
        assert [f.name for f in store_files(store)] == [
            "jobs.sqlite3", "jobs.sqlite3-wal", "jobs.sqlite3-shm"
        ]  # fmt: skip
        assert_nowhere(store, "hunter2-marker", "key-marker", "alice", "api_key")

        kernel.manager.restart_kernel(now=False)
        kernel.client.wait_for_ready(timeout=60)
        again = kernel.ok(
            "import celerynb\ncelerynb.connect()\n"
            "print([(job.name, job.call_repr) for job in celerynb.jobs(previous=True)])"
        ).stdout
        assert again.startswith("[('login', 'login'), ('cell [") and again.count("cell [") == 2
        assert "marker" not in again
    finally:
        kernel.close()
    assert_nowhere(store, "hunter2-marker", "key-marker", "alice", "api_key")


# -- (b) modes -----------------------------------------------------------------------


def test_a_new_store_is_a_0700_directory_of_0600_files(tmp_path, monkeypatch, usual_umask):
    monkeypatch.delenv("CELERYNB_STORE")
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "data"))
    store = JobStore()
    assert store.previous(backend_key("redis://host/1")) == []  # opens (or creates) the file
    try:
        path = store.path
        assert store.error is None and path == tmp_path / "data" / "celerynb" / "jobs.sqlite3"
        assert mode(tmp_path / "data") == 0o700 and mode(path.parent) == 0o700
        files = store_files(path)
        assert len(files) == 3, files  # open: the -wal and -shm files exist too
        assert {f.name: mode(f) for f in files} == dict.fromkeys((f.name for f in files), 0o600)
    finally:
        store.close()


def test_an_older_versions_loose_directory_and_files_are_made_private(
    tmp_path, monkeypatch, usual_umask
):
    monkeypatch.delenv("CELERYNB_STORE")
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path))
    directory = tmp_path / "celerynb"
    directory.mkdir(mode=0o755)
    path = directory / "jobs.sqlite3"
    old = write_old_store(path, [])
    assert mode(directory) == 0o755 and len(store_files(path)) == 3
    store = JobStore()
    try:
        assert store.previous(backend_key("redis://host/1")) == [] and store.error is None
        assert mode(directory) == 0o700
        assert [mode(f) for f in store_files(path)] == [0o600, 0o600, 0o600]
    finally:
        store.close()
        old.close()


def test_a_chosen_directory_is_left_alone_but_the_files_are_private(
    tmp_path, monkeypatch, usual_umask
):
    chosen = tmp_path / "shared"
    chosen.mkdir(mode=0o755)
    store = JobStore(chosen / "new" / "jobs.sqlite3")
    mine = JobStore(chosen / "mine.sqlite3")
    try:
        assert store.previous("b") == mine.previous("b") == []
        assert mode(chosen) == 0o755, "the user's own directory keeps its mode"
        assert mode(chosen / "new") == 0o700, "a directory celerynb creates is private"
        for path in (store.path, mine.path):
            assert [mode(f) for f in store_files(path)] == [0o600, 0o600, 0o600]
    finally:
        store.close()
        mine.close()


# -- (c) another account cannot read it ------------------------------------------------


def another_user_reads(path: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        ["cat", str(path)], user=NOBODY, capture_output=True, timeout=30, check=False
    )


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to run a process as uid 65534")
@pytest.mark.parametrize("setup", ["new default", "older default", "chosen path"])
def test_another_local_account_cannot_read_the_store(
    setup, open_directory, monkeypatch, usual_umask
):
    control = open_directory / "control.txt"
    control.write_text("readable")
    assert another_user_reads(control).stdout == b"readable", "the control must be readable"
    monkeypatch.setenv("XDG_DATA_HOME", str(open_directory))
    monkeypatch.delenv("CELERYNB_STORE")
    path = open_directory / "celerynb" / "jobs.sqlite3"
    old = None
    if setup == "older default":
        path.parent.mkdir(mode=0o755)
        old = write_old_store(path, [])
    elif setup == "chosen path":
        path = open_directory / "jobs.sqlite3"
        monkeypatch.setenv("CELERYNB_STORE", str(path))
    store = JobStore()
    try:
        assert store.previous(backend_key("redis://host/1")) == []
        assert store.error is None and store.path == path
        files = store_files(path)
        assert len(files) == 3, files
        for file in files:
            attempt = another_user_reads(file)
            assert attempt.returncode != 0 and b"Permission denied" in attempt.stderr, file
    finally:
        store.close()
        if old is not None:
            old.close()


# -- (d) files of older versions are rewritten -----------------------------------------


def square(x):
    return x * x


def test_an_older_store_loses_its_call_text_and_its_jobs_still_reattach(
    session, tmp_path, monkeypatch
):
    monkeypatch.setenv("JPY_SESSION_NAME", str(tmp_path / "old.ipynb"))
    single = session.submit(square, (7,), record=False)
    chunks = [
        session.submit(run_chunk, (square, items, False, "square"), record=False)
        for items in ([0, 1], [2, 3])
    ]
    assert single.result(timeout=30) == 49 and all(c.result(timeout=30) for c in chunks)
    group_id = "a0000000-0000-4000-8000-000000000001"
    now = time.time()
    row = (notebook_key(), "an earlier kernel", session.backend_key)
    path = tmp_path / "jobs.sqlite3"
    filler = [  # enough rows (of another backend) that the text spans many pages
        (f"filler-{i}", notebook_key(), "an earlier kernel", "another backend", "login",
         f"login('bob', password='filler-marker-{i}')" * 3, 1, None, None, now - 3600)
        for i in range(300)
    ]  # fmt: skip
    old = write_old_store(
        path,
        [
            *filler[:150],
            (single.id, *row, "square", "square(7, password='hunter2-marker')", 1, None, None,
             now - 60),
            (group_id, *row, "square", "map(square, 4 items) api_key='key-marker'", 1,
             f'["{chunks[0].id}", "{chunks[1].id}"]', "[[0, 2], [2, 4]]", now - 30),
            *filler[150:],
        ],
    )  # fmt: skip
    for marker in ("hunter2-marker", "key-marker", "deleted-marker", "filler-marker-299"):
        assert any(marker.encode() in f.read_bytes() for f in store_files(path)), marker
    monkeypatch.setattr(_many, "store", JobStore(path))
    monkeypatch.setattr(_store, "RUN_ID", "this kernel")
    try:  # the older kernel still runs (its connection open, the WAL not checkpointed)
        found = {job.id: job for job in celerynb.jobs(previous=True)}
        assert _many.store.error is None
        assert_nowhere(path, "hunter2-marker", "key-marker", "deleted-marker", "filler-marker")
        assert [mode(f) for f in store_files(path)] == [0o600, 0o600, 0o600]

        assert set(found) == {single.id, group_id}
        assert found[single.id].result(timeout=30) == 49
        assert found[single.id].call_repr == "square"
        assert found[group_id].results(timeout=30) == [0, 1, 4, 9]
        assert found[group_id].call_repr == "map(square, 4 items)"
    finally:
        _many.store.close()
        old.close()
    assert_nowhere(path, "hunter2-marker", "key-marker", "deleted-marker", "filler-marker")
    after = JobStore(path)
    assert len(after.previous("another backend")) == 300, "every row was kept"
    after.close()
