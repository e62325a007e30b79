"""Kernel side: sending a Session's calls. Each becomes a Job and leaves in its message,
or, too big for one, through the data store with a signed reference in the message;
alone, or with the others this thread sends in one batch (``sending_together``)."""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import threading
from collections.abc import Iterator, Sequence
from typing import Any

from ._byref import by_reference
from ._call_options import CallOptions
from ._calls import MAX_MESSAGE_BYTES, display_name, shown_call
from ._config import failure_line
from ._datastore import DataStore
from ._errors import BrokerUnreachableError, CelerynbError, DataStoreError
from ._job import Job
from ._preparing import CallPreparer, PreparedCall
from ._queues import routed_queue
from ._registry import registry
from ._scatter import Scattered
from ._signing import Sealed
from ._sources.rpc import declare_reply_queue
from ._transfers import Transfers
from ._validation import check_queue

log = logging.getLogger(__name__)

# Publishing retries while the broker is down are bounded (Celery's default can
# block far longer: celery issue 4627).
SEND_RETRY_POLICY = {"max_retries": 2, "interval_start": 0, "interval_step": 0.5, "interval_max": 1}


class CallSender(CallPreparer):
    """The part of a ``Session`` that sends its calls: ``submit``, ``resend`` and
    ``sending_together``. The broker, the data store and the transfer threads it sends
    through are the Session's."""

    # Set by Session.__init__.
    reply_to: str | None
    transfers: Transfers

    def __init__(self) -> None:
        super().__init__()
        self._reply_queue_declared = False
        # .producer, .jobs, .declared: this thread's batch of sends (see sending_together)
        self._together = threading.local()

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
        code: Any = None,
    ) -> Job:
        """Send one call; return its Job at once.

        ``queue`` routes it; ``name`` and ``call_repr`` replace how displays call it;
        ``record=False`` keeps it out of ``jobs()`` (a part of a JobGroup).
        ``holding``: scattered references the call carries inside already pickled
        data (a cell's inputs); the job keeps them alive, as those in ``args``.
        ``call_options``: Celery's (countdown, expires, time limits...; its queue
        when ``queue`` is None). ``code``: where a remote traceback's source lines are
        found (default ``fn``; a joblib batch names its calls' function).

        Raises:
            ValueError: ``queue`` is not a usable queue name (see ``check_queue``).
        """
        if queue is None and call_options is not None:
            queue = call_options.queue
        check_queue(queue)  # every path sends through here: apply_async, map, cells
        kwargs = dict(kwargs or {})
        task_id = self.watcher.new_task_id()
        call = self._prepare(fn, args, kwargs, task_id, queue, call_options)
        shown = call_repr or shown_call(fn, args, kwargs)
        described = call_options.described() if call_options is not None else ""
        job = Job(
            task_id,
            name or display_name(fn),
            self,
            shipped=call.shipped,
            call_repr=f"{shown} [{described}]" if described else shown,
            code=(code if code is not None else fn) if call.shipped else None,
        )
        job.call_options = call_options
        job._call = (fn, args, kwargs, queue, call_options, tuple(holding))  # for retry()
        job._carries_scattered = bool(holding or call.carried)
        for scattered in [*holding, *call.carried]:
            scattered.held_by(job)
        acks_late, reject_on_worker_lost = self._late_acks(call.task_name, call.shipped)
        job.requeued_if_worker_lost = not call.shipped and acks_late and reject_on_worker_lost
        job.acks_late = acks_late
        job.queue = routed_queue(self.app, call.task_name, call.options)
        self.watcher.watch(job, before_sending=True)
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
        self.watcher.watch(job, before_sending=True)
        self._dispatch(job, call)

    def _dispatch(self, job: Job, call: PreparedCall) -> None:
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

    def _late_acks(self, task_name: str, shipped: bool) -> tuple[bool, bool]:
        """``(acks_late, reject_on_worker_lost)`` of the task as this kernel's apps
        configure it (a task re-queued if its worker dies has both; one with
        ``acks_late`` is sent again after a worker's cold shutdown)."""
        for app in (self.user_app, self.app):
            task = app.tasks.get(task_name) if app is not None and not shipped else None
            if task is not None:
                return bool(task.acks_late), bool(task.reject_on_worker_lost)
        conf = (self.user_app or self.app).conf
        return bool(conf.task_acks_late), bool(conf.task_reject_on_worker_lost)


def _forget_stored(store: DataStore, key: str) -> None:
    try:
        store.delete([key])
    except Exception as exc:  # it expires anyway
        log.debug("celerynb: could not remove %s from the data store: %s", key, exc)
