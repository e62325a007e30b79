"""Kernel side: preparing a call's message. By name (a registered task, as JSON, once
an online worker is known to have it) or shipped (pickled and signed, with what the
worker needs to read it back and the age it may reach before it runs)."""

from __future__ import annotations

import contextlib
import dataclasses
import difflib
import reprlib
from datetime import datetime, timezone
from typing import TYPE_CHECKING, Any

from celery import Celery
from celery.app.task import Task

from ._call_options import CallOptions
from ._calls import MAX_MESSAGE_BYTES, check_json, display_name, pickle_call
from ._config import MAX_CALL_AGE_ENV, SHIPPED_TASK_NAME, max_call_age
from ._datastore import DataStore, no_store_line
from ._errors import DataStoreError, NotConnectedError, UnknownTaskError
from ._scatter import Scattered, collecting
from ._signing import CLOCK_SKEW, Sealed, seal
from ._watcher import Watcher
from ._wire import SERIALIZER
from ._workers import registered_task_names

NAME_CHECK_TIMEOUT = 1.0  # seconds to wait for workers to list their tasks


@dataclasses.dataclass
class PreparedCall:
    """A call ready to send: task name, message args and kwargs, options, and the
    scattered references it carries."""

    task_name: str
    args: list[Any]
    kwargs: dict[str, Any]
    shipped: bool
    options: dict[str, Any]
    carried: list[Scattered]


class CallPreparer:
    """The part of a ``Session`` that turns a call into its message (``_prepare``); see
    ``_sending.CallSender`` for sending it. What it prepares with (the app, the secret,
    the data store's settings, the watcher) is the Session's."""

    # Set by Session.__init__.
    app: Celery
    user_app: Celery | None
    closed: bool
    watcher: Watcher
    store_spec: str
    inline_limit: int
    data_ttl: int

    if TYPE_CHECKING:  # the Session's

        @property
        def broker_url(self) -> str: ...

        @property
        def secret(self) -> bytes: ...

        @property
        def data_store(self) -> DataStore | None: ...

        def broker_errors(self, doing: str) -> contextlib.AbstractContextManager[None]: ...

    def __init__(self) -> None:
        self._known_task_names: set[str] = set()

    def _prepare(
        self,
        fn: Any,
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
        task_id: str,
        queue: str | None,
        call_options: CallOptions | None,
    ) -> PreparedCall:
        """The message for a call: by name (a registered task, JSON) or shipped (signed)."""
        if self.closed:
            raise NotConnectedError(f"this connection to {self.broker_url} was closed")
        options: dict[str, Any] = {"task_id": task_id}
        if queue is not None:
            options["queue"] = queue
        if call_options is not None:
            options.update(call_options.send_options())
        if isinstance(fn, str | Task):
            task_name = fn if isinstance(fn, str) else fn.name
            if isinstance(fn, str):
                self._check_task_name(task_name)
            check_json(task_name, args, kwargs)
            if call_options is not None and call_options.retries:
                raise ValueError(
                    f"retries= re-runs the calls celerynb ships; the registered task "
                    f"{task_name!r} retries as its app says (autoretry_for, max_retries)"
                )
            if isinstance(fn, Task) and not queue and getattr(fn, "queue", None):
                options["queue"] = fn.queue
            return PreparedCall(task_name, list(args), kwargs, False, options, [])
        if callable(fn):
            check_within_call_age(call_options)
            with collecting() as carried:
                segments = pickle_call(fn, args, kwargs)
            name = display_name(fn)
            sealed = self._seal_call(task_id, segments, name, call_options)
            options["serializer"] = SERIALIZER
            # What Flower, events and worker logs show as the arguments, instead of
            # Celery's repr of the sealed bytes (1 KB of escapes in every message).
            options["argsrepr"] = f"(<signed call of {name}, {sealed.size} bytes>,)"
            options["kwargsrepr"] = "{}"
            return PreparedCall(SHIPPED_TASK_NAME, [sealed], {}, True, options, list(carried))
        raise TypeError(
            f"submit() needs a callable or a registered Celery task, got "
            f"{type(fn).__name__} {reprlib.repr(fn)}"
        )

    def _seal_call(
        self,
        task_id: str,
        segments: list[memoryview],
        name: str,
        options: CallOptions | None = None,
    ) -> Sealed:
        extra: dict[str, Any] = {
            "store": self.store_spec,
            "inline": self.inline_limit,
            "ttl": self.data_ttl,
        }
        if options is not None and options.expires is not None:
            extra["expires"] = options.expires.isoformat()  # the worker vouches for it
        if options is not None and options.retries:  # signed: no message runs it more often
            extra["retries"], extra["retry_delay"] = options.retries, options.retry_delay
        sealed = seal(segments, secret=self.secret, purpose="call", task_id=task_id, extra=extra)
        if self.data_store is None and sealed.size > MAX_MESSAGE_BYTES:
            raise DataStoreError(
                f"the call {name}() takes {sealed.size / 2**20:.1f} MiB once pickled, over the "
                f"{MAX_MESSAGE_BYTES // 2**20} MiB a message may carry, and there is "
                f"{no_store_line(self.app)}"
            )
        return sealed

    def _check_task_name(self, name: str) -> None:
        """Refuse a task name no online worker registered (sent, it would wait forever:
        a worker drops a task it does not know). Asks the workers once per new name."""
        local = (self.app, self.user_app)
        if name in self._known_task_names or any(a is not None and name in a.tasks for a in local):
            return
        heard = self.watcher.workers_heard()
        with self.broker_errors(f"ask the workers about task {name!r}"):
            registered = registered_task_names(
                self.app, timeout=NAME_CHECK_TIMEOUT, nodes=heard or None
            )
        if registered is None:
            return  # no worker online to ask: it may start later and know the task
        self._known_task_names |= registered
        if name not in registered:
            candidates = registered.union(*(a.tasks for a in local if a is not None))
            similar = difflib.get_close_matches(name, sorted(candidates), n=3)
            hint = f"; did you mean {', '.join(similar)}?" if similar else ""
            raise UnknownTaskError(f"no online worker has a task named {name!r}{hint}")


def check_within_call_age(options: CallOptions | None) -> None:
    """Refuse options under which a shipped call would still wait to run once its
    signature has aged out (workers refuse calls older than ``max_call_age()``)."""
    if options is None:
        return
    now = datetime.now(timezone.utc)
    starts = options.starts_at(now)
    waiting = (starts - now).total_seconds() if starts is not None else 0.0
    waiting += options.retries * options.retry_delay
    limit = max_call_age()
    if waiting > limit - CLOCK_SKEW:
        raise ValueError(
            f"this call would wait {waiting:.0f} s to run (countdown/eta and retry delays), "
            f"past the {limit:.0f} s a signed call stays valid (${MAX_CALL_AGE_ENV} on the "
            "workers and here)"
        )
