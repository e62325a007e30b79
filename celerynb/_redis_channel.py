"""Broker connections of the Celery apps celerynb builds: kombu's Redis channel with one
client where kombu builds one per command.

kombu's Redis channel builds a new ``redis.Redis`` for every command it sends outside
its polling connection: each publish, and, in a worker, the two writes of its
unacknowledged-message bookkeeping for every message (on receipt and on ack). Building
one costs about 140 µs on a 2-core machine (its table of response callbacks): a sixth
of a worker's main process CPU under many short tasks (``benchmarks/joblib_kernel_cpu.py``).
A client holds nothing but its connection pool and is safe to share between threads, so
one per channel and pool does the same work. A new pool (after a fork, a reconnection)
gets a new client.

Set through Celery's own hook for it, ``Celery(amqp=CelerynbAMQP)``: only the apps
celerynb builds (the kernel's client app and ``celerynb.worker``'s) use it. The
connection's transport name, and so its URL in logs and banners, stays ``redis``.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from celery.app.amqp import AMQP
from kombu import Connection
from kombu.connection import ConnectionPool, PooledConnection
from kombu.transport import redis as kombu_redis
from kombu.utils.collections import HashedSeq


class OneClientChannel(kombu_redis.Channel):
    """kombu's Redis channel, building one client per connection pool."""

    _shared_client: Any = None

    @contextmanager
    def conn_or_acquire(self, client: Any = None) -> Iterator[Any]:
        if client:
            yield client
            return
        pool = self.pool
        shared = self._shared_client
        if shared is None or shared.connection_pool is not pool:
            shared = self._shared_client = self._create_client()
        yield shared


class OneClientTransport(kombu_redis.Transport):
    Channel = OneClientChannel


class _OneClientRedis:
    """A kombu connection whose Redis transport (``redis://``, ``rediss://``; not
    Sentinel) uses ``OneClientChannel``."""

    def get_transport_cls(self) -> Any:
        transport = super().get_transport_cls()  # type: ignore[misc]
        return OneClientTransport if transport is kombu_redis.Transport else transport


class BrokerConnection(_OneClientRedis, Connection):
    """The connection of celerynb's apps; its pool's connections (those Celery sends
    with) are of its kind too, where kombu's pool makes plain ones."""

    def Pool(self, limit: int | None = None, **kwargs: Any) -> Any:  # noqa: N802 (kombu's)
        return _BrokerConnectionPool(self, limit=limit, **kwargs)

    def __eqhash__(self) -> Any:
        # Apart from a plain kombu connection to the same broker in kombu's global pools
        # (Celery's producer pool is one of them): each gets connections of its own kind.
        return HashedSeq(__name__, super().__eqhash__())


class _PooledBrokerConnection(_OneClientRedis, PooledConnection):
    pass


class _BrokerConnectionPool(ConnectionPool):
    def new(self) -> Any:
        return _PooledBrokerConnection(self, **dict(self.connection._info(resolve=False)))


class CelerynbAMQP(AMQP):
    """Celery's AMQP layer (messages, routing, producers) with ``BrokerConnection``."""

    Connection = BrokerConnection
    BrokerConnection = BrokerConnection
