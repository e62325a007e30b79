"""Kernel side: a connection to Celery (``Session``) and sending work (``submit``).

The Session's connection, lifecycle, attach and revoke are here; how it prepares and
sends calls is in ``_preparing`` and ``_sending``."""

from __future__ import annotations

import contextlib
import logging
import threading
from collections.abc import Callable, Iterator, Sequence
from datetime import datetime
from typing import Any

import redis
from celery import Celery, states
from celery.backends.redis import RedisBackend, SentinelBackend

from ._backend import plain_backend_url
from ._byref import DEFAULT_TTL
from ._byref import inline_limit as configured_inline_limit
from ._call_options import CallOptions
from ._config import failure_line, mask_url, secret_from_env
from ._datastore import DataStore, data_store, no_store_line, store_spec
from ._errors import (
    BackendUnreachableError,
    BrokerUnreachableError,
    CelerynbError,
    ConnectionClosedError,
    DataStoreError,
    NotConnectedError,
)
from ._job import Job, placeholder_name
from ._liveness import WorkerMonitor
from ._registry import registry
from ._revoker import Revoker
from ._scatter import Scattered, scatter_to
from ._sending import CallSender
from ._sources import source_for
from ._sources.rpc import is_rpc_backend, new_reply_queue_name
from ._store import backend_key, store
from ._transfers import Transfers
from ._validation import check_task_ids
from ._watcher import Watcher
from ._workers import INSPECT_TIMEOUT, WorkerInfo, inspect_workers

log = logging.getLogger(__name__)

CONNECT_TIMEOUT = 4.0
SYNC_TIMEOUT = 3.0  # attach waits this long at most for a task's current state
# rpc:// sends a task's states to the reply queue of the client that sent it, and that
# client's own result consumer takes them (a GroupResult starts consuming at once).
RPC_ATTACH_NOTE = (
    "with the rpc:// result backend only the client that sent a task receives its states "
    "(its own .get()); celerynb did not send this one, so it cannot follow it: send it "
    "with celerynb.submit, or use a Redis or database result backend"
)


class Session(CallSender):
    """A live connection: the sending app, the signing secret and the watcher.
    Sending calls (``submit``, ``resend``, ``sending_together``) is ``CallSender``'s."""

    def __init__(
        self,
        app: Celery,
        *,
        secret: bytes | None,
        owner: Any = None,
        user_app: Celery | None = None,
        store: str | None = None,
        inline_limit: int | None = None,
    ) -> None:
        super().__init__()
        self.app = app
        self.user_app = user_app
        self.owner = owner  # e.g. a LocalCluster to keep alive
        self._secret = secret
        # rpc:// sends states to the sender's reply queue: one queue for this session.
        self.reply_to = new_reply_queue_name() if is_rpc_backend(app) else None
        source = source_for(app, self.reply_to)
        self.stores_states = source.stores_states  # False: nothing to re-attach to later
        self.watcher = Watcher(source, monitor=WorkerMonitor(app), app=app)
        # rpc:// stores nothing: no REVOKED to write for other observers.
        self._revoker = Revoker(app, stores_states=self.stores_states, secret=lambda: self.secret)
        self.closed = False
        # Set by connect when the backend read here may not be the one the workers
        # write to; shown on PENDING jobs until some state arrives (see Job.note).
        self.backend_caveat: str | None = None
        self._processes: int | None = None
        self.store_spec = store_spec(store)  # where big data waits ("redis" or a URL)
        self.inline_limit = configured_inline_limit(inline_limit)
        self.data_ttl = (
            int(app.conf.result_expires.total_seconds())
            if hasattr(app.conf.result_expires, "total_seconds")
            else int(app.conf.result_expires or DEFAULT_TTL)
        )
        self.transfers = Transfers()

    @property
    def broker_url(self) -> str:
        return mask_url(self.app.conf.broker_write_url)

    @property
    def backend_key(self) -> str:
        """Names this session's result backend in the job store (no password kept)."""
        return backend_key(str(self.app.conf.result_backend))

    def store_for(self, spec: str) -> DataStore | None:
        """This process's data store named ``spec`` ("redis": this session's Redis)."""
        return data_store(self.app, spec)

    @property
    def data_store(self) -> DataStore | None:
        """Where this session puts big data (None: no Redis and no store URL given)."""
        return self.store_for(self.store_spec)

    def scatter(self, obj: Any) -> Scattered:
        """Put ``obj`` in the data store once; see ``celerynb.scatter``."""
        store = self.data_store
        if store is None:
            raise DataStoreError(f"cannot scatter: {no_store_line(self.app)}")
        return scatter_to(store, obj, secret=self.secret, ttl=self.data_ttl)

    @property
    def secret(self) -> bytes:
        if self._secret is None:
            self._secret = secret_from_env()
        return self._secret

    def __repr__(self) -> str:
        return f"<celerynb.Session broker={self.broker_url}>"

    def check_broker(self, timeout: float = CONNECT_TIMEOUT) -> None:
        """Raise BrokerUnreachableError (URL masked) unless the broker answers."""
        with self.broker_errors("reach the broker"), self.app.connection_for_write() as conn:
            conn.ensure_connection(max_retries=1, interval_start=0.5, timeout=timeout)

    def check_backend(self, timeout: float = CONNECT_TIMEOUT) -> None:
        """Raise BackendUnreachableError (URL masked) unless a Redis result backend
        answers a PING (other backends are not asked: a database's is tried by its first
        read, rpc:// is the broker, Sentinel's master is found through its sentinels)."""
        backend = self.app.backend
        if not isinstance(backend, RedisBackend) or isinstance(backend, SentinelBackend):
            return  # Sentinel: its pool finds the master through the sentinels, not here
        settings = {**backend.connparams, "socket_connect_timeout": timeout}
        settings["socket_timeout"] = timeout
        pool = backend.ConnectionPool(**settings)
        try:
            redis.Redis(connection_pool=pool).ping()
        except Exception as exc:
            url = plain_backend_url(str(self.app.conf.result_backend))
            raise BackendUnreachableError(
                failure_line("cannot reach the result backend at", url, exc)
            ) from None
        finally:
            pool.disconnect()

    @contextlib.contextmanager
    def broker_errors(self, doing: str) -> Iterator[None]:
        """Turn a failure to talk to the broker into one BrokerUnreachableError line
        naming the (masked) URL, instead of kombu's or redis-py's own exceptions."""
        try:
            yield
        except CelerynbError:
            raise
        except Exception as exc:
            raise BrokerUnreachableError(
                failure_line(f"cannot {doing} at", self.app.conf.broker_write_url, exc)
            ) from None

    def revoke(
        self,
        task_ids: str | list[str],
        *,
        shipped: bool = False,
        on_change: Callable[[], None] | None = None,
    ) -> None:
        """Revoke tasks, terminating those already running (prefork pool).

        Returns at once; one background thread sends the revokes, batched (see
        ``_revoker``). ``shipped`` tasks get a signed REVOKED in the backend. A
        revoke that cannot be sent (the broker is down) is sent again until a worker
        answers it; ``revoke_note`` says so meanwhile, and ``on_change()`` is
        called when that changes.
        """
        ids = [task_ids] if isinstance(task_ids, str) else list(task_ids)
        self._revoker.revoke(ids, shipped=shipped, on_change=on_change)

    def revoke_note(self, task_id: str) -> str | None:
        """Why the revoke of ``task_id`` has not reached the workers, else None."""
        return self._revoker.note(task_id)

    def attach(self, task_id: str, name: str | None = None) -> Job:
        """Watch a task started anywhere, by id; see ``attach_many``."""
        return self.attach_many([task_id], [name])[0]

    def attach_many(
        self,
        task_ids: list[str],
        names: Sequence[str | None] | None = None,
        *,
        register: bool = True,
        shipped: Sequence[bool | None] | None = None,
    ) -> list[Job]:
        """Watch tasks started anywhere, by id. Jobs of this kernel are returned as is.

        Returns once the jobs hold their tasks' current states (one batched read,
        bounded by ``SYNC_TIMEOUT``), so finished tasks show as finished at once.
        ``register=False`` keeps new jobs out of ``jobs()`` (parts of a JobGroup).
        """
        check_task_ids(task_ids)
        jobs: list[Job] = []
        new = 0
        unseen = [task_id for task_id in task_ids if task_id not in registry]
        # Submitted from an earlier kernel (or another notebook): the job store has its
        # name and when it was sent, so its elapsed time goes on from there.
        kept = store.find(unseen, self.backend_key) if unseen else {}
        shipped = shipped or [None] * len(task_ids)
        for task_id, name, was_shipped in zip(task_ids, names or [None] * len(task_ids), shipped):
            try:
                known = registry.find_exact(task_id)
            except LookupError:
                known = None
            if known is not None and _still_told(known):
                jobs.append(known)
                continue
            record = kept.get(task_id)
            if not name and record is not None and record.name != placeholder_name(task_id):
                name = record.name
            if known is not None:  # what this kernel knew of it stays known
                job = Job(task_id, name or known.name, self, shipped=known._shipped)
                job.call_repr, job._code = known.call_repr, known._code
                job._submitted_at = known._submitted_at
            else:
                # A shipped call's outcome must be signed, whoever attaches it again.
                if was_shipped is None and record is not None:
                    was_shipped = record.shipped
                job = Job(task_id, name or placeholder_name(task_id), self, shipped=was_shipped)
                if record is not None:
                    job._count_from(record.submitted)
            job.named = bool(name) or known is not None  # else a state or worker may tell
            job.attached = True  # see Watcher: UNKNOWN after a while
            if not self.stores_states:
                job._not_followed(RPC_ATTACH_NOTE)  # before watching: a state that comes wins
            self.watcher.watch(job)
            if register:
                registry.add(job)
            jobs.append(job)
            new += 1
        if new:
            if not self.stores_states:
                log.warning("celerynb: %d task(s) attached: %s", new, RPC_ATTACH_NOTE)
            self.watcher.sync(SYNC_TIMEOUT)
        return jobs

    def workers(self, timeout: float = INSPECT_TIMEOUT) -> list[WorkerInfo]:
        """The online workers: pool, concurrency, queues, active and reserved tasks."""
        with self.broker_errors("ask the workers"):
            online = inspect_workers(self.app, timeout=timeout)
        self._processes = sum(w.concurrency or 0 for w in online) or self._processes
        return online

    @property
    def processes_hint(self) -> int | None:
        """Worker processes last seen online (or the LocalCluster's), for chunk sizes."""
        return self._processes or getattr(self.owner, "processes", None)

    def close(self) -> None:
        """Stop watching. Jobs still running fail with ConnectionClosedError (never hang)."""
        self.closed = True
        self.watcher.stop()
        self._revoker.close()
        self.transfers.close()
        watched = registry.all()
        # A group's parts are not in the registry: they end, and so their group does.
        parts = [part for group in watched for part in getattr(group, "jobs", ())]
        for job in [*watched, *parts]:
            if isinstance(job, Job) and job._session is self and not job.done():
                job._abandon(
                    ConnectionClosedError(
                        f"the connection to {self.broker_url} was closed before job {job.id} "
                        "finished; the task may still run on the workers"
                    )
                )


def _still_told(job: Any) -> bool:
    """Whether a job of this kernel still tells its task's truth: unfinished, or finished
    by the task's own final state. One the kernel gave up on (LOST, its connection
    closed) is followed anew by ``attach``: the task may have gone on."""
    return not job.done() or job.state in states.READY_STATES


_current: Session | None = None
_current_lock = threading.Lock()


def make_current(session: Session) -> None:
    """Later ``submit`` calls use ``session``; an earlier session keeps watching its jobs."""
    global _current
    with _current_lock:
        _current = session


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


def scatter(obj: Any) -> Scattered:
    """Put ``obj`` in the data store once and return a reference to pass to any number
    of calls (``submit``, ``map``, cells): it arrives on the workers as the object,
    read once per worker process (cached by its content digest). Like dask's
    ``client.scatter``. The data stays while the reference lives (``release()``
    removes it at once) and expires with the session's result expiry otherwise.

    Raises:
        DataStoreError: there is no data store (no Redis and no ``store=`` URL), or
            the store cannot take it.
    """
    return current_session().scatter(obj)


def apply_async(
    fn: Any,
    args: tuple[Any, ...] | list[Any] = (),
    kwargs: dict[str, Any] | None = None,
    *,
    queue: str | None = None,
    countdown: float | None = None,
    eta: datetime | None = None,
    expires: float | datetime | None = None,
    priority: int | None = None,
    time_limit: float | None = None,
    soft_time_limit: float | None = None,
    headers: dict[str, Any] | None = None,
    retries: int = 0,
    retry_delay: float = 0.0,
    retry_lost: int = 0,
) -> Job:
    """Like ``submit``, with Celery's calling convention and options.

    ``countdown`` (seconds) or ``eta`` (a datetime; naive: local time) delay the
    start; after ``expires`` (seconds from now, or a datetime) the workers drop the call unrun
    and the job ends cancelled; ``time_limit`` / ``soft_time_limit`` (seconds) stop
    it (``TimeLimitExceeded``) or warn it (``SoftTimeLimitExceeded`` raised inside);
    ``priority`` and ``headers`` go on the message. The widget tells a delayed job's
    start ("starts in 30 s") and an expired one. A shipped call that raises runs
    again, up to ``retries`` times, ``retry_delay`` seconds later, as the same job
    (state RETRY in between); one lost with its worker (LOST) is sent again, as the
    same job, up to ``retry_lost`` times.

    Raises:
        ValueError / TypeError: an option that Celery could not use (one line).
    """
    options = CallOptions.of(
        queue=queue,
        countdown=countdown,
        eta=eta,
        expires=expires,
        priority=priority,
        time_limit=time_limit,
        soft_time_limit=soft_time_limit,
        headers=headers,
        retries=retries,
        retry_delay=retry_delay,
        retry_lost=retry_lost,
    )
    return current_session().submit(fn, tuple(args), kwargs, call_options=options)
