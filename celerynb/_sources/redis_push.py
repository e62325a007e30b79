"""Task states pushed by Celery's Redis result backend (pub/sub, no polling).

It also tells a server that came back empty (restarted without persistence) from one
that kept its data: a sentinel key of this source's own, set when it connects, is
gone after such a restart (``data_lost``).
"""

from __future__ import annotations

import select
import socket
import uuid
from typing import Any

from kombu.utils.url import url_to_parts

from .._schema import STORED_MARKER
from .base import Update, decoded

SENTINEL_SECONDS = 7 * 24 * 3600


class RedisPushSource:
    """Subscribes to the task keys' channels; MGET after SUBSCRIBE catches up."""

    sees_every_update = True
    stores_states = True

    def __init__(self, app: Any) -> None:
        self._app = app
        # A channel of its own keeps the connection subscribed while no job is watched.
        self._own_channel = f"celerynb-wake-{uuid.uuid4().hex}"
        self._channel_to_id: dict[bytes, str] = {}
        self._pubsub: Any = None
        self._sentinel = f"celerynb-sentinel-{uuid.uuid4().hex}"
        self.data_lost = False  # the last resync found the server without its data
        self.restarted = False  # ... or found another server process (a restart)
        self._run_id: str | None = None
        # A local wake (a byte on a socket pair) instead of a PUBLISH: no round trip to
        # Redis for every job sent, and the watcher wakes without a trip through it.
        self._woken, self._waker = socket.socketpair()
        self._woken.setblocking(False)
        self._waker.setblocking(False)

    @property
    def broker_shares_server(self) -> bool:
        """Whether the broker is this same Redis server (its queues go with its data)."""
        try:
            broker = url_to_parts(self._app.conf.broker_write_url or self._app.conf.broker_url)
            backend = self._backend.connparams
        except Exception:
            return False
        host = broker.hostname or "localhost"
        same_host = {host, backend.get("host")} <= {"localhost", "127.0.0.1"} or (
            host == backend.get("host")
        )
        return (
            broker.scheme in ("redis", "rediss")
            and same_host
            and ((broker.port or 6379) == backend.get("port", 6379))
        )

    @property
    def _backend(self) -> Any:
        return self._app.backend  # thread-local instance in Celery

    def _ensure_pubsub(self) -> Any:
        if self._pubsub is None:
            client = self._backend.client
            self._pubsub = client.pubsub(ignore_subscribe_messages=True)
            self._pubsub.subscribe(self._own_channel, *self._channel_to_id)
            client.set(self._sentinel, b"1", ex=SENTINEL_SECONDS)
            run_id = self._server_run_id()
            self.restarted = None not in (run_id, self._run_id) and run_id != self._run_id
            self._run_id = run_id or self._run_id
        return self._pubsub

    def _server_run_id(self) -> str | None:
        try:
            return str(self._backend.client.info("server").get("run_id"))
        except Exception:  # INFO may be refused (ACLs): restarts are then not told
            return None

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
        message = pubsub.get_message(timeout=0)
        if message is None and not self._take_wakes():
            self._wait(pubsub, timeout)
            self._take_wakes()
            message = pubsub.get_message(timeout=0)
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
        sentinel_gone = not self._backend.client.exists(self._sentinel)
        self._ensure_pubsub()
        # Both: a client could delete the sentinel, but not change the server's run_id.
        self.data_lost = sentinel_gone and self.restarted
        return self._catch_up(list(self._channel_to_id))

    def wake(self) -> None:
        try:
            self._waker.send(b"\0")
        except (BlockingIOError, OSError):  # full: a wake is pending already; closed: stopped
            pass

    def _take_wakes(self) -> bool:
        """Whether a wake came (all of them are taken)."""
        woken = False
        try:
            while self._woken.recv(4096):
                woken = True
        except (BlockingIOError, OSError):
            pass
        return woken

    def _wait(self, pubsub: Any, timeout: float) -> None:
        """Until the server sends something, a wake comes, or ``timeout`` passes."""
        connection = pubsub.connection
        sock = getattr(connection, "_sock", None) if connection is not None else None
        if sock is None:  # not connected: get_message connects (and raises if it cannot)
            pubsub.get_message(timeout=min(timeout, 0.05))
            return
        if connection.can_read(timeout=0):  # read already, behind a message get_message
            return  # skipped (a subscription's confirmation): not on the socket any more
        _wait_readable([sock, self._woken], timeout)

    def close(self) -> None:
        try:
            self._backend.client.delete(self._sentinel)
        except Exception:
            pass
        if self._pubsub is not None:
            self._pubsub.close()
            self._pubsub = None
        self._woken.close()
        self._waker.close()

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
        raw = message["data"]
        if raw == STORED_MARKER:  # too big to publish: read it (see _outcomes)
            raw = self._backend.client.get(channel)
            if raw is None:
                return None
        return task_id, self._decode_raw(task_id, raw)

    def _decode_raw(self, task_id: str, raw: Any) -> dict[str, Any]:
        return decoded(task_id, lambda: self._backend.decode_result(raw))


def _wait_readable(sockets: list[Any], timeout: float) -> None:
    """Until one of ``sockets`` is readable or ``timeout`` seconds pass. ``poll`` where
    there is one: ``select`` cannot watch a descriptor numbered 1024 or more, which a
    kernel with many files open may give."""
    if hasattr(select, "poll"):
        poller = select.poll()
        for sock in sockets:
            poller.register(sock, select.POLLIN)
        poller.poll(max(timeout, 0) * 1000)
    else:
        select.select(sockets, [], [], timeout)
