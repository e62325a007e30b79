"""Kernel side: a Redis result backend that does not subscribe on every send.

Celery's Redis backend subscribes to a task's channel in ``on_task_call`` so that a
later ``get()`` hears the result. celerynb's watcher listens on its own connection
instead; left undrained, those subscriptions fill Redis's client output buffer with
progress messages until Redis drops the connection (celery issues 3808, 4983).
``AsyncResult.get()`` still works: it subscribes on demand and catches up with a GET.
"""

from __future__ import annotations

from typing import Any

from celery.backends.redis import RedisBackend, SentinelBackend

from ._config import REDIS_SCHEMES


class QuietRedisBackend(RedisBackend):
    def on_task_call(self, producer: Any, task_id: str) -> None:
        return None


class QuietSentinelBackend(SentinelBackend):
    def on_task_call(self, producer: Any, task_id: str) -> None:
        return None


def quiet_backend_url(url: str | None) -> str | None:
    """``url`` routed to the quiet backend class when it is a Redis URL (Celery's
    ``Class+scheme://`` form), else unchanged."""
    if not url or "://" not in url:
        return url
    scheme = url.partition("://")[0]
    if scheme == "sentinel":
        return f"{__name__}:QuietSentinelBackend+{url}"
    if scheme in REDIS_SCHEMES:
        return f"{__name__}:QuietRedisBackend+{url}"
    return url


def plain_backend_url(url: str) -> str:
    """``url`` without the ``module:Class+`` prefix ``quiet_backend_url`` adds."""
    prefix = f"{__name__}:"
    if url.startswith(prefix) and "+" in url:
        return url.partition("+")[2]
    return url
