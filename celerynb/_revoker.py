"""Kernel side: revoking tasks in the background, one broadcast for many cancels.

``Job.cancel()`` returns at once. One thread per session sends the revokes: every
id cancelled meanwhile goes in the same broadcast (cancelling 1,000 jobs one by one
costs one or a few broadcasts, and never more than one broker connection).
"""

from __future__ import annotations

import logging
import queue
import threading
from collections.abc import Callable
from typing import Any

from celery import states
from celery.exceptions import TaskRevokedError

from ._errors import ShippedTaskError
from ._remote_errors import pickle_exception
from ._signing import seal

log = logging.getLogger(__name__)

REPLY_TIMEOUT = 1.0  # seconds to wait for the workers' replies to a revoke
IDLE_SECONDS = 2.0  # the thread ends after this long without work
REASON = "revoked by celerynb"


class Revoker:
    """Revokes tasks from one background thread; records REVOKED where states are stored.

    After the workers replied (so a terminated task was already signalled and its
    last progress write cannot land after ours), tasks not finished are marked
    REVOKED in the backend: when a prefork worker terminates two running tasks at
    once it may record only one of them (measured with Celery 5.7), which would
    leave the other in PROGRESS for every other observer. A shipped task's REVOKED
    is signed with the session's secret (other kernels accept no other).
    """

    def __init__(
        self, app: Any, *, stores_states: bool, secret: Callable[[], bytes] | None = None
    ) -> None:
        self._app = app
        self._stores_states = stores_states
        self._secret = secret
        self._pending: queue.SimpleQueue[tuple[str, bool]] = queue.SimpleQueue()
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None

    def revoke(self, task_ids: list[str], *, shipped: bool = False) -> None:
        """Queue ``task_ids`` for revoking (terminating running ones); return at once."""
        for task_id in task_ids:
            self._pending.put((task_id, shipped))
        with self._lock:
            if self._thread is None or not self._thread.is_alive():
                self._thread = threading.Thread(
                    target=self._run, name="celerynb-revoke", daemon=True
                )
                self._thread.start()

    def _run(self) -> None:
        while True:
            try:
                ids = [self._pending.get(timeout=IDLE_SECONDS)]
            except queue.Empty:
                with self._lock:
                    if self._pending.empty():
                        self._thread = None
                        return
                continue
            while not self._pending.empty():
                ids.append(self._pending.get_nowait())
            self._revoke_and_record(ids)

    def _revoke_and_record(self, entries: list[tuple[str, bool]]) -> None:
        ids = [task_id for task_id, _shipped in entries]
        try:
            self._app.control.revoke(
                ids, terminate=True, signal="SIGTERM", reply=True, timeout=REPLY_TIMEOUT
            )
            if not self._stores_states:
                return
            backend = self._app.backend
            for task_id, shipped in entries:
                if backend.get_state(task_id) in states.READY_STATES:
                    continue
                signed = self._signed_revoke(task_id) if shipped else None
                if signed is None:
                    backend.mark_as_revoked(task_id, reason=REASON)
                else:
                    backend.store_result(task_id, signed, states.REVOKED)
        except Exception as exc:  # the kernel-side jobs are cancelled whatever happens here
            log.warning("celerynb: revoking %d task(s) failed: %s", len(ids), exc)

    def _signed_revoke(self, task_id: str) -> ShippedTaskError | None:
        if self._secret is None:
            return None
        try:
            key = self._secret()
        except Exception:
            return None
        error = TaskRevokedError(REASON)
        sealed = seal(pickle_exception(error), secret=key, purpose="error", task_id=task_id)
        return ShippedTaskError(f"TaskRevokedError: {REASON}", sealed)
