"""Kernel side: a small local record of the jobs each notebook submitted (SQLite).

After a kernel restart, ``celerynb.jobs(previous=True)`` reads it to find the
jobs the notebook had (in flight or finished since) and watches them again.
Only ids, names (a function's or task's name, ``cell [3]``) and the shape of
groups (task ids, chunk spans) are stored: never a call's arguments, a cell's
text or results, never a URL's password (backends are matched by a hash of
their URL). The file and SQLite's ``-wal``/``-shm`` files are private to their
owner (0600), in a directory of mode 0700.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import sqlite3
import stat
import threading
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

STORE_ENV = "CELERYNB_STORE"
KEEP_SECONDS = 7 * 24 * 3600  # older records are dropped
RUN_ID = uuid.uuid4().hex  # this kernel process
FILE_MODE = 0o600
DIRECTORY_MODE = 0o700
SIDECARS = ("-wal", "-shm")  # SQLite's files beside the database in WAL mode
# PRAGMA user_version of a file whose text is gone: version 0 files (celerynb before
# this version) had a call_repr column holding calls' arguments and cells' first lines.
SCHEMA_VERSION = 2
_COLUMNS = "id, notebook, run, backend, name, shipped, task_ids, spans, submitted"

_SCHEMA = """
CREATE TABLE IF NOT EXISTS {table} (
    id TEXT PRIMARY KEY,
    notebook TEXT NOT NULL,
    run TEXT NOT NULL,
    backend TEXT NOT NULL,
    name TEXT NOT NULL,
    shipped INTEGER,
    task_ids TEXT,
    spans TEXT,
    submitted REAL NOT NULL
)
"""


@dataclass(frozen=True)
class JobRecord:
    """What is kept of one job or group: enough to watch it again, and nothing of its call."""

    id: str
    name: str  # a function's or task's name, or a label such as "cell [3]"
    shipped: bool | None
    task_ids: tuple[str, ...] = ()  # a group's tasks; empty for a single job
    spans: tuple[tuple[int, int], ...] | None = None  # a map's chunks
    submitted: float = 0.0


@dataclass(frozen=True)
class KeptJob:
    """A record as kept, with the notebook and the kernel run that submitted it."""

    record: JobRecord
    notebook: str
    run: str

    @property
    def this_kernel(self) -> bool:
        return self.run == RUN_ID


def default_directory() -> Path:
    """``$XDG_DATA_HOME/celerynb`` (~/.local/share/celerynb)."""
    base = os.environ.get("XDG_DATA_HOME") or Path.home() / ".local" / "share"
    return Path(base) / "celerynb"


def default_path() -> Path:
    """``$CELERYNB_STORE``, else ``$XDG_DATA_HOME/celerynb/jobs.sqlite3`` (~/.local/share)."""
    explicit = os.environ.get(STORE_ENV)
    if explicit:
        return Path(explicit)
    return default_directory() / "jobs.sqlite3"


def notebook_key() -> str:
    """Which notebook this kernel serves: Jupyter's ``JPY_SESSION_NAME`` (the notebook's
    path), else the working directory."""
    return os.environ.get("JPY_SESSION_NAME") or os.getcwd()


def backend_key(url: str) -> str:
    """A hash naming a result backend without keeping its password."""
    return hashlib.sha256(url.encode()).hexdigest()[:32]


class JobStore:
    """The jobs each notebook submitted, in one SQLite file shared by all kernels."""

    def __init__(self, path: Path | None = None) -> None:
        self._path = path
        self._connection: sqlite3.Connection | None = None
        self._lock = threading.Lock()
        self.error: str | None = None  # set when the file cannot be used; jobs still run

    @property
    def path(self) -> Path:
        """The SQLite file (resolved on first use, so the environment can choose it)."""
        return self._path or default_path()

    def _db(self) -> sqlite3.Connection:
        if self._connection is None:
            self._path = path = self.path
            make_private_directory(path.parent, tighten=path.parent == default_directory())
            make_private_files(path, create=True)
            # Autocommit: each statement is its own transaction, VACUUM can run.
            connection = sqlite3.connect(
                path, timeout=5, check_same_thread=False, isolation_level=None
            )
            try:
                connection.execute("PRAGMA secure_delete=ON")  # deleted rows are zeroed
                connection.execute("PRAGMA journal_mode=WAL")
                connection.execute("PRAGMA synchronous=NORMAL")
                _upgrade(connection)
                expired = time.time() - KEEP_SECONDS
                connection.execute("DELETE FROM jobs WHERE submitted < ?", (expired,))
                make_private_files(path, create=False)  # -wal/-shm of an older version
            except BaseException:
                connection.close()
                raise
            self._connection = connection
        return self._connection

    def record(self, record: JobRecord, backend: str) -> None:
        """Keep ``record`` for this notebook; a storage failure never stops a job.

        A job already kept stays as it is: re-attached after a restart, it still
        belongs to the kernel that submitted it, so it is found again next time.
        """
        row = (
            record.id,
            notebook_key(),
            RUN_ID,
            backend,
            record.name,
            None if record.shipped is None else int(record.shipped),
            json.dumps(list(record.task_ids)) if record.task_ids else None,
            json.dumps(record.spans) if record.spans is not None else None,
            record.submitted or time.time(),
        )
        try:
            with self._lock:
                self._db().execute(
                    f"INSERT OR IGNORE INTO jobs ({_COLUMNS}) VALUES (?,?,?,?,?,?,?,?,?)", row
                )
        except (sqlite3.Error, OSError) as exc:
            self.error = f"cannot record jobs in {self.path}: {exc}"

    def rename(self, task_id: str, name: str) -> None:
        """A kept job's name, learnt after it was kept (an id attached from elsewhere,
        named by its stored state or a worker): an earlier kernel's jobs list it by it."""
        try:
            with self._lock:
                self._db().execute(
                    "UPDATE jobs SET name = ? WHERE id = ? AND notebook = ?",
                    (name, task_id, notebook_key()),
                )
        except (sqlite3.Error, OSError) as exc:
            self.error = f"cannot record jobs in {self.path}: {exc}"

    def previous(self, backend: str) -> list[JobRecord]:
        """This notebook's jobs from earlier kernels on the same backend, oldest first."""
        try:
            with self._lock:
                rows = (
                    self._db()
                    .execute(
                        "SELECT id, name, shipped, task_ids, spans, submitted FROM jobs "
                        "WHERE notebook = ? AND backend = ? AND run != ? ORDER BY submitted",
                        (notebook_key(), backend, RUN_ID),
                    )
                    .fetchall()
                )
        except (sqlite3.Error, OSError) as exc:
            self.error = f"cannot read jobs from {self.path}: {exc}"
            return []
        return [_record_from(row) for row in rows]

    def recent(self, backend: str, since: float, limit: int) -> list[KeptJob]:
        """The latest ``limit`` jobs sent by any notebook on this backend since ``since``
        (a time.time()), newest first."""
        try:
            with self._lock:
                rows = (
                    self._db()
                    .execute(
                        "SELECT id, name, shipped, task_ids, spans, submitted, notebook, run "
                        "FROM jobs WHERE backend = ? AND submitted >= ? "
                        "ORDER BY submitted DESC LIMIT ?",
                        (backend, since, limit),
                    )
                    .fetchall()
                )
        except (sqlite3.Error, OSError) as exc:
            self.error = f"cannot read jobs from {self.path}: {exc}"
            return []
        return [KeptJob(_record_from(row[:6]), row[6], row[7]) for row in rows]

    def find(self, task_ids: list[str], backend: str) -> dict[str, JobRecord]:
        """The records kept of ``task_ids`` on this backend (by any notebook), by id."""
        found: dict[str, JobRecord] = {}
        try:
            with self._lock:
                for start in range(0, len(task_ids), 500):  # SQLite's bound on parameters
                    chunk = task_ids[start : start + 500]
                    rows = (
                        self._db()
                        .execute(
                            "SELECT id, name, shipped, task_ids, spans, submitted FROM jobs "
                            f"WHERE backend = ? AND id IN ({','.join('?' * len(chunk))})",
                            (backend, *chunk),
                        )
                        .fetchall()
                    )
                    found.update((row[0], _record_from(row)) for row in rows)
        except (sqlite3.Error, OSError) as exc:
            self.error = f"cannot read jobs from {self.path}: {exc}"
        return found

    def close(self) -> None:
        with self._lock, contextlib.suppress(sqlite3.Error):
            if self._connection is not None:
                self._connection.close()
            self._connection = None


def make_private_directory(directory: Path, *, tighten: bool) -> None:
    """Create ``directory`` (and missing parents) with mode 0700; ``tighten``: also take
    group and other bits off it if it exists (celerynb's own directory)."""
    missing: list[Path] = []
    while not os.path.lexists(directory):
        missing.append(directory)
        directory = directory.parent
    for new in reversed(missing):
        with contextlib.suppress(FileExistsError):  # another kernel made it meanwhile
            new.mkdir(mode=DIRECTORY_MODE)
    if tighten and not missing:
        _chmod_own(directory, DIRECTORY_MODE)


def make_private_files(path: Path, *, create: bool) -> None:
    """The database ``path`` (created 0600 if ``create``) and its -wal/-shm files, where
    they exist: refused unless this user owns them, else set to mode 0600."""
    if create:
        with contextlib.suppress(FileExistsError):
            os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, FILE_MODE))
    # By path, never by opening: closing a descriptor of a file would drop the POSIX
    # locks SQLite holds on it in this process.
    for file in (path, *(Path(f"{path}{suffix}") for suffix in SIDECARS)):
        if os.path.lexists(file):
            _chmod_own(file, FILE_MODE, regular=True)


def _chmod_own(path: Path, mode: int, *, regular: bool = False) -> None:
    info = os.stat(path)
    if info.st_uid != os.geteuid():
        raise PermissionError(
            f"{path} belongs to uid {info.st_uid}, not to this user (uid {os.geteuid()}): "
            f"not used; set ${STORE_ENV} to a file of your own"
        )
    if regular and not stat.S_ISREG(info.st_mode):
        raise PermissionError(f"{path} is not a regular file: not used")
    if stat.S_IMODE(info.st_mode) != mode:
        os.chmod(path, mode)


def _upgrade(db: sqlite3.Connection) -> None:
    """Create the table; rewrite a file of an older version so its stored call text is
    gone from the file itself, not only from the table."""
    if db.execute("PRAGMA user_version").fetchone()[0] >= SCHEMA_VERSION:
        return
    db.execute("BEGIN IMMEDIATE")  # one kernel at a time; the others wait (timeout)
    try:
        columns = {row[1] for row in db.execute("PRAGMA table_info(jobs)")}
        if "call_repr" in columns:
            db.execute(_SCHEMA.format(table="jobs_without_calls"))
            db.execute(f"INSERT INTO jobs_without_calls ({_COLUMNS}) SELECT {_COLUMNS} FROM jobs")
            db.execute("DROP TABLE jobs")
            db.execute("ALTER TABLE jobs_without_calls RENAME TO jobs")
        db.execute(_SCHEMA.format(table="jobs"))
        db.execute("COMMIT")
    except BaseException:
        db.execute("ROLLBACK")
        raise
    # The dropped table's pages (and the WAL's older frames) still hold its text: rebuild
    # the file, then empty the WAL. If another kernel keeps the WAL busy, the next open
    # tries again (user_version is set only once both succeeded).
    db.execute("VACUUM")
    busy = db.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchone()[0]
    if not busy:
        db.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")


def _record_from(row: tuple[Any, ...]) -> JobRecord:
    job_id, name, shipped, task_ids, spans, submitted = row
    return JobRecord(
        id=job_id,
        name=name,
        shipped=None if shipped is None else bool(shipped),
        task_ids=tuple(json.loads(task_ids)) if task_ids else (),
        spans=tuple(tuple(s) for s in json.loads(spans)) if spans else None,
        submitted=submitted,
    )


store = JobStore()
