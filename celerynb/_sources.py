"""Kernel side: where task states come from. One interface, two implementations.

``RedisPushSource`` listens to the messages Celery's Redis backend already
publishes on each task's key (one connection for all jobs, no polling).
``RpcReplySource`` (``_rpc``) consumes the session's reply queue of ``rpc://``.
``PollingSource`` (``_polling``) reads any other backend at a bounded rate.
Both are used from the watcher thread only, except ``wake()``.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Callable
from typing import Any, Protocol

from celery import states

from ._errors import UndecodableResultError

log = logging.getLogger(__name__)

Update = tuple[str, dict[str, Any]]  # (task_id, decoded meta)
UNDECODABLE = "celerynb_undecodable"  # set in the meta standing for an unreadable entry


def decoded(task_id: str, decode: Callable[[], Any]) -> dict[str, Any]:
    """``decode()``'s meta, or, when the entry cannot be decoded (garbage, a pickle,
    a state that is not a string...), a FAILURE meta for this one task saying so:
    one bad entry must not stop the others (nor be re-read forever)."""
    try:
        meta = decode()
        if not isinstance(meta, dict):
            raise TypeError(f"decoded to {type(meta).__name__}, not a dict")
        hash(meta.get("status"))
        return meta
    except Exception as exc:
        log.warning("celerynb: cannot decode the stored state of task %s: %s", task_id, exc)
        error = UndecodableResultError(
            f"the result backend holds an entry for task {task_id} that cannot be decoded "
            f"with the configured serializer ({type(exc).__name__}); refused"
        )
        return {"status": states.FAILURE, "result": error, "traceback": None, UNDECODABLE: True}


class StateSource(Protocol):
    def watch(self, task_ids: list[str]) -> list[Update]:
        """Start following tasks; return their current states (catch-up)."""

    def unwatch(self, task_ids: list[str]) -> None:
        """Stop following tasks."""

    def poll(self, timeout: float) -> list[Update]:
        """Wait up to ``timeout`` seconds for updates; return them (maybe none)."""

    def resync(self) -> list[Update]:
        """After a lost connection: connect again and return every current state."""

    def wake(self) -> None:
        """Make a pending ``poll`` return soon. Safe from any thread."""

    def close(self) -> None: ...


class RedisPushSource:
    """Subscribes to the task keys' channels; MGET after SUBSCRIBE catches up."""

    sees_every_update = True

    def __init__(self, app: Any) -> None:
        self._app = app
        self._wake_channel = f"celerynb-wake-{uuid.uuid4().hex}"
        self._channel_to_id: dict[bytes, str] = {}
        self._pubsub: Any = None
        self._reconnect_needed = False

    @property
    def _backend(self) -> Any:
        return self._app.backend  # thread-local instance in Celery

    def _ensure_pubsub(self) -> Any:
        if self._pubsub is None:
            self._pubsub = self._backend.client.pubsub(ignore_subscribe_messages=True)
            self._pubsub.subscribe(self._wake_channel, *self._channel_to_id)
        return self._pubsub

    def watch(self, task_ids: list[str]) -> list[Update]:
        keys = [self._key(task_id) for task_id in task_ids]
        for key, task_id in zip(keys, task_ids):
            self._channel_to_id[key] = task_id
        pubsub = self._ensure_pubsub()
        if keys:
            pubsub.subscribe(*keys)
        return self._catch_up(keys)

    def unwatch(self, task_ids: list[str]) -> None:
        keys = [self._key(task_id) for task_id in task_ids]
        for key in keys:
            self._channel_to_id.pop(key, None)
        if keys and self._pubsub is not None:
            self._pubsub.unsubscribe(*keys)

    def poll(self, timeout: float) -> list[Update]:
        pubsub = self._ensure_pubsub()
        updates: list[Update] = []
        message = pubsub.get_message(timeout=timeout)
        while message is not None:
            update = self._decode(message)
            if update is not None:
                updates.append(update)
            if len(updates) >= 5000:
                break
            message = pubsub.get_message(timeout=0)
        return updates

    def resync(self) -> list[Update]:
        """After a lost connection: subscribe again and read every state once."""
        if self._pubsub is not None:
            try:
                self._pubsub.close()
            except Exception:
                pass
        self._pubsub = None
        self._ensure_pubsub()
        return self._catch_up(list(self._channel_to_id))

    def wake(self) -> None:
        self._backend.client.publish(self._wake_channel, b"")

    def close(self) -> None:
        if self._pubsub is not None:
            self._pubsub.close()
            self._pubsub = None

    def _key(self, task_id: str) -> bytes:
        key = self._backend.get_key_for_task(task_id)
        return key if isinstance(key, bytes) else key.encode()

    def _catch_up(self, keys: list[bytes]) -> list[Update]:
        updates: list[Update] = []
        for start in range(0, len(keys), 1000):
            chunk = keys[start : start + 1000]
            for key, raw in zip(chunk, self._backend.client.mget(chunk)):
                task_id = self._channel_to_id.get(key)
                if raw is not None and task_id is not None:
                    updates.append((task_id, self._decode_raw(task_id, raw)))
        return updates

    def _decode(self, message: dict[str, Any]) -> Update | None:
        if message.get("type") != "message":
            return None
        channel = message["channel"]
        task_id = self._channel_to_id.get(channel)
        if task_id is None:
            return None
        return task_id, self._decode_raw(task_id, message["data"])

    def _decode_raw(self, task_id: str, raw: Any) -> dict[str, Any]:
        return decoded(task_id, lambda: self._backend.decode_result(raw))


def source_for(app: Any, reply_to: str | None = None) -> StateSource:
    """Push where the backend publishes states (Redis), the session's reply queue
    for ``rpc://``, polling elsewhere."""
    from celery.backends.redis import RedisBackend

    if reply_to is not None:
        from ._rpc import RpcReplySource

        return RpcReplySource(app, reply_to)
    if isinstance(app.backend, RedisBackend):
        return RedisPushSource(app)
    from ._polling import PollingSource

    return PollingSource(app)
