"""Task states pushed by Celery's Redis result backend (pub/sub, no polling).

The calls this kernel sends get task ids that end with a suffix of this source's own
(``new_task_id``), and one pattern subscription covers all of their channels: a job
sent once that subscription is confirmed needs no SUBSCRIBE, no read-back and no
UNSUBSCRIBE of its own (``covering``, ``adopt``). Other tasks (attached, a chain's
steps) are subscribed one by one and read back after subscribing.

It also tells a server that came back empty (restarted without persistence) from one
that kept its data: a sentinel key of this source's own, set when it connects, is
gone after such a restart (``data_lost``).
"""

from __future__ import annotations

import re
import select
import socket
import time
import uuid
from typing import Any

from kombu.utils.url import url_to_parts

from .._schema import STORED_MARKER
from .base import Update, decoded

SENTINEL_SECONDS = 7 * 24 * 3600
CONFIRM_SECONDS = 10.0  # for the server to answer the PING behind a new subscription


class RedisPushSource:
    """Subscribes to the task keys' channels (one pattern for this kernel's own calls);
    MGET after subscribing catches up."""

    sees_every_update = True
    stores_states = True

    def __init__(self, app: Any) -> None:
        self._app = app
        # A channel of its own keeps the connection subscribed while no job is watched.
        self._own_channel = f"celerynb-wake-{uuid.uuid4().hex}"
        # The end of every task id new_task_id makes (ids are told apart by how they
        # begin: %celery_cancel takes the first characters of one).
        self._id_suffix = uuid.uuid4().hex[:8]
        self._channel_to_id: dict[bytes, str] = {}
        self._subscribed: set[bytes] = set()  # channels subscribed one by one
        self._pubsub: Any = None
        self._generation = 0  # pub/sub connections made so far
        self._covering: int | None = None  # the one whose pattern is confirmed, if any
        self._early: list[dict[str, Any]] = []  # read while waiting for a confirmation
        self._expected: set[str] = set()  # stamped calls not yet adopted (see stamp)
        self._sentinel = f"celerynb-sentinel-{uuid.uuid4().hex}"
        self.data_lost = False  # the last resync found the server without its data
        self.restarted = False  # ... or found another server process (a restart)
        self._run_id: str | None = None
        # A local wake (a byte on a socket pair) instead of a PUBLISH: no round trip to
        # Redis for every job sent, and the watcher wakes without a trip through it.
        self._woken, self._waker = socket.socketpair()
        self._woken.setblocking(False)
        self._waker.setblocking(False)
        self._key_prefix = self._probe_key_prefix()

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

    def new_task_id(self) -> str:
        """A task id for a call this kernel sends: a UUID that ends with this source's
        suffix, so that its channel is under the pattern subscription."""
        return str(uuid.uuid4())[: -len(self._id_suffix)] + self._id_suffix

    def covering(self, task_id: str) -> int | None:
        """The pub/sub connection (its number) whose confirmed pattern subscription
        covers ``task_id``'s channel; None: none does now. Safe from any thread."""
        return self._covering if self._covers(task_id) else None

    def stamp(self, task_id: str) -> int | None:
        """``covering``, for a call about to be sent: while that connection lasts it
        needs no catch-up (``adopt``), and a state of it read before the watcher adopts
        it is kept (other unknown channels under the pattern are dropped unread).
        Safe from any thread."""
        token = self.covering(task_id)
        if token is not None:
            self._expected.add(task_id)
        return token

    def adopt(self, task_ids: list[str]) -> None:
        """Follow calls stamped with the ``covering`` number that is still current:
        their every state reaches ``poll`` (no I/O here)."""
        for task_id in task_ids:
            self._channel_to_id[self._key(task_id)] = task_id
            self._expected.discard(task_id)

    def _covers(self, task_id: str) -> bool:
        return task_id.endswith(self._id_suffix) and self._key_prefix is not None

    def _probe_key_prefix(self) -> bytes | None:
        """What a task's key is before its id; None where a backend lays its keys out
        otherwise (then no pattern: every task is subscribed one by one)."""
        first, second = self._key("0a"), self._key("1b")
        return first[:-2] if first.endswith(b"0a") and first[:-2] == second[:-2] else None

    def _ensure_pubsub(self) -> Any:
        if self._pubsub is None:
            client = self._backend.client
            pubsub = client.pubsub(ignore_subscribe_messages=True)
            pattern = self._pattern()
            try:
                pubsub.subscribe(self._own_channel, *self._subscribed)
                if pattern is not None:
                    pubsub.psubscribe(pattern)
                    self._confirm(pubsub)
            except BaseException:
                pubsub.close()
                raise
            self._pubsub = pubsub
            self._generation += 1
            self._covering = self._generation if pattern is not None else None
            client.set(self._sentinel, b"1", ex=SENTINEL_SECONDS)
            run_id = self._server_run_id()
            self.restarted = None not in (run_id, self._run_id) and run_id != self._run_id
            self._run_id = run_id or self._run_id
        return self._pubsub

    def _pattern(self) -> bytes | None:
        """The channels of this source's own task ids (glob characters escaped)."""
        prefix = self._key_prefix
        if prefix is None:
            return None
        return re.sub(rb"([*?\[\]\\])", rb"\\\1", prefix) + b"*" + self._id_suffix.encode()

    def _confirm(self, pubsub: Any) -> None:
        """Until the server has taken the subscriptions: it answers a PING behind them
        (in order, on the same connection). States read before its answer are kept
        for ``poll``."""
        token = f"celerynb-confirm-{uuid.uuid4().hex}"
        pubsub.ping(token)
        deadline = time.monotonic() + CONFIRM_SECONDS
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError(
                    f"the result backend did not confirm a subscription in {CONFIRM_SECONDS:.0f}s"
                )
            message = pubsub.get_message(timeout=left)
            if message is None:
                continue
            if message.get("type") == "pong":
                if message.get("data") in (token, token.encode()):
                    return
                continue
            self._early.append(message)

    def _server_run_id(self) -> str | None:
        try:
            return str(self._backend.client.info("server").get("run_id"))
        except Exception:  # INFO may be refused (ACLs): restarts are then not told
            return None

    def watch(self, task_ids: list[str]) -> list[Update]:
        keys = [self._key(task_id) for task_id in task_ids]
        for key, task_id in zip(keys, task_ids):
            self._channel_to_id[key] = task_id
            self._expected.discard(task_id)
        # Known before any I/O: a connection made again (now, or after a failure
        # below) subscribes them all.
        alone = [
            key
            for key, task_id in zip(keys, task_ids)
            if not self._covers(task_id) and key not in self._subscribed
        ]
        self._subscribed.update(alone)
        connected = self._pubsub is not None
        pubsub = self._ensure_pubsub()  # its pattern confirmed: it covers our own from now
        if alone and connected:
            pubsub.subscribe(*alone)
        return self._catch_up(keys)

    def unwatch(self, task_ids: list[str]) -> None:
        keys = [self._key(task_id) for task_id in task_ids]
        for key in keys:
            self._channel_to_id.pop(key, None)
        alone = [key for key in keys if key in self._subscribed]
        self._subscribed.difference_update(alone)
        if alone and self._pubsub is not None:
            self._pubsub.unsubscribe(*alone)

    def poll(self, timeout: float) -> list[Update]:
        pubsub = self._ensure_pubsub()
        updates: list[Update] = []
        early, self._early = self._early, []
        for message in early:
            update = self._decode(message)
            if update is not None:
                updates.append(update)
        message = pubsub.get_message(timeout=0)
        if message is None and not updates and not self._take_wakes():
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
        self._covering = None  # first: a call stamped from now on is caught up
        if self._pubsub is not None:
            try:
                self._pubsub.close()
            except Exception:
                pass
        self._pubsub = None
        self._early = []  # the catch-up below reads every state again
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
        self._covering = None
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
        kind = message.get("type")
        if kind not in ("message", "pmessage"):
            return None
        channel = message["channel"]
        task_id = self._channel_to_id.get(channel)
        if task_id is None and kind == "pmessage":
            # One of ours whose job the watcher has queued but not yet handed over
            # (it hands jobs queued meanwhile over before it applies what poll read).
            task_id = self._own_task_id(channel)
        if task_id is None:
            return None
        raw = message["data"]
        if raw == STORED_MARKER:  # too big to publish: read it (see _outcomes)
            raw = self._backend.client.get(channel)
            if raw is None:
                return None
        return task_id, self._decode_raw(task_id, raw)

    def _own_task_id(self, channel: Any) -> str | None:
        """The id of a call stamped but not yet adopted whose channel this is."""
        prefix = self._key_prefix
        if prefix is None or not isinstance(channel, bytes) or not channel.startswith(prefix):
            return None
        try:
            task_id = channel[len(prefix) :].decode("ascii")
        except UnicodeDecodeError:
            return None
        return task_id if task_id in self._expected else None

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
