"""Kernel side: ``celerynb.Executor``, a ``concurrent.futures.Executor`` on Celery workers."""

from __future__ import annotations

import concurrent.futures
import contextlib
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from typing import Any

from ._call_options import call_options
from ._group import JobGroup
from ._job import Job
from ._many import map_on
from ._schema import RUNNING_STATES
from ._session import Session, current_session


class Executor(concurrent.futures.Executor):
    """A ``concurrent.futures.Executor`` whose calls run on Celery workers.

    ``submit`` returns a live ``Job`` (a ``concurrent.futures.Future``); ``map``
    yields results in order, lazily, as their chunks finish; ``shutdown`` (also at
    the end of a ``with`` block) waits for the calls, and with
    ``cancel_futures=True`` first cancels (revokes) those that have not started.
    ``queue`` routes every call, ``options`` are Celery's calling options as
    ``apply_async`` takes them (``time_limit``, ``expires``...), for every call;
    ``session`` defaults to the current connection.
    """

    def __init__(
        self, queue: str | None = None, *, session: Session | None = None, **options: Any
    ) -> None:
        call_options("Executor", queue, **options)  # checked now; each call counts from its time
        self._options = options
        self.queue = queue
        self._session = session
        self._lock = threading.Lock()
        self._shutdown = False
        self._sends = 0  # submit/map calls sending now: shutdown waits for them
        self._sends_done = threading.Condition(self._lock)
        self._pending: set[Job | JobGroup] = set()  # futures not done yet

    @property
    def session(self) -> Session:
        return self._session or current_session()

    def submit(self, fn: Callable[..., Any], /, *args: Any, **kwargs: Any) -> Job:
        """Run ``fn(*args, **kwargs)`` on a worker; return its Job at once."""
        with self._sending():
            sending = call_options("Executor", self.queue, **self._options)
            job = self.session.submit(fn, args, kwargs, call_options=sending)
            self._track(job)
        return job

    def map(
        self,
        fn: Callable[..., Any],
        *iterables: Iterable[Any],
        timeout: float | None = None,
        chunksize: int | None = None,
    ) -> Iterator[Any]:
        """``fn`` over the items, results in input order as they are ready.

        The items are sent at once, in chunks (``chunksize`` items per task; None:
        about four chunks per worker process, as ``celerynb.map``). The iterator
        raises an item's exception at its place, and ``TimeoutError`` when a
        result is not ready ``timeout`` seconds after ``map`` was called. Closing
        it early (or an item's exception, or the timeout) cancels the chunks not
        started; those running finish, as the standard library's do.
        """
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._sending():
            group = map_on(
                self._session,
                fn,
                *iterables,
                chunksize=chunksize,
                queue=self.queue,
                **self._options,
            )
            self._track(group)
        return _in_order(group, deadline, timeout or 0)

    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False) -> None:
        """No new calls from now on; ``cancel_futures`` revokes the calls not started,
        ``wait`` waits for the others."""
        with self._lock:
            self._shutdown = True
            self._sends_done.wait_for(lambda: self._sends == 0)  # what they send counts too
            pending = list(self._pending)
        if cancel_futures:
            for job in _not_started(pending):
                job.cancel()
        if wait:
            concurrent.futures.wait(pending)

    @contextlib.contextmanager
    def _sending(self) -> Iterator[None]:
        """A submit or map sending its calls; refused after shutdown."""
        with self._lock:
            if self._shutdown:
                raise RuntimeError("cannot schedule new futures after shutdown")
            self._sends += 1
        try:
            yield
        finally:
            with self._lock:
                self._sends -= 1
                self._sends_done.notify_all()

    def _track(self, future: Job | JobGroup) -> None:
        with self._lock:
            self._pending.add(future)
        future.add_done_callback(self._forget)

    def _forget(self, future: Any) -> None:
        with self._lock:
            self._pending.discard(future)

    def __repr__(self) -> str:
        state = "shut down" if self._shutdown else f"{len(self._pending)} pending"
        where = f" queue={self.queue!r}" if self.queue else ""
        return f"<celerynb.Executor{where} {state}>"


def _not_started(futures: Iterable[Job | JobGroup]) -> list[Job]:
    """The jobs not running now (queued, or waiting to run again after a retry or a
    lost worker): calls, and the chunks of maps (a map's chunks that ran keep their
    results)."""
    jobs = [job for f in futures for job in (f.jobs if isinstance(f, JobGroup) else [f])]
    return [job for job in jobs if not job.done() and job.state not in RUNNING_STATES]


def _in_order(group: JobGroup, deadline: float | None, timeout: float) -> Iterator[Any]:
    """The group's item results in order; closing the iterator before its end cancels
    its chunks not started (as the stdlib's map cancels its futures: running ones
    finish)."""
    finished, total = False, len(group)
    try:
        if not total:
            finished = True
        for count, value in enumerate(group._in_order(deadline, timeout), 1):
            if count == total:  # the caller has every value once this one is yielded:
                finished = True  # the group stays listed in celerynb.jobs(), not them
                group._release_results("yielded by Executor.map")
            yield value
    finally:
        if not finished:
            for job in _not_started([group]):
                job.cancel()
