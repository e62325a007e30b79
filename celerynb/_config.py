"""Names and lookups shared by both sides: environment variables, secret, URL masking."""

from __future__ import annotations

import os
import re
from typing import Any

from kombu.utils.url import maybe_sanitize_url, url_to_parts

from ._errors import MissingSecretError, one_line

SECRET_ENV = "CELERYNB_SECRET"
BROKER_ENV = "CELERYNB_BROKER_URL"
BACKEND_ENV = "CELERYNB_RESULT_BACKEND"
SHIPPED_TASK_NAME = "celerynb.run_shipped"


def secret_from_env(explicit: str | bytes | None = None) -> bytes:
    """The shared signing secret: ``explicit``, else ``$CELERYNB_SECRET``."""
    value = explicit if explicit is not None else os.environ.get(SECRET_ENV)
    if not value:
        raise MissingSecretError(
            f"no signing secret: set {SECRET_ENV} to the same value on the kernel and the "
            "workers (LocalCluster makes one for you)"
        )
    return value.encode() if isinstance(value, str) else value


# URL schemes of kombu's Redis transport.
REDIS_SCHEMES = ("redis", "rediss", "sentinel")


def shared_redis(app: Any, socket_timeout: float) -> tuple[Any, str] | None:
    """The Redis that the kernel and the workers of ``app`` both reach, with its URL: the
    result backend's client, else a new client of the broker's Redis (``socket_timeout``
    seconds per call); None when neither is Redis (a Sentinel broker included)."""
    from celery.backends.redis import RedisBackend

    backend = app.backend
    if isinstance(backend, RedisBackend):
        return backend.client, str(app.conf.result_backend)
    broker = str(app.conf.broker_write_url or app.conf.broker_url or "")
    if broker.split("://", 1)[0] in REDIS_SCHEMES and not broker.startswith("sentinel"):
        import redis

        return redis.Redis.from_url(broker, socket_timeout=socket_timeout), broker
    return None


def default_backend(broker: str) -> str:
    """The result backend used when none is given: the broker itself when it is
    Redis, else ``rpc://`` (results sent back as messages)."""
    return broker if broker.startswith(("redis://", "rediss://")) else "rpc://"


def mask_url(url: str | None) -> str:
    """``url`` with its password replaced by ``**``, safe to print (even when malformed)."""
    if not url:
        return str(url)
    try:
        return maybe_sanitize_url(url, mask="**")
    except Exception:  # kombu cannot parse it: hide whatever sits between ':' and '@'
        return re.sub(r"(//[^/:@]*:)[^@/]*@", r"\1**@", url)


def mask_password(text: str, url: str | None) -> str:
    """``text`` with any password of ``url`` removed."""
    try:
        password = url_to_parts(url).password if url else None
    except Exception:
        password = None
    return text.replace(password, "**") if password else text


def failure_line(doing: str, url: str | None, exc: BaseException) -> str:
    """``"{doing} {masked url}: {ExcType}: {message}"`` on one line, no password shown:
    how every failure to reach a broker or backend is told."""
    return one_line(
        f"{doing} {mask_url(url)}: {type(exc).__name__}: {mask_password(str(exc), url)}"
    )


MAX_CALL_AGE_ENV = "CELERYNB_MAX_CALL_AGE"
DEFAULT_MAX_CALL_AGE = 24 * 3600.0  # seconds a signed call may wait before it is refused


def max_call_age() -> float:
    """``$CELERYNB_MAX_CALL_AGE`` (seconds), else one day."""
    try:
        return float(os.environ.get(MAX_CALL_AGE_ENV) or DEFAULT_MAX_CALL_AGE)
    except ValueError:
        return DEFAULT_MAX_CALL_AGE
