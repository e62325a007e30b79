"""Kernel side: a small local record of the jobs each notebook submitted (SQLite).

After a kernel restart, ``celerynb.jobs(previous=True)`` reads it to find the
jobs the notebook had (in flight or finished since) and watches them again.
Only ids, names and the shape of groups are stored: never arguments or results,
never a URL's password (backends are matched by a hash of their URL).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import sqlite3
import threading
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

STORE_ENV = "CELERYNB_STORE"
KEEP_SECONDS = 7 * 24 * 3600  # older records are dropped
RUN_ID = uuid.uuid4().hex  # this kernel process

_SCHEMA = """
CREATE TABLE IF NOT EXISTS jobs (
    id TEXT PRIMARY KEY,
    notebook TEXT NOT NULL,
    run TEXT NOT NULL,
    backend TEXT NOT NULL,
    name TEXT NOT NULL,
    call_repr TEXT NOT NULL,
    shipped INTEGER,
    task_ids TEXT,
    spans TEXT,
    submitted REAL NOT NULL
)
"""


@dataclass(frozen=True)
class JobRecord:
    """What is kept of one job or group: enough to watch it again."""

    id: str
    name: str
    call_repr: str
    shipped: bool | None
    task_ids: tuple[str, ...] = ()  # a group's tasks; empty for a single job
    spans: tuple[tuple[int, int], ...] | None = None  # a map's chunks
    submitted: float = 0.0


def default_path() -> Path:
    """``$CELERYNB_STORE``, else ``$XDG_DATA_HOME/celerynb/jobs.sqlite3`` (~/.local/share)."""
    explicit = os.environ.get(STORE_ENV)
    if explicit:
        return Path(explicit)
    base = os.environ.get("XDG_DATA_HOME") or Path.home() / ".local" / "share"
    return Path(base) / "celerynb" / "jobs.sqlite3"


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
            path.parent.mkdir(parents=True, exist_ok=True)
            connection = sqlite3.connect(path, timeout=5, check_same_thread=False)
            connection.execute("PRAGMA journal_mode=WAL")
            connection.execute("PRAGMA synchronous=NORMAL")
            connection.execute(_SCHEMA)
            expired = time.time() - KEEP_SECONDS
            connection.execute("DELETE FROM jobs WHERE submitted < ?", (expired,))
            connection.commit()
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
            record.call_repr,
            None if record.shipped is None else int(record.shipped),
            json.dumps(list(record.task_ids)) if record.task_ids else None,
            json.dumps(record.spans) if record.spans is not None else None,
            record.submitted or time.time(),
        )
        try:
            with self._lock:
                db = self._db()
                db.execute("INSERT OR IGNORE INTO jobs VALUES (?,?,?,?,?,?,?,?,?,?)", row)
                db.commit()
        except (sqlite3.Error, OSError) as exc:
            self.error = f"cannot record jobs in {self.path}: {exc}"

    def previous(self, backend: str) -> list[JobRecord]:
        """This notebook's jobs from earlier kernels on the same backend, oldest first."""
        try:
            with self._lock:
                rows = (
                    self._db()
                    .execute(
                        "SELECT id, name, call_repr, shipped, task_ids, spans, submitted FROM jobs "
                        "WHERE notebook = ? AND backend = ? AND run != ? ORDER BY submitted",
                        (notebook_key(), backend, RUN_ID),
                    )
                    .fetchall()
                )
        except (sqlite3.Error, OSError) as exc:
            self.error = f"cannot read jobs from {self.path}: {exc}"
            return []
        return [_record_from(row) for row in rows]

    def close(self) -> None:
        with self._lock, contextlib.suppress(sqlite3.Error):
            if self._connection is not None:
                self._connection.close()
            self._connection = None


def _record_from(row: tuple[Any, ...]) -> JobRecord:
    job_id, name, call_repr, shipped, task_ids, spans, submitted = row
    return JobRecord(
        id=job_id,
        name=name,
        call_repr=call_repr,
        shipped=None if shipped is None else bool(shipped),
        task_ids=tuple(json.loads(task_ids)) if task_ids else (),
        spans=tuple(tuple(s) for s in json.loads(spans)) if spans else None,
        submitted=submitted,
    )


store = JobStore()
