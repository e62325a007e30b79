"""Kernel side: the connection to Celery (``connect``) and sending work (``submit``)."""

from __future__ import annotations

import os
import reprlib
import threading
import uuid
from typing import Any

import cloudpickle
from celery import Celery
from celery.app.task import Task
from kombu.utils.json import dumps as json_dumps

from ._backend import quiet_backend_url
from ._config import BROKER_ENV, SHIPPED_TASK_NAME, mask_password, mask_url, secret_from_env
from ._errors import CelerynbError, NotConnectedError, SerializationError
from ._job import Job
from ._signing import seal
from ._sources import source_for
from ._watcher import Watcher

# Publishing retries while the broker is down are bounded (Celery's default can
# block far longer: celery issue 4627).
SEND_RETRY_POLICY = {"max_retries": 2, "interval_start": 0, "interval_step": 0.5, "interval_max": 1}
CONNECT_TIMEOUT = 4.0


class BrokerUnreachableError(CelerynbError, ConnectionError):
    """The broker did not answer."""


class Session:
    """A live connection: the sending app, the signing secret and the watcher."""

    def __init__(
        self,
        app: Celery,
        *,
        secret: bytes | None,
        owner: Any = None,
        user_app: Celery | None = None,
    ) -> None:
        self.app = app
        self.user_app = user_app
        self.owner = owner  # e.g. a LocalCluster to keep alive
        self._secret = secret
        self.watcher = Watcher(source_for(app))
        self.jobs: dict[str, Job] = {}
        self._lock = threading.Lock()

    @property
    def broker_url(self) -> str:
        return mask_url(self.app.conf.broker_url)

    @property
    def secret(self) -> bytes:
        if self._secret is None:
            self._secret = secret_from_env()
        return self._secret

    def __repr__(self) -> str:
        return f"<celerynb.Session broker={self.broker_url}>"

    def check_broker(self, timeout: float = CONNECT_TIMEOUT) -> None:
        """Raise BrokerUnreachableError (URL masked) unless the broker answers."""
        try:
            with self.app.connection_for_write() as conn:
                conn.ensure_connection(max_retries=1, timeout=timeout)
        except Exception as exc:
            raise BrokerUnreachableError(
                f"cannot reach the broker at {self.broker_url}: {type(exc).__name__}: "
                f"{mask_password(str(exc), self.app.conf.broker_url)}"
            ) from None

    def submit(
        self,
        fn: Any,
        args: tuple[Any, ...] = (),
        kwargs: dict[str, Any] | None = None,
        *,
        queue: str | None = None,
    ) -> Job:
        """Send one call; return its Job at once."""
        kwargs = dict(kwargs or {})
        task_id = str(uuid.uuid4())
        options: dict[str, Any] = {"task_id": task_id}
        if queue:
            options["queue"] = queue
        if isinstance(fn, str | Task):
            name = fn if isinstance(fn, str) else fn.name
            _check_json(name, args, kwargs)
            send_args, send_kwargs, shipped = list(args), kwargs, False
            if isinstance(fn, Task) and not queue and getattr(fn, "queue", None):
                options["queue"] = fn.queue
        elif callable(fn):
            name = SHIPPED_TASK_NAME
            payload = _pickle_call(fn, args, kwargs)
            envelope = seal(payload, secret=self.secret, purpose="call", task_id=task_id)
            send_args, send_kwargs, shipped = [envelope], {}, True
        else:
            raise TypeError(
                f"submit() needs a callable or a registered Celery task, got "
                f"{type(fn).__name__} {reprlib.repr(fn)}"
            )
        job = Job(
            task_id,
            _display_name(fn),
            self,
            shipped=shipped,
            call_repr=_call_repr(fn, args, kwargs),
            code=fn if shipped else None,
        )
        self.watcher.watch(job)
        try:
            self.app.send_task(
                name,
                args=send_args,
                kwargs=send_kwargs,
                retry=True,
                retry_policy=SEND_RETRY_POLICY,
                **options,
            )
        except Exception as exc:
            job._finish_cancelled()
            raise BrokerUnreachableError(
                f"could not send {job.call_repr} to the broker at {self.broker_url}: "
                f"{type(exc).__name__}: {mask_password(str(exc), self.app.conf.broker_url)}"
            ) from None
        with self._lock:
            self.jobs[task_id] = job
        return job

    def revoke(self, task_id: str) -> None:
        """Revoke a task; terminate it if it is already running (prefork pool)."""
        self.app.control.revoke(task_id, terminate=True, signal="SIGTERM")

    def close(self) -> None:
        self.watcher.stop()


_current: Session | None = None
_current_lock = threading.Lock()


def connect(
    target: Any = None,
    *,
    backend: str | None = None,
    secret: str | bytes | None = None,
    check: bool = True,
) -> Session:
    """Connect this process to Celery; later ``submit`` calls use this connection.

    ``target`` is a ``LocalCluster``, a broker URL (``redis://``, ``amqp://``...),
    an existing ``Celery`` app, or None for ``$CELERYNB_BROKER_URL`` /
    ``$CELERY_BROKER_URL``. ``backend`` overrides the result backend URL (default:
    the broker URL for Redis, else ``rpc://``). ``secret`` signs shipped callables
    (default: the cluster's, else ``$CELERYNB_SECRET``).
    """
    global _current
    key = _as_bytes(secret)
    owner = None
    user_app = None
    if target is None:
        target = os.environ.get(BROKER_ENV) or os.environ.get("CELERY_BROKER_URL")
        if not target:
            raise NotConnectedError(
                "connect() needs a LocalCluster, a broker URL or a Celery app "
                f"(or set {BROKER_ENV} / CELERY_BROKER_URL)"
            )
    if isinstance(target, Celery):
        user_app = target
        app = _client_app(
            target.conf.broker_url,
            backend or target.conf.result_backend,
            dict(target.conf.changes),
            main=target.main,
        )
    elif isinstance(target, str):
        app = _client_app(target, backend or _default_backend(target), {})
    elif hasattr(target, "broker_url") and hasattr(target, "secret"):
        owner = target
        key = key if key is not None else _as_bytes(target.secret)
        app = _client_app(target.broker_url, backend or target.backend_url, {})
    else:
        raise TypeError(
            "connect() takes a LocalCluster, a broker URL or a Celery app, "
            f"not {type(target).__name__}"
        )
    session = Session(app, secret=key, owner=owner, user_app=user_app)
    if check:
        session.check_broker()
    if owner is not None and hasattr(owner, "on_close"):
        owner.on_close(session.close)
    with _current_lock:
        _current = session  # an earlier session keeps watching its own jobs
    return session


def current_session() -> Session:
    """The session made by the last ``connect``; NotConnectedError if none."""
    if _current is None:
        raise NotConnectedError(
            "not connected: call celerynb.connect(...) first "
            "(e.g. celerynb.connect(celerynb.LocalCluster()))"
        )
    return _current


def submit(fn: Any, *args: Any, **kwargs: Any) -> Job:
    """Run ``fn(*args, **kwargs)`` on a Celery worker; return a live Job at once.

    ``fn`` is a registered Celery task (sent by name, as JSON) or any callable,
    notebook-defined functions and lambdas included (shipped signed, with cloudpickle).
    """
    return current_session().submit(fn, args, kwargs)


def _client_app(
    broker: str, backend: str | None, conf: dict[str, Any], main: str = "celerynb"
) -> Celery:
    app = Celery(main, set_as_current=False)
    conf = {k: v for k, v in conf.items() if k not in ("broker_url", "result_backend")}
    app.conf.update(conf)
    app.conf.broker_url = broker
    app.conf.result_backend = quiet_backend_url(backend)
    app.conf.setdefault("broker_connection_timeout", CONNECT_TIMEOUT)
    app.conf.setdefault("redis_socket_connect_timeout", CONNECT_TIMEOUT)
    app.conf.setdefault("redis_socket_timeout", 30)
    app.conf.setdefault("result_backend_always_retry", False)
    transport_options = dict(app.conf.broker_transport_options or {})
    transport_options.setdefault("socket_connect_timeout", CONNECT_TIMEOUT)
    app.conf.broker_transport_options = transport_options
    app.conf.task_serializer = conf.get("task_serializer", "json")
    return app


def _default_backend(broker: str) -> str:
    return broker if broker.startswith(("redis://", "rediss://")) else "rpc://"


def _check_json(name: str, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
    for label, value in [
        *((f"argument {i + 1}", a) for i, a in enumerate(args)),
        *((f"argument {k!r}", v) for k, v in kwargs.items()),
    ]:
        try:
            json_dumps(value)
        except Exception as exc:
            raise SerializationError(
                f"{label} of {name} ({type(value).__name__}) cannot be sent as JSON: {exc}; "
                "registered tasks take JSON arguments"
            ) from None


def _pickle_call(fn: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> bytes:
    try:
        return cloudpickle.dumps((fn, args, kwargs))
    except Exception as whole:
        parts = [("the function", fn)]
        parts += [(f"argument {i + 1}", a) for i, a in enumerate(args)]
        parts += [(f"argument {k!r}", v) for k, v in kwargs.items()]
        for label, value in parts:
            try:
                cloudpickle.dumps(value)
            except Exception as exc:
                raise SerializationError(
                    f"cannot ship {label} of {_display_name(fn)}() "
                    f"({type(value).__name__}): {type(exc).__name__}: {exc}"
                ) from None
        raise SerializationError(f"cannot ship {_display_name(fn)}(): {whole}") from None


def _display_name(fn: Any) -> str:
    if isinstance(fn, str):
        return fn
    if isinstance(fn, Task):
        return fn.name
    name = getattr(fn, "__qualname__", None) or getattr(fn, "__name__", None)
    if not name:
        return type(fn).__name__
    return name.rsplit("<locals>.", 1)[-1]  # outer function names are noise here


def _call_repr(fn: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> str:
    r = reprlib.Repr()
    r.maxstring, r.maxother = 20, 20
    parts = [r.repr(a) for a in args] + [f"{k}={r.repr(v)}" for k, v in kwargs.items()]
    text = f"{_display_name(fn)}({', '.join(parts)})"
    return text if len(text) <= 60 else text[:57] + "..."


def _as_bytes(secret: str | bytes | None) -> bytes | None:
    return secret.encode() if isinstance(secret, str) else secret
