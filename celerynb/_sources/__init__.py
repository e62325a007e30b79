"""Kernel side: where task states come from. One interface, three implementations.

- ``RedisPushSource`` (``redis_push``) listens to the messages Celery's Redis backend
  already publishes on each task's key (one connection for all jobs, no polling);
- ``RpcReplySource`` (``rpc``) consumes the session's reply queue of ``rpc://``;
- ``PollingSource`` (``polling``) reads any other backend at a bounded rate.

``base.StateSource`` is the interface they share (as httpx's ``_transports``);
``base.CoveringSource`` adds what the push source does for the calls this kernel sends.
"""

from __future__ import annotations

from typing import Any

from .base import UNDECODABLE, CoveringSource, StateSource, Update, decoded
from .polling import PollingSource
from .redis_push import RedisPushSource
from .rpc import RpcReplySource


def source_for(app: Any, reply_to: str | None = None) -> StateSource:
    """Push where the backend publishes states (Redis), the session's reply queue
    for ``rpc://``, polling elsewhere."""
    from celery.backends.redis import RedisBackend

    if reply_to is not None:
        return RpcReplySource(app, reply_to)
    if isinstance(app.backend, RedisBackend):
        return RedisPushSource(app)
    return PollingSource(app)


__all__ = [
    "UNDECODABLE",
    "CoveringSource",
    "PollingSource",
    "RedisPushSource",
    "RpcReplySource",
    "StateSource",
    "Update",
    "decoded",
    "source_for",
]
