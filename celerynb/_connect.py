"""Kernel side: ``connect`` — from a LocalCluster, a URL or a Celery app to a Session."""

from __future__ import annotations

import importlib.util
import logging
import os
import weakref
from collections.abc import Callable
from typing import Any

from celery import Celery
from kombu import Connection

from ._backend import plain_backend_url, quiet_backend_url
from ._config import BACKEND_ENV, BROKER_ENV, default_backend, failure_line, mask_url
from ._datastore import store_spec
from ._errors import ConnectionSettingsError, NotConnectedError, one_line
from ._redis_channel import CelerynbAMQP
from ._session import CONNECT_TIMEOUT, Session, make_current

log = logging.getLogger(__name__)

CONFIG_MODULE = "celeryconfig"  # Celery's conventional configuration module
CONFIG_APP = "celerynb-config"  # the app built from it
STALLED_SOCKET_TIMEOUT = 5.0


def connect(
    target: Any = None,
    *,
    backend: str | None = None,
    secret: str | bytes | None = None,
    check: bool = True,
    store: str | None = None,
    inline_limit: int | None = None,
) -> Session:
    """Connect this process to Celery; later ``submit`` calls use this connection.

    ``target`` is a ``LocalCluster``, a broker URL (``redis://``, ``amqp://``...),
    an existing ``Celery`` app, or None: then ``$CELERYNB_BROKER_URL``,
    ``$CELERY_BROKER_URL``, or a ``celeryconfig`` module on the path. ``backend``
    overrides the result backend URL (default: the broker URL for Redis, else
    ``rpc://``). ``secret`` signs shipped callables (default: the cluster's, else
    ``$CELERYNB_SECRET``). A ``backend`` other than the app's own is accepted with
    one warning line (its workers may have been started with ``--result-backend``);
    PENDING jobs then say why they may wait.

    Arguments and results bigger than ``inline_limit`` bytes (default
    ``$CELERYNB_INLINE_LIMIT``, else 64 KiB) travel by reference through a data store:
    ``store`` is an fsspec URL both the kernel and the workers reach
    (``file:///shared/dir``, ``s3://bucket/prefix``), default ``$CELERYNB_DATA_STORE``,
    else the session's Redis (its result backend's, else its broker's).

    Raises:
        ConnectionSettingsError: no result backend (an app without one: its workers
            store no states), a ``backend`` a LocalCluster's workers never write to,
            or a URL Celery cannot use.
        BrokerUnreachableError: ``check`` and the broker does not answer.
        BackendUnreachableError: ``check`` and a Redis result backend does not answer.
    """
    key = _as_bytes(secret)
    owner = None
    user_app = None
    caveat = None
    if target is None:
        target = _target_from_environment()
        backend = backend or os.environ.get(BACKEND_ENV) or os.environ.get("CELERY_RESULT_BACKEND")
    if isinstance(target, Celery):
        user_app = target
        own_backend = target.conf.result_backend
        if _disabled(backend or own_backend):
            raise ConnectionSettingsError(_no_backend_message(target))
        if backend and not _same_url(backend, own_backend):
            caveat = _foreign_backend_note(target, backend, own_backend)
        app = _client_app(
            target.conf.broker_url,
            backend or own_backend,
            _user_settings(target),
            main=target.main,
        )
    elif isinstance(target, str):
        if not target.strip():
            raise ConnectionSettingsError("connect() got an empty broker URL")
        _check_transport(target)
        app = _client_app(target, backend or default_backend(target), {})
    elif hasattr(target, "broker_url") and hasattr(target, "secret"):
        if backend and not _same_url(backend, target.backend_url):
            raise ConnectionSettingsError(
                f"this LocalCluster's workers store results in {mask_url(target.backend_url)}, "
                f"never in {mask_url(backend)}: celerynb would wait forever for their states; "
                "connect without backend= (or start the LocalCluster with backend=...)"
            )
        owner = target
        key = key if key is not None else _as_bytes(target.secret)
        store = store_spec(store, default=getattr(target, "store_url", None))
        # Calls go where the cluster's workers listen: its first queue, if it has some.
        queues = getattr(target, "queues", None) or []
        conf = {"task_default_queue": queues[0]} if queues else {}
        app = _client_app(target.broker_url, backend or target.backend_url, conf)
    else:
        raise TypeError(
            "connect() takes a LocalCluster, a broker URL or a Celery app, "
            f"not {type(target).__name__}"
        )
    if _disabled(app.conf.result_backend):
        raise ConnectionSettingsError(
            f"no result backend (backend={backend!r}): workers would store no states, so "
            "celerynb could not follow any job; give a Redis, database or rpc:// URL"
        )
    try:
        session = Session(
            app,
            secret=key,
            owner=owner,
            user_app=user_app,
            store=store,
            inline_limit=inline_limit,
        )
    except Exception as exc:  # Celery builds the result backend here and can refuse it
        backend_url = plain_backend_url(str(app.conf.result_backend))
        raise ConnectionSettingsError(
            failure_line("cannot use the result backend", backend_url, exc)
        ) from None
    if check:
        try:
            session.check_broker()
            session.check_backend()
        except BaseException:
            session.close()  # nothing of it left running
            raise
    if caveat is not None:
        log.warning("celerynb: %s", caveat)
        session.backend_caveat = caveat
    if owner is not None and hasattr(owner, "on_close"):
        owner.on_close(session.close)
    if owner is not None and hasattr(owner, "on_worker_stopped"):
        owner.on_worker_stopped(_unless_closed(session))
    make_current(session)
    return session


def _check_transport(url: str) -> None:
    """Refuse a broker URL whose scheme kombu has no transport for (a settings error,
    not an unreachable broker)."""
    try:
        Connection(url)  # resolves the transport (imports it), connects nothing
    except Exception as exc:  # no such transport, or its package is not installed
        raise ConnectionSettingsError(
            failure_line("cannot use the broker URL", url, exc)
            + " (redis://, rediss://, amqp:// or another transport kombu knows)"
        ) from None


def _unless_closed(session: Session) -> Callable[[str, str], None]:
    """The session's watcher told of a stopped worker, while the session is open (held
    weakly: the cluster outlives the sessions connected to it)."""
    held = weakref.ref(session)

    def tell(name: str, why: str) -> None:
        alive = held()
        if alive is not None and not alive.closed:
            alive.watcher.worker_stopped(name, why)

    return tell


def _disabled(url: str | None) -> bool:
    """True when ``url`` names no result backend (Celery's ``DisabledBackend``)."""
    return plain_backend_url(str(url or "")).partition("://")[0].lower() in ("", "disabled")


def _same_url(a: str | None, b: str | None) -> bool:
    def plain(url: str | None) -> str:
        return plain_backend_url(str(url or "")).rstrip("/")

    return plain(a) == plain(b)


def _app_label(app: Celery) -> str:
    return f"the {CONFIG_MODULE} module" if app.main == CONFIG_APP else f"app {app.main!r}"


def _no_backend_message(app: Celery) -> str:
    broker = str(app.conf.broker_url or "")
    redis = broker.startswith(("redis://", "rediss://"))
    example = f"backend={mask_url(broker)!r}, the broker's Redis" if redis else "backend='rpc://'"
    return one_line(
        f"{_app_label(app)} has no result backend: its workers store no states, so celerynb "
        f"cannot follow its jobs; give it one (e.g. {example}) or connect with backend= "
        "set to one its workers also use"
    )


def _foreign_backend_note(app: Celery, backend: str, own: str | None) -> str:
    """Why jobs may wait forever when connect() reads another backend than the app's."""
    where = f"stores results in {mask_url(own)}, but" if own else "has no result backend, and"
    read = mask_url(backend)
    return one_line(
        f"{_app_label(app)} {where} celerynb reads {read} (backend=): its workers store states "
        f"there only if started with --result-backend {read} (or $CELERY_RESULT_BACKEND); "
        "otherwise its jobs stay PENDING forever"
    )


def _target_from_environment() -> Any:
    url = os.environ.get(BROKER_ENV) or os.environ.get("CELERY_BROKER_URL")
    if url:
        return url
    if importlib.util.find_spec(CONFIG_MODULE) is not None:
        app = Celery(CONFIG_APP, set_as_current=False)
        app.config_from_object(CONFIG_MODULE)
        if app.conf.broker_url:
            return app
    raise NotConnectedError(
        "nothing to connect to: give a LocalCluster, a broker URL or a Celery app, "
        f"or set {BROKER_ENV} / CELERY_BROKER_URL (or add a {CONFIG_MODULE}.py)"
    )


def _client_app(
    broker: str, backend: str | None, conf: dict[str, Any], main: str = "celerynb"
) -> Celery:
    app = Celery(main, set_as_current=False, amqp=CelerynbAMQP)  # see _redis_channel
    conf = {k: v for k, v in conf.items() if k not in ("broker_url", "result_backend")}
    app.conf.update(conf)
    app.conf.broker_url = broker
    # Celery lets $CELERY_BROKER_URL / $CELERY_RESULT_BACKEND override a configured
    # broker_url / result_backend; the target given to connect() must win.
    app.conf.broker_read_url = app.conf.broker_write_url = broker
    app.conf.result_backend = app.backend_cls = quiet_backend_url(backend)
    app.conf.setdefault("broker_connection_timeout", CONNECT_TIMEOUT)
    app.conf.setdefault("redis_socket_connect_timeout", CONNECT_TIMEOUT)
    app.conf.setdefault("redis_socket_timeout", 30)
    app.conf.setdefault("result_backend_always_retry", False)
    transport_options = dict(app.conf.broker_transport_options or {})
    transport_options.setdefault("socket_connect_timeout", CONNECT_TIMEOUT)
    # A stalled server (e.g. rediss:// against a plain Redis: the TLS handshake waits
    # forever) must fail, not hang; the transport's own waits are shorter than this.
    transport_options.setdefault("socket_timeout", STALLED_SOCKET_TIMEOUT)
    app.conf.broker_transport_options = transport_options
    app.conf.task_serializer = conf.get("task_serializer", "json")
    return app


def _user_settings(app: Celery) -> dict[str, Any]:
    """The settings the user's app changed from Celery's defaults."""
    return {
        key: value
        for key, value in app.conf.without_defaults().items()
        if not key.startswith("__") and key != "deprecated_settings"
    }


def _as_bytes(secret: str | bytes | None) -> bytes | None:
    return secret.encode() if isinstance(secret, str) else secret
