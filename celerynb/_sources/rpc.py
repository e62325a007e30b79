"""Kernel side: task states from Celery's ``rpc://`` result backend.

With ``rpc://`` a worker sends every state of a task (STARTED, PROGRESS, the
result) as a message to the queue named by the task's ``reply_to``; nothing is
stored, so no other process and no later kernel can read them. A session sends
all its tasks with one ``reply_to`` of its own, and ``RpcReplySource`` consumes
that queue from the watcher thread on its own broker connection (Celery's
per-thread result consumer cannot be shared across threads).
"""

from __future__ import annotations

import contextlib
import logging
import socket
import uuid
from collections import OrderedDict
from typing import Any

import kombu

from .base import Update, decoded

log = logging.getLogger(__name__)

UNCLAIMED_LIMIT = 10_000  # states kept for tasks not watched (yet); the oldest go first
DEFAULT_QUEUE_EXPIRES = 24 * 3600  # seconds an unused reply queue lives on the broker
MAX_MESSAGES_PER_POLL = 5000


def is_rpc_backend(app: Any) -> bool:
    """True when ``app``'s result backend is ``rpc://``."""
    from celery.backends.rpc import RPCBackend

    return isinstance(app.backend, RPCBackend)


def new_reply_queue_name() -> str:
    return f"celerynb.reply.{uuid.uuid4().hex}"


def reply_queue(app: Any, name: str) -> kombu.Queue:
    """The reply queue ``name``: routed by name through the default exchange, as
    the rpc backend sends. Not auto-deleted, so states sent while the watcher
    reconnects wait for it; it expires once unused (``result_expires``)."""
    expires = app.conf.result_expires
    seconds = expires.total_seconds() if hasattr(expires, "total_seconds") else expires
    return kombu.Queue(
        name,
        kombu.Exchange(None),
        name,
        durable=False,
        auto_delete=False,
        expires=float(seconds or DEFAULT_QUEUE_EXPIRES),
    )


def declare_reply_queue(app: Any, name: str) -> None:
    """Create the reply queue before the first task is sent (states sent to a
    queue that does not exist yet are dropped by the broker)."""
    with app.connection_for_write() as connection:
        reply_queue(app, name)(connection.default_channel).declare()


class RpcReplySource:
    """Consumes a session's reply queue; keeps states of tasks not watched yet."""

    sees_every_update = True
    stores_states = False

    def __init__(self, app: Any, queue_name: str) -> None:
        self._app = app
        self._queue_name = queue_name
        self._watched: set[str] = set()
        self._unclaimed: OrderedDict[str, dict[str, Any]] = OrderedDict()
        self._received: list[Update] = []
        self._connection: Any = None
        self._consumer: Any = None

    def _ensure_consumer(self) -> Any:
        if self._connection is None:
            connection = self._app.connection_for_read()
            connection.ensure_connection(max_retries=1)
            queue = reply_queue(self._app, self._queue_name)
            self._consumer = kombu.Consumer(
                connection.default_channel,
                [queue],
                callbacks=[self._on_message],
                accept=self._app.conf.accept_content,
                no_ack=True,
            )
            self._consumer.consume()
            self._connection = connection
        return self._connection

    def _on_message(self, body: Any, message: Any) -> None:
        if not isinstance(body, dict) or "task_id" not in body:
            return
        task_id = str(body["task_id"])
        meta = decoded(task_id, lambda: self._app.backend.meta_from_decoded(dict(body)))
        if task_id in self._watched:
            self._received.append((task_id, meta))
            return
        self._unclaimed[task_id] = meta  # latest state wins
        self._unclaimed.move_to_end(task_id)
        while len(self._unclaimed) > UNCLAIMED_LIMIT:
            self._unclaimed.popitem(last=False)

    def watch(self, task_ids: list[str]) -> list[Update]:
        self._watched.update(task_ids)
        self._ensure_consumer()
        return [(i, self._unclaimed.pop(i)) for i in task_ids if i in self._unclaimed]

    def unwatch(self, task_ids: list[str]) -> None:
        self._watched.difference_update(task_ids)

    def poll(self, timeout: float) -> list[Update]:
        connection = self._ensure_consumer()
        # Woken by nothing: new jobs wait at most this long (their states are kept).
        with contextlib.suppress(socket.timeout, TimeoutError):
            connection.drain_events(timeout=min(timeout, 0.2))
            for _ in range(MAX_MESSAGES_PER_POLL):  # what is already there, hardly waiting
                connection.drain_events(timeout=0.001)
        updates, self._received = self._received, []
        return updates

    def resync(self) -> list[Update]:
        """After a lost connection: consume again (the queue kept what arrived)."""
        self._drop_connection()
        self._ensure_consumer()
        return []

    def wake(self) -> None:
        """Nothing to do: ``poll`` returns within 0.2 s by itself."""

    def close(self) -> None:
        """Stop consuming and delete the reply queue (only this session uses it)."""
        if self._connection is not None:
            with contextlib.suppress(Exception):
                # First: a queue deleted under its consumer makes the broker cancel it,
                # and amqp warns of that cancel arriving while the channel closes.
                self._consumer.cancel()
            with contextlib.suppress(Exception):
                reply_queue(self._app, self._queue_name)(self._connection.default_channel).delete()
        self._drop_connection()

    def _drop_connection(self) -> None:
        connection, self._connection, self._consumer = self._connection, None, None
        if connection is not None:
            with contextlib.suppress(Exception):
                connection.close()
