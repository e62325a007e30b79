"""Kernel side: a connection to Celery (``Session``) and sending work (``submit``)."""

from __future__ import annotations

import contextlib
import dataclasses
import difflib
import logging
import reprlib
import threading
import uuid
from collections.abc import Callable, Iterator, Sequence
from datetime import datetime, timezone
from typing import Any

from celery import Celery, states
from celery.app.task import Task

from ._byref import DEFAULT_TTL, by_reference
from ._byref import inline_limit as configured_inline_limit
from ._call_options import CallOptions
from ._calls import MAX_MESSAGE_BYTES, check_json, display_name, pickle_call, shown_call
from ._config import (
    MAX_CALL_AGE_ENV,
    SHIPPED_TASK_NAME,
    failure_line,
    mask_url,
    max_call_age,
    secret_from_env,
)
from ._datastore import DataStore, data_store, no_store_line, store_spec
from ._errors import (
    BrokerUnreachableError,
    CelerynbError,
    ConnectionClosedError,
    DataStoreError,
    NotConnectedError,
    UnknownTaskError,
)
from ._job import Job, placeholder_name
from ._liveness import WorkerMonitor
from ._queues import routed_queue
from ._registry import registry
from ._revoker import Revoker
from ._scatter import Scattered, collecting, scatter_to
from ._signing import CLOCK_SKEW, Sealed, seal
from ._sources import source_for
from ._sources.rpc import declare_reply_queue, is_rpc_backend, new_reply_queue_name
from ._store import backend_key, store
from ._transfers import Transfers
from ._validation import check_queue, check_task_ids
from ._watcher import Watcher
from ._wire import SERIALIZER
from ._workers import INSPECT_TIMEOUT, WorkerInfo, inspect_workers, registered_task_names

log = logging.getLogger(__name__)

# Publishing retries while the broker is down are bounded (Celery's default can
# block far longer: celery issue 4627).
SEND_RETRY_POLICY = {"max_retries": 2, "interval_start": 0, "interval_step": 0.5, "interval_max": 1}
CONNECT_TIMEOUT = 4.0
NAME_CHECK_TIMEOUT = 1.0  # seconds to wait for workers to list their tasks
SYNC_TIMEOUT = 3.0  # attach waits this long at most for a task's current state
# rpc:// sends a task's states to the reply queue of the client that sent it, and that
# client's own result consumer takes them (a GroupResult starts consuming at once).
RPC_ATTACH_NOTE = (
    "with the rpc:// result backend only the client that sent a task receives its states "
    "(its own .get()); celerynb did not send this one, so it cannot follow it: send it "
    "with celerynb.submit, or use a Redis or database result backend"
)


@dataclasses.dataclass
class _Prepared:
    """A call ready to send: task name, message args and kwargs, options, and the
    scattered references it carries."""

    task_name: str
    args: list[Any]
    kwargs: dict[str, Any]
    shipped: bool
    options: dict[str, Any]
    carried: list[Scattered]


class Session:
    """A live connection: the sending app, the signing secret and the watcher."""

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
        self.app = app
        self.user_app = user_app
        self.owner = owner  # e.g. a LocalCluster to keep alive
        self._secret = secret
        # rpc:// sends states to the sender's reply queue: one queue for this session.
        self.reply_to = new_reply_queue_name() if is_rpc_backend(app) else None
        self._reply_queue_declared = False
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
        self._known_task_names: set[str] = set()
        self.store_spec = store_spec(store)  # where big data waits ("redis" or a URL)
        self.inline_limit = configured_inline_limit(inline_limit)
        self.data_ttl = (
            int(app.conf.result_expires.total_seconds())
            if hasattr(app.conf.result_expires, "total_seconds")
            else int(app.conf.result_expires or DEFAULT_TTL)
        )
        self.transfers = Transfers()
        # .producer, .jobs, .declared: this thread's batch of sends (see sending_together)
        self._together = threading.local()

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

    def submit(
        self,
        fn: Any,
        args: tuple[Any, ...] = (),
        kwargs: dict[str, Any] | None = None,
        *,
        queue: str | None = None,
        name: str | None = None,
        call_repr: str | None = None,
        record: bool = True,
        holding: Sequence[Scattered] = (),
        call_options: CallOptions | None = None,
    ) -> Job:
        """Send one call; return its Job at once.

        ``queue`` routes it; ``name`` and ``call_repr`` replace how displays call it;
        ``record=False`` keeps it out of ``jobs()`` (a part of a JobGroup).
        ``holding``: scattered references the call carries inside already pickled
        data (a cell's inputs); the job keeps them alive, as those in ``args``.
        ``call_options``: Celery's (countdown, expires, time limits...; its queue
        when ``queue`` is None).

        Raises:
            ValueError: ``queue`` is not a usable queue name (see ``check_queue``).
        """
        if queue is None and call_options is not None:
            queue = call_options.queue
        check_queue(queue)  # every path sends through here: apply_async, map, cells
        kwargs = dict(kwargs or {})
        task_id = str(uuid.uuid4())
        call = self._prepare(fn, args, kwargs, task_id, queue, call_options)
        shown = call_repr or shown_call(fn, args, kwargs)
        described = call_options.described() if call_options is not None else ""
        job = Job(
            task_id,
            name or display_name(fn),
            self,
            shipped=call.shipped,
            call_repr=f"{shown} [{described}]" if described else shown,
            code=fn if call.shipped else None,
        )
        job.call_options = call_options
        job._call = (fn, args, kwargs, queue, call_options, tuple(holding))  # for retry()
        job._carries_scattered = bool(holding or call.carried)
        for scattered in [*holding, *call.carried]:
            scattered.held_by(job)
        job.requeued_if_worker_lost = not call.shipped and self._requeues_on_worker_loss(
            call.task_name
        )
        job.queue = routed_queue(self.app, call.task_name, call.options)
        self.watcher.watch(job)
        self._dispatch(job, call)
        if record:
            registry.add(job)
        return job

    def resend(self, job: Job) -> None:
        """Send ``job``'s call again under its task id (see ``Job.retry``): signed anew
        (a new nonce: a new run), now, without the first send's countdown or expiry."""
        assert job._call is not None, "a job sent by this session"
        fn, args, kwargs, queue, call_options, holding = job._call
        if queue is None and call_options is not None:
            queue = call_options.queue
        if call_options is not None:
            call_options = dataclasses.replace(call_options, countdown=None, eta=None,
                                               expires=None)  # fmt: skip
        call = self._prepare(fn, args, kwargs, job.id, queue, call_options)
        for scattered in [*holding, *call.carried]:
            scattered.held_by(job)
        self.watcher.watch(job)
        self._dispatch(job, call)

    def _prepare(
        self,
        fn: Any,
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
        task_id: str,
        queue: str | None,
        call_options: CallOptions | None,
    ) -> _Prepared:
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
            return _Prepared(task_name, list(args), kwargs, False, options, [])
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
            return _Prepared(SHIPPED_TASK_NAME, [sealed], {}, True, options, list(carried))
        raise TypeError(
            f"submit() needs a callable or a registered Celery task, got "
            f"{type(fn).__name__} {reprlib.repr(fn)}"
        )

    def _dispatch(self, job: Job, call: _Prepared) -> None:
        """Send a prepared call for ``job``: in the message, or (too big for one) stored
        first on a transfer thread, its progress on the job's bar, then a signed
        reference is sent. Nothing is sent if the store fails: the job fails with why."""
        if call.shipped and call.args[0].size > self._inline_frames():
            sealed = call.args[0]
            self.transfers.run(
                lambda: self._send_by_reference(job, call.task_name, sealed, call.options)
            )
            return
        send_args = [call.args[0].tobytes()] if call.shipped else call.args
        self._send(job, call.task_name, send_args, call.kwargs, call.options)

    def _inline_frames(self) -> int:
        """Bytes of a shipped call's frame sent in its message at most."""
        return self.inline_limit if self.data_store is not None else MAX_MESSAGE_BYTES

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

    def _send_by_reference(
        self, job: Job, task_name: str, sealed: Sealed, options: dict[str, Any]
    ) -> None:
        store = self.data_store
        if job.done():  # cancelled before its data moved
            return
        try:
            assert store is not None
            reference = by_reference(
                store,
                sealed,
                secret=self.secret,
                ttl=self.data_ttl,
                progress=job._transfer_progress("sending the call", sealed.size),
            )
        except Exception as exc:
            job._abandon(exc if isinstance(exc, CelerynbError) else DataStoreError(str(exc)))
            return
        key = str(reference.header["ref"]["key"])
        job.add_done_callback(lambda _: _forget_stored(store, key))
        if job.done():
            return
        try:
            self._send(job, task_name, [reference.tobytes()], {}, options)
        except CelerynbError as exc:
            job._abandon(exc)

    @contextlib.contextmanager
    def sending_together(self) -> Iterator[None]:
        """Within it, the calls this thread sends leave for the broker together at its
        end: one round trip for all where kombu's transport batches publishes (Redis),
        each at once elsewhere. If they cannot be sent, every one of them ends
        cancelled and BrokerUnreachableError says why (some may have left: a batch's
        failure leaves delivery uncertain, so the caller revokes them)."""
        together = self._together
        if getattr(together, "producer", None) is not None:
            yield  # nested: the outer block sends
            return
        with contextlib.ExitStack() as stack:
            with self.broker_errors("send calls"):
                producer = stack.enter_context(self.app.producer_or_acquire())
            batch = getattr(producer, "batch", None)  # kombu >= 5.7
            together.producer, together.jobs, together.declared = producer, [], set()
            sending = False
            try:
                with batch() if batch is not None else contextlib.nullcontext():
                    yield  # an error of the block's own goes out as it is (nothing sent)
                    sending = True  # from here, the batch leaves
            except Exception as exc:
                if not sending or isinstance(exc, CelerynbError):
                    raise
                for job in together.jobs:
                    job._finish_cancelled()
                raise BrokerUnreachableError(
                    failure_line(
                        f"could not send {len(together.jobs)} calls to the broker at",
                        self.app.conf.broker_write_url,
                        exc,
                    )
                ) from None
            finally:
                together.producer = together.jobs = together.declared = None

    def _send(
        self,
        job: Job,
        task_name: str,
        send_args: list[Any],
        send_kwargs: dict[str, Any],
        options: dict[str, Any],
    ) -> None:
        try:
            if self.reply_to is not None:
                options["reply_to"] = self.reply_to
                if not self._reply_queue_declared:
                    declare_reply_queue(self.app, self.reply_to)
                    self._reply_queue_declared = True
            together = self._together
            producer = getattr(together, "producer", None)
            if producer is not None:
                # Buffered: nothing to retry until the batch leaves. The queue is
                # declared with the first call to it (kombu declares once per connection
                # anyway, but copies the queue on every send to find that out).
                if job.queue in together.declared:
                    options["declare"] = []
                together.declared.add(job.queue)
                together.jobs.append(job)
                options["producer"] = producer
            self.app.send_task(
                task_name,
                args=send_args,
                kwargs=send_kwargs,
                retry=producer is None,
                retry_policy=SEND_RETRY_POLICY,
                **options,
            )
        except Exception as exc:
            job._finish_cancelled()
            raise BrokerUnreachableError(
                failure_line(
                    f"could not send {job.call_repr} to the broker at",
                    self.app.conf.broker_write_url,
                    exc,
                )
            ) from None

    def _requeues_on_worker_loss(self, task_name: str) -> bool:
        """True when the task, as this kernel's apps configure it, is re-queued if its
        worker dies (``acks_late`` with ``reject_on_worker_lost``)."""
        for app in (self.user_app, self.app):
            task = app.tasks.get(task_name) if app is not None else None
            if task is not None:
                return bool(task.acks_late and task.reject_on_worker_lost)
        return False

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


def _forget_stored(store: DataStore, key: str) -> None:
    try:
        store.delete([key])
    except Exception as exc:  # it expires anyway
        log.debug("celerynb: could not remove %s from the data store: %s", key, exc)
