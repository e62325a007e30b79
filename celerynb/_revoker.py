"""Kernel side: revoking tasks in the background, one broadcast for many cancels.

``Job.cancel()`` returns at once. One thread per session sends the revokes: every
id cancelled meanwhile goes in the same broadcast (cancelling 1,000 jobs one by one
costs one or a few broadcasts, and never more than one broker connection).

Celery keeps revokes only in the workers' memory and broadcasts them without
storing them: a revoke that could not be sent while the broker was down is lost,
and the task runs once the broker is back. So a revoke that failed is kept and
sent again, with backoff, until a worker answers it (at most ``result_expires``);
meanwhile ``note(task_id)`` says so under its job.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from celery import states
from celery.exceptions import TaskRevokedError

from ._config import failure_line, mask_url
from ._errors import ShippedTaskError, one_line
from ._remote_errors import sealed_error

log = logging.getLogger(__name__)

REPLY_TIMEOUT = 1.0  # seconds to wait for the workers' replies to a revoke
IDLE_SECONDS = 2.0  # the thread ends after this long without work
REASON = "revoked by celerynb"
FIRST_RETRY = 0.5  # seconds before a failed revoke is sent again; doubles up to MAX_RETRY
MAX_RETRY = 5.0
DEFAULT_GIVE_UP_AFTER = 24 * 3600.0  # when the app sets no result_expires
GAVE_UP_KEPT = 10_000  # notes of given-up revokes kept (the oldest go first)

OnChange = Callable[[], None]


@dataclass
class _Undelivered:
    shipped: bool
    since: float
    why: str
    on_change: OnChange | None


def give_up_after(app: Any) -> float:
    """Seconds a revoke is retried: the app's ``result_expires`` (by then its job's
    state is gone from the backend anyway), else one day."""
    expires = app.conf.result_expires
    seconds = expires.total_seconds() if hasattr(expires, "total_seconds") else expires
    return float(seconds or DEFAULT_GIVE_UP_AFTER)


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
        self,
        app: Any,
        *,
        stores_states: bool,
        secret: Callable[[], bytes] | None = None,
        give_up_after: float | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._app = app
        self._clock = clock
        self._stores_states = stores_states
        self._secret = secret
        self._give_up_after = give_up_after
        self._pending: queue.SimpleQueue[tuple[str, bool, OnChange | None] | None] = (
            queue.SimpleQueue()
        )
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self._closed = False
        self._undelivered: dict[str, _Undelivered] = {}
        self._gave_up: OrderedDict[str, str] = OrderedDict()
        self._retry_in = FIRST_RETRY
        self._next_retry = 0.0

    def revoke(
        self, task_ids: list[str], *, shipped: bool = False, on_change: OnChange | None = None
    ) -> None:
        """Queue ``task_ids`` for revoking (terminating running ones); return at once.

        ``on_change()`` is called (from the revoker's thread) whenever ``note`` of
        these ids changes: the revoke could not be sent, or finally was.
        """
        for task_id in task_ids:
            self._pending.put((task_id, shipped, on_change))
        with self._lock:
            if self._closed:
                return
            if self._thread is None or not self._thread.is_alive():
                self._thread = threading.Thread(
                    target=self._run, name="celerynb-revoke", daemon=True
                )
                self._thread.start()

    def note(self, task_id: str) -> str | None:
        """Why the revoke of ``task_id`` has not reached the workers, else None."""
        entry = self._undelivered.get(task_id)
        if entry is not None:
            return (
                f"cancelled here, but the revoke has not reached the workers yet ({entry.why}); "
                "retrying until a worker answers: until then a worker may still run the task"
            )
        return self._gave_up.get(task_id)

    def close(self, timeout: float = 5.0) -> None:
        """Send what is queued once more, then stop; revokes still not delivered are
        given up (and their jobs say so)."""
        with self._lock:
            self._closed = True
            thread = self._thread
        self._pending.put(None)
        if thread is not None:
            thread.join(timeout)
        self._give_up(list(self._undelivered), "the connection was closed first")

    # -- the thread ---------------------------------------------------------------
    def _run(self) -> None:
        while True:
            wait = IDLE_SECONDS
            if self._undelivered:
                wait = max(self._next_retry - self._clock(), 0.0)
            batch = []
            try:
                batch.append(self._pending.get(timeout=wait))
            except queue.Empty:
                with self._lock:
                    if self._pending.empty() and not self._undelivered:
                        self._thread = None
                        return
            while not self._pending.empty():
                batch.append(self._pending.get_nowait())
            closing = self._closed
            entries = [entry for entry in batch if entry is not None]
            new_ids = {entry[0] for entry in entries}
            retry = [
                (task_id, e.shipped, e.on_change)
                for task_id, e in list(self._undelivered.items())
                if task_id not in new_ids
            ]
            if entries or (retry and (closing or self._clock() >= self._next_retry)):
                try:
                    self._send(entries + retry)
                except Exception as exc:  # a bug here must not stop later revokes
                    log.warning("celerynb: revoking failed: %s", one_line(repr(exc)))
            if closing:
                return

    def _send(self, entries: list[tuple[str, bool, OnChange | None]]) -> None:
        ids = list(dict.fromkeys(task_id for task_id, _shipped, _on_change in entries))
        url = self._app.conf.broker_write_url
        try:
            with self._app.connection_for_write() as connection:
                # One try: kombu's own retries would hold every later cancel for seconds.
                connection.ensure_connection(max_retries=0)
                replies = self._app.control.revoke(
                    ids,
                    terminate=True,
                    signal="SIGTERM",
                    reply=True,
                    timeout=REPLY_TIMEOUT,
                    connection=connection,
                )
        except Exception as exc:
            why = failure_line("cannot reach the broker at", url, exc)
            self._not_delivered(entries, why)
            return
        # A revoke sent again after a failure counts once a worker answered it: sent
        # while the workers are still reconnecting, it reaches nobody (a broadcast).
        answered = bool(replies)
        delivered = [e for e in entries if answered or e[0] not in self._undelivered]
        waiting = [e for e in entries if not answered and e[0] in self._undelivered]
        self._delivered(delivered)
        if waiting:
            self._not_delivered(waiting, f"no worker answered it on {mask_url(url)} yet")
        if self._stores_states:
            self._record_revoked(delivered)

    def _not_delivered(self, entries: list[tuple[str, bool, OnChange | None]], why: str) -> None:
        now = self._clock()
        first = not self._undelivered
        changed: list[OnChange] = []
        expired: list[str] = []
        limit = self._give_up_after or give_up_after(self._app)
        for task_id, shipped, on_change in entries:
            entry = self._undelivered.get(task_id)
            if entry is None:
                self._undelivered[task_id] = _Undelivered(shipped, now, why, on_change)
            elif now - entry.since >= limit:
                expired.append(task_id)
                continue
            elif entry.why == why:
                continue
            else:
                entry.why = why
            if on_change is not None:
                changed.append(on_change)
        if first and self._undelivered:
            log.warning(
                "celerynb: the revoke of %d task(s) was not sent (%s); their jobs say so, "
                "and it is sent again in the background until a worker answers it",
                len(entries),
                why,
            )
        self._give_up(expired, why)
        self._next_retry = now + self._retry_in
        self._retry_in = min(self._retry_in * 2, MAX_RETRY)
        _call_each(changed)

    def _delivered(self, entries: list[tuple[str, bool, OnChange | None]]) -> None:
        late = [self._undelivered.pop(e[0]) for e in entries if e[0] in self._undelivered]
        if not late:
            return
        if not self._undelivered:
            self._retry_in = FIRST_RETRY
        log.info(
            "celerynb: the revoke of %d task(s) reached the workers %.1fs after it was first tried",
            len(late),
            self._clock() - min(e.since for e in late),
        )
        _call_each([e.on_change for e in late if e.on_change is not None])

    def _give_up(self, task_ids: list[str], why: str) -> None:
        given_up = {t: self._undelivered.pop(t) for t in task_ids if t in self._undelivered}
        if not given_up:
            return
        for task_id in given_up:
            self._gave_up[task_id] = (
                f"cancelled here, but the revoke never reached the workers ({why}): "
                "a worker may still run the task"
            )
            while len(self._gave_up) > GAVE_UP_KEPT:
                self._gave_up.popitem(last=False)
        log.warning(
            "celerynb: gave up revoking %d task(s) (%s): a worker may still run them",
            len(given_up),
            why,
        )
        _call_each([e.on_change for e in given_up.values() if e.on_change is not None])

    def _record_revoked(self, entries: list[tuple[str, bool, OnChange | None]]) -> None:
        try:
            backend = self._app.backend
            for task_id, shipped, _on_change in entries:
                if backend.get_state(task_id) in states.READY_STATES:
                    continue
                signed = self._signed_revoke(task_id) if shipped else None
                if signed is None:
                    backend.mark_as_revoked(task_id, reason=REASON)
                else:
                    backend.store_result(task_id, signed, states.REVOKED)
        except Exception as exc:  # the workers have the revoke; other observers may not
            log.warning(
                "celerynb: recording REVOKED for %d task(s) in the result backend failed: %s",
                len(entries),
                one_line(str(exc)),
            )

    def _signed_revoke(self, task_id: str) -> ShippedTaskError | None:
        if self._secret is None:
            return None
        try:
            key = self._secret()
        except Exception:
            return None
        return sealed_error(TaskRevokedError(REASON), secret=key, task_id=task_id)


def _call_each(callbacks: list[OnChange]) -> None:
    for callback in dict.fromkeys(callbacks):  # once each, in order
        try:
            callback()
        except Exception:  # a broken display must not stop the revokes
            log.debug("celerynb: a revoke listener failed", exc_info=True)
