"""Kernel side: task states from backends that do not push (database, memcached, ...).

``PollingSource`` reads every watched task at most once per ``interval`` and in
batches: one ``SELECT ... WHERE task_id IN (...)`` per ``BATCH`` tasks on a
database backend, one ``MGET`` on key-value backends, one read per task only
where a backend offers nothing better.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterator
from functools import partial
from typing import Any

from kombu.utils.encoding import ensure_bytes

from .base import Update, decoded

log = logging.getLogger(__name__)

BATCH = 500  # task ids per query


class PollingSource:
    """Reads every watched task's state, at most once per ``interval`` seconds."""

    sees_every_update = False
    stores_states = True

    def __init__(
        self,
        app: Any,
        interval: float = 0.5,
        clock: Callable[[], float] = time.monotonic,
        read: Callable[[Any, list[str]], Iterator[Update]] | None = None,
    ) -> None:
        self._clock = clock
        self._read_states = read or read_states
        self._app = app
        self._interval = interval
        self._ids: dict[str, None] = {}
        self._last_round = float("-inf")
        self._woken = threading.Event()

    def watch(self, task_ids: list[str]) -> list[Update]:
        self._ids.update(dict.fromkeys(task_ids))
        return self._read(task_ids)

    def unwatch(self, task_ids: list[str]) -> None:
        for task_id in task_ids:
            self._ids.pop(task_id, None)

    def poll(self, timeout: float) -> list[Update]:
        wait = self._last_round + self._interval - self._clock()
        if wait > 0:
            self._woken.wait(min(wait, timeout))
            self._woken.clear()
            if self._last_round + self._interval > self._clock():
                return []
        self._last_round = self._clock()
        return self._read(list(self._ids))

    def resync(self) -> list[Update]:
        return self._read(list(self._ids))

    def wake(self) -> None:
        self._woken.set()

    def close(self) -> None:
        self._ids.clear()

    def _read(self, task_ids: list[str]) -> list[Update]:
        backend = self._app.backend
        updates: list[Update] = []
        for start in range(0, len(task_ids), BATCH):
            updates.extend(self._read_states(backend, task_ids[start : start + BATCH]))
        return updates


def read_states(backend: Any, task_ids: list[str]) -> Iterator[Update]:
    """The stored states of ``task_ids`` (tasks with nothing stored are left out)."""
    from celery.backends.base import KeyValueStoreBackend
    from celery.backends.database import DatabaseBackend

    if isinstance(backend, DatabaseBackend):
        yield from _read_database(backend, task_ids)
    elif isinstance(backend, KeyValueStoreBackend):
        keys = [backend.get_key_for_task(task_id) for task_id in task_ids]
        for task_id, raw in zip(task_ids, backend.mget(keys)):
            if raw is not None:
                yield task_id, decoded(task_id, partial(backend.decode_result, raw))
    else:
        for task_id in task_ids:
            yield task_id, backend.get_task_meta(task_id)


def _read_database(backend: Any, task_ids: list[str]) -> Iterator[Update]:
    from celery.backends.database import session_cleanup

    table = backend.task_cls
    session = backend.ResultSession()
    with session_cleanup(session):
        rows = [row.to_dict() for row in session.query(table).filter(table.task_id.in_(task_ids))]
    for row in rows:
        yield row["task_id"], decoded(row["task_id"], partial(_row_meta, backend, row))


def _row_meta(backend: Any, row: dict[str, Any]) -> dict[str, Any]:
    # Only the configured serializer: never Celery's fallback that unpickles
    # legacy-looking rows (anyone who can write the table could run code here).
    raw = row["result"]
    row["result"] = None if raw is None else backend.decode(ensure_bytes(raw))
    row["children"] = None
    return backend.meta_from_decoded(row)
