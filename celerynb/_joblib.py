"""Kernel side: joblib's ``Parallel`` on Celery workers, backend ``"celerynb"``.

::

    with joblib.parallel_config(backend="celerynb"):
        GridSearchCV(SVC(), grid, n_jobs=-1).fit(X, y)

Each batch of calls joblib makes is one shipped Celery task; every batch of one
``Parallel`` call joins one open-ended JobGroup, shown as one live bar (calls done,
failed, rate, ETA) in the cell that called it. ``n_jobs=-1`` means the worker
processes online for the queue. Arguments of 64 KiB or more (``X``, ``y``) are
scattered once per ``Parallel`` call and read once per worker process. An error
aborts the call the way joblib does, and the batches still queued are revoked. A
``Parallel`` inside a batch runs on threads (joblib's nested backend), never on
processes: a Celery pool process cannot start its own.

joblib's callbacks run on one ``celerynb-joblib`` thread per backend, never on the
watcher thread: dispatching the next batch talks to the broker, and every other
bar would wait for it.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import functools
import logging
import operator
import sys
import threading
import weakref
from collections.abc import Callable, Iterator
from typing import Any

from joblib.parallel import (
    AutoBatchingMixin,
    FallbackToBackend,
    ParallelBackendBase,
    register_parallel_backend,
)

from ._byref import inline_limit
from ._call_failures import is_the_calls_own
from ._calls import display_name
from ._display import display_job
from ._errors import CelerynbError
from ._group import JobGroup
from ._group_items import FAILED_CALL
from ._job import Job
from ._registry import registry
from ._session import Session, current_session
from ._workers import INSPECT_TIMEOUT

log = logging.getLogger(__name__)

BACKEND_NAME = "celerynb"
_SMALL = frozenset({int, float, bool, str, type(None), complex})  # never scattered
_SPARSE_ARRAYS = ("data", "indices", "indptr", "row", "col", "offsets")  # csr, coo, dia...
FAST_RAMP = 8  # batches this many times under joblib's ideal duration grow this many times
LEARNED_FUNCTIONS = 64  # batch sizes remembered, one per function, for their next calls


class NoWorkersError(CelerynbError):
    """No online worker consumes the queue a joblib call would use."""


def run_batch(batch: Any) -> list[Any]:
    """Worker side: run one of joblib's batches (its nested backend applies inside).

    A call that raises ends the batch (joblib's rule); its exception is marked with
    the call's place in the batch (``FAILED_CALL``), so that the kernel counts that
    call failed, the calls after it not run, and the ones before it done."""
    calls = getattr(batch, "items", None)
    if type(calls) is not list or len(calls) < 2:
        return batch()
    batch.items = calls = _Calls(calls)
    try:
        return batch()
    except BaseException as exc:  # SystemExit too: the call's, not the whole batch's
        if is_the_calls_own(exc):
            with contextlib.suppress(Exception):  # an exception that takes no attribute
                setattr(exc, FAILED_CALL, calls.place_reached())
        raise


class _Calls(list[Any]):
    """A batch's calls that tell where the loop over them stopped: they keep the loop's
    own list iterator (no cost per call; a wrapper per call cost a quarter of the
    throughput of tiny calls)."""

    _iterator: Iterator[Any] | None = None

    def __iter__(self) -> Iterator[Any]:
        self._iterator = super().__iter__()
        return self._iterator

    def place_reached(self) -> int | None:
        """The place of the call the loop took last (None: no loop began)."""
        if self._iterator is None:
            return None
        return len(self) - operator.length_hint(self._iterator) - 1


class CelerynbBackend(AutoBatchingMixin, ParallelBackendBase):
    """joblib backend: batches of calls run as Celery tasks, one live bar per call.

    ``queue`` routes the batches (default: the app's default queue); ``show=False``
    displays no bar (the group is still in ``celerynb.jobs()``).
    """

    supports_retrieve_callback = True
    supports_inner_max_num_threads = False
    uses_threads = False
    supports_sharedmem = False
    default_n_jobs = -1
    # joblib's 0.2 s (loky's, dask's) hides a pipe's cost per batch. A Celery batch costs a
    # process about 5 ms more (the broker, the claim, STARTED and the result in Redis):
    # between two batches of a grid search's fits, a pool process waited 6-13 ms where
    # loky's waited 2-6 ms. Batches of 0.5-1 s (joblib times them from sending to result,
    # and grows them to twice the minimum) halve how many there are, and a grid search
    # took 2-3% less.
    MIN_IDEAL_BATCH_DURATION = 0.5
    MAX_IDEAL_BATCH_DURATION = 1.0
    _effective_batch_size: int  # joblib's AutoBatchingMixin: the batch size now

    def __init__(self, queue: str | None = None, show: bool = True, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.queue = queue
        self.show = show
        self._session: Session | None = None
        self._group: JobGroup | None = None
        self._callbacks: concurrent.futures.ThreadPoolExecutor | None = None
        self._relays: list[_Relay] = []  # this call's done callbacks, cleared when it ends
        self._scattered: dict[int, tuple[Any, Any]] = {}  # id(arg) -> (arg, its reference)
        self._processes: int | None = None
        self._claim = threading.Lock()
        self._user: weakref.ref[Any] | None = None  # the Parallel this backend serves
        self._learned: dict[str, int] = {}  # function -> batch size its last call ended with
        self._calling: str | None = None  # the function of the call being made
        self._size_to_resume = 0  # its learned size, applied once a batch is back
        self._asked_before_any_back = 0  # batch sizes asked for by this call so far
        self._single_batches = 4  # joblib's pre-dispatch: 2 x n_jobs calls, one each

    def __reduce__(self) -> tuple[Any, ...]:  # a batch may carry it: never the session
        return (CelerynbBackend, (self.queue, self.show))

    # -- one backend per Parallel --------------------------------------------------
    def configure(self, n_jobs: int = 1, parallel: Any = None, **kwargs: Any) -> int:
        """Serve ``parallel``; one backend in use by another ``Parallel`` hands it a
        backend of its own instead.

        Every ``Parallel`` of a ``parallel_config`` block shares its backend, and two
        of them can be running at once (a generator not consumed yet, a ``Parallel``
        in the loop over another one's results, threads): a call's bar, batches and
        callback thread are the backend's, and a second call would take them over.
        """
        with self._claim:
            user = self._user() if self._user is not None else None
            if user is not None and user is not parallel:
                raise FallbackToBackend(self._twin())
            self._user = weakref.ref(parallel) if parallel is not None else None
        effective: int = super().configure(n_jobs, parallel, **kwargs)
        self._single_batches = 2 * effective
        return effective

    def terminate(self) -> None:
        """The ``Parallel`` is done with this backend (joblib calls it at the end)."""
        with self._claim:
            self._user = None

    def _twin(self) -> CelerynbBackend:
        twin = CelerynbBackend(
            self.queue,
            self.show,
            nesting_level=self.nesting_level,
            inner_max_num_threads=self.inner_max_num_threads,
            **self.backend_kwargs,
        )
        twin._processes = self._processes  # the workers were asked already
        return twin

    # -- sizing ------------------------------------------------------------------
    def effective_n_jobs(self, n_jobs: int | None) -> int:
        if n_jobs == 0:
            raise ValueError("n_jobs == 0 in Parallel has no meaning")
        processes = self._online_processes()  # none: a clear error, not a call that waits
        if n_jobs is None or n_jobs < 0:
            return max(processes + 1 + (n_jobs if n_jobs is not None else -1), 1)
        return n_jobs

    def _online_processes(self) -> int:
        """Worker processes consuming the queue (asked once per backend)."""
        if self._processes is None:
            session = current_session()
            queue = self.queue or session.app.conf.task_default_queue
            cluster_processes = getattr(session.owner, "processes", None)
            if cluster_processes and self.queue is None:
                self._processes = int(cluster_processes)
            else:
                online = session.workers(timeout=INSPECT_TIMEOUT)
                self._processes = sum(
                    w.concurrency or 0 for w in online if not w.queues or queue in w.queues
                )
            if not self._processes:
                raise NoWorkersError(
                    f"no online worker consumes queue {queue!r}: start one "
                    f"(celery -A celerynb.worker worker -Q {queue}) or use another queue"
                )
        return self._processes

    def begin_batching(self) -> None:
        """A new ``Parallel`` call: its first calls go one per batch.

        joblib sends the first ``pre_dispatch`` calls (2 x n_jobs) at once, and one batch
        more each time a batch comes back. Cut into bigger batches, those first calls
        made only n_jobs batches, so each worker process had nothing queued behind the
        batch it ran: every batch then waited a whole round trip (kernel, broker, worker
        and back) before it could start. One per batch, as joblib's local backends start
        every call, two batches per process are in flight.
        """
        self._effective_batch_size = self._DEFAULT_EFFECTIVE_BATCH_SIZE
        self._smoothed_batch_duration = self._DEFAULT_SMOOTHED_BATCH_DURATION
        self._calling = None
        self._size_to_resume = 0
        self._asked_before_any_back = 0

    def batching_for(self, function: Any) -> None:
        """The call's function (its first batch's): once a batch is back, the batch size
        an earlier call of the same function ended with applies at once, instead of a
        ramp from 1 (that function's calls took as long then; another function's may
        not: a size learned on tiny calls would cut a grid search's fits into a few
        big batches, and leave one worker alone with the last)."""
        self._calling = _function_key(function)
        self._size_to_resume = self._learned.get(self._calling, 0)

    def end_batching(self) -> None:
        """Remember the batch size this call ended with, for its function's next call."""
        if self._calling is not None:
            self._learned.pop(self._calling, None)
            self._learned[self._calling] = self._effective_batch_size
            while len(self._learned) > LEARNED_FUNCTIONS:
                self._learned.pop(next(iter(self._learned)))  # the oldest
        self._calling = None

    def compute_batch_size(self) -> int:
        """joblib's auto batch size, growing faster while batches are far too short:
        a Celery round trip costs milliseconds, and doubling from 1 to the thousands a
        run of tiny calls needs took most of such a run. Once the first batch of a call
        is back, and quick, the size its function's last call ended with applies at once."""
        duration: float = self._smoothed_batch_duration
        if duration == 0:
            self._asked_before_any_back += 1
        if self._size_to_resume and (
            duration > 0  # the call's first batch is back
            # or none is, and joblib sends far more than its pre-dispatch of single calls
            # (pre_dispatch="all"): the learned size, as before, with nothing to judge by
            or self._asked_before_any_back > self._single_batches
        ):
            resume, self._size_to_resume = self._size_to_resume, 0
            # Only where its calls are as quick as before: a batch of one under joblib's
            # ideal duration (the same function may take far longer on other data).
            if resume > self._effective_batch_size and duration < self.MIN_IDEAL_BATCH_DURATION:
                self._effective_batch_size = resume
                self._smoothed_batch_duration = self._DEFAULT_SMOOTHED_BATCH_DURATION
                return resume
        if 0 < duration < self.MIN_IDEAL_BATCH_DURATION / FAST_RAMP:
            self._effective_batch_size *= FAST_RAMP
            self._smoothed_batch_duration = self._DEFAULT_SMOOTHED_BATCH_DURATION
            return self._effective_batch_size
        return super().compute_batch_size()

    # -- one Parallel call -------------------------------------------------------
    def start_call(self) -> None:
        self._session = current_session()
        self._scattered = {}
        self.begin_batching()
        self._callbacks = concurrent.futures.ThreadPoolExecutor(
            1, thread_name_prefix="celerynb-joblib"
        )
        self._group = JobGroup(
            [],
            [],
            name="joblib",
            call_repr="joblib.Parallel",
            session=self._session,
            open_ended=True,
            keep_values=False,
        )
        calls = getattr(getattr(self, "parallel", None), "n_tasks", None)  # None: a generator
        if isinstance(calls, int) and calls > 0:
            self._group._expect(calls)
        if self.show:
            _show(self._group)

    def stop_call(self) -> None:
        self.end_batching()
        group, self._group = self._group, None
        if group is not None:
            group._close()
            # Listed from now on, but joblib has what it read (a batch it did not read,
            # after an error or a generator closed early, is nobody's), and a batch of an
            # ended call cannot run again: its call would keep the whole Parallel alive.
            group._release_results("handed to joblib")
            for job in group.jobs:
                if job.done():
                    job._drop_call("its joblib call has ended")
            registry.add(group)
        for _arg, scattered in self._scattered.values():
            scattered.release()  # removed once the batches carrying it are done
        self._scattered = {}
        if self._callbacks is not None:
            self._callbacks.shutdown(wait=False)
            self._callbacks = None
        for relay in self._relays:  # the jobs stay listed: not joblib's call with them
            relay.clear()
        self._relays = []

    def submit(self, func: Any, callback: Callable[[Any], None] | None = None) -> Job:
        session, group = self._session or current_session(), self._group
        self._scatter_big_arguments(session, func)
        size = len(func) if hasattr(func, "__len__") else 1
        function = _first_function(func)
        if group is not None and not group.jobs and function is not None:  # its first batch
            _name_after(group, function)
            self.batching_for(function)
        job = session.submit(
            run_batch,
            (func,),
            queue=self.queue,
            name=group.name if group is not None else "joblib",
            call_repr=f"joblib batch of {size}",
            record=False,
            code=function,  # a failed call's traceback shows its source lines
        )
        if group is not None:
            group._grow([job], [size])  # cancelled group: CancelledError, the job cancelled
        if callback is not None:
            relay = _Relay(callback, self._callbacks)
            self._relays.append(relay)
            job.add_done_callback(relay)
        return job

    def retrieve_result_callback(self, out: Job) -> Any:
        result = out.result(timeout=0)
        out._release_result("handed to joblib")  # the call's list holds it, not the kernel
        return result

    def abort_everything(self, ensure_ready: bool = True) -> None:
        """An error ends the call (joblib's rule): revoke every batch not finished; the
        call's bar ends failed (cancelled where joblib stopped for another reason)."""
        if self._group is not None:
            self._group._abort_after_failure()

    # -- big arguments -----------------------------------------------------------
    def _scatter_big_arguments(self, session: Session, batch: Any) -> None:
        """Replace each argument of ``inline_limit()`` bytes or more in the batch's calls
        by a scattered reference, the same for every batch of this call."""
        items = getattr(batch, "items", None)
        if not isinstance(items, list) or session.data_store is None:
            return
        limit = inline_limit()
        for position, item in enumerate(items):
            try:
                fn, args, kwargs = item
            except (TypeError, ValueError):
                return  # not joblib's (func, args, kwargs): leave the batch as it is
            if not kwargs and _SMALL.issuperset(map(type, args)):
                continue  # most calls of a run of tiny ones: nothing to look up or rebuild
            args = [self._reference(session, a, limit) for a in args]
            kwargs = {k: self._reference(session, v, limit) for k, v in kwargs.items()}
            items[position] = (fn, tuple(args), kwargs)

    def _reference(self, session: Session, arg: Any, limit: int) -> Any:
        if type(arg) in _SMALL:  # most arguments of most calls: no lookup
            return arg
        known = self._scattered.get(id(arg))
        if known is not None and known[0] is arg:
            return known[1]
        if _size_of(arg) < limit:
            return arg
        scattered = session.scatter(arg)
        self._scattered[id(arg)] = (arg, scattered)  # the argument kept: its id stays its own
        return scattered


def _size_of(arg: Any) -> int:
    """Bytes of an array-like or bytes argument (0 for anything else: sent as it is)."""
    if isinstance(arg, bytes | bytearray | memoryview):
        return len(arg)
    nbytes = getattr(arg, "nbytes", None)  # numpy arrays, pandas frames' values
    if isinstance(nbytes, int):
        return nbytes
    sparse = sys.modules.get("scipy.sparse")  # a sparse matrix has no nbytes: its arrays'
    if sparse is not None and sparse.issparse(arg):
        sizes = (getattr(getattr(arg, name, None), "nbytes", None) for name in _SPARSE_ARRAYS)
        return sum(size for size in sizes if isinstance(size, int))
    memory_usage = getattr(arg, "memory_usage", None)  # pandas DataFrame / Series
    if callable(memory_usage) and "pandas" in type(arg).__module__:
        try:
            usage = memory_usage(deep=False)
            return int(usage.sum() if hasattr(usage, "sum") else usage)
        except Exception:
            return 0
    return 0


def _show(group: JobGroup) -> None:
    """The call's bar in the running cell (a text bar outside Jupyter)."""
    try:
        display_job(group)
    except Exception as exc:  # a display problem never stops the computation
        log.debug("celerynb: cannot show the joblib bar: %s", exc)


def _first_function(batch: Any) -> Any:
    """The function a joblib batch's first call calls (None: not joblib's batch)."""
    items = getattr(batch, "items", None)
    if isinstance(items, list) and items and isinstance(items[0], tuple) and items[0]:
        return items[0][0]
    return None


def _function_key(function: Any) -> str:
    """A function's name and where it is defined, the same for every ``delayed(f)`` of
    it in this kernel (a partial: its function's; two lambdas: two lines)."""
    while isinstance(function, functools.partial):
        function = function.func
    module = getattr(function, "__module__", None)
    name = getattr(function, "__qualname__", None) or type(function).__qualname__
    code = getattr(function, "__code__", None)
    where = f"@{code.co_filename}:{code.co_firstlineno}" if code is not None else ""
    return f"{module}.{name}{where}"


def _name_after(group: JobGroup, function: Any) -> None:
    """The bar takes the name of the function the batches call (e.g. _fit_and_score)."""
    group.name = display_name(function)
    group.call_repr = f"joblib.Parallel({group.name})"


class _Relay:
    """A batch's done callback: hands the batch to joblib's callback in the call's
    thread (or at once without one). Cleared when the call ends: the batch's job stays
    in the kernel's job list, and would otherwise keep the whole ``Parallel`` alive."""

    def __init__(
        self,
        callback: Callable[[Any], None],
        pool: concurrent.futures.ThreadPoolExecutor | None,
    ) -> None:
        self._callback: Callable[[Any], None] | None = callback
        self._pool = pool

    def __call__(self, job: Any) -> None:
        callback, pool = self._callback, self._pool
        if callback is None:
            return  # the call ended: nobody waits for this batch
        if pool is None:
            callback(job)
        else:
            pool.submit(_logged, callback, job)

    def clear(self) -> None:
        self._callback = self._pool = None


def _logged(callback: Callable[[Any], None], job: Any) -> None:
    try:
        callback(job)
    except concurrent.futures.CancelledError:
        # It sent the next batch into a call that ended meanwhile (a generator closed
        # early, an error): that batch is cancelled, as the call is. Nothing failed.
        log.debug("celerynb: a batch came back after its joblib call ended")
    except BaseException:  # e.g. the calls' generator raised SystemExit: joblib lets it out
        log.exception("celerynb: a joblib callback failed")


def register() -> None:
    """Register the ``"celerynb"`` joblib backend (done when celerynb is imported)."""
    register_parallel_backend(BACKEND_NAME, CelerynbBackend)
