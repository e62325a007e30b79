"""Kernel side: many jobs at once — ``map``, ``attach``, ``wait`` and ``as_completed``."""

from __future__ import annotations

import builtins
import concurrent.futures
import dataclasses
import logging
import math
from collections.abc import Iterable, Iterator
from typing import Any

from celery.result import AsyncResult, ResultSet

from ._call_options import call_options
from ._calls import display_name, unpicklable_part
from ._canvas import CanvasGroup, Step, canvas_kind, canvas_names, canvas_steps
from ._chunks import run_chunk
from ._errors import SerializationError
from ._group import JobGroup
from ._job import Job
from ._registry import registry
from ._session import Session, current_session
from ._store import JobRecord, store

log = logging.getLogger(__name__)

CHUNKS_PER_PROCESS = 4  # enough chunks to balance uneven items, few enough to be cheap
DEFAULT_PROCESSES = 4  # when the workers' concurrency is not known yet


def auto_chunksize(items: int, processes: int) -> int:
    """Items per chunk so each worker process gets about ``CHUNKS_PER_PROCESS`` chunks."""
    return max(1, math.ceil(items / (max(processes, 1) * CHUNKS_PER_PROCESS)))


def _unshippable(fn: Any, items: Any, start: int, stop: int, error: Exception) -> str:
    """Why a chunk cannot be shipped, in the user's words: the first of its items (or
    the function) that does not pickle, named as ``map``'s caller knows it."""
    part = unpicklable_part(
        [("the function", fn)] + [(f"item {index}", items[index]) for index in range(start, stop)]
    )
    if part is None:
        return str(error)
    return f"cannot ship {part.label} of map({display_name(fn)}, ...) {part.why}"


def chunk_spans(items: int, chunksize: int) -> list[tuple[int, int]]:
    """``[start, stop)`` of each chunk."""
    return [(start, min(start + chunksize, items)) for start in range(0, items, chunksize)]


def map_call_repr(name: str, items: int) -> str:
    """How displays call a map: ``map(simulate, 1000 items)`` (rebuilt on re-attach too)."""
    return f"map({name}, {items} items)"


def map(  # noqa: A001 - celerynb.map, as Executor.map / dask Client.map
    fn: Any,
    *iterables: Iterable[Any],
    chunksize: int | None = None,
    queue: str | None = None,
    **options: Any,
) -> JobGroup:
    """Run ``fn(item)`` for every item on the workers; return a JobGroup at once.

    Several iterables are zipped (``fn(a, b)``) as with the builtin ``map``. Items
    travel in chunks: one task runs ``chunksize`` plain calls, so throughput is not
    bounded by Celery's per-task cost. ``chunksize=None`` picks about four chunks
    per worker process. One live bar shows the whole map. ``options`` are Celery's
    calling options as ``apply_async`` takes them (``countdown``, ``expires``,
    ``time_limit``...), for every chunk.
    """
    return map_on(None, fn, *iterables, chunksize=chunksize, queue=queue, **options)


def map_on(
    session: Session | None,
    fn: Any,
    *iterables: Iterable[Any],
    chunksize: int | None = None,
    queue: str | None = None,
    **options: Any,
) -> JobGroup:
    """``map`` through ``session`` (an Executor's own, whichever connection is current;
    None: the current one)."""
    sending = call_options("map", queue, **options)
    if not callable(fn):
        raise TypeError(f"map() needs a callable, got {type(fn).__name__}")
    if not iterables:
        raise TypeError("map() needs at least one iterable")
    star = len(iterables) > 1
    items = list(zip(*iterables)) if star else _sliceable(iterables[0])
    if chunksize is not None and (not isinstance(chunksize, int) or chunksize < 1):
        raise ValueError(f"chunksize must be a positive int or None, got {chunksize!r}")
    session = session or current_session()
    size = chunksize or auto_chunksize(len(items), session.processes_hint or DEFAULT_PROCESSES)
    # retries= re-runs a failed item inside its chunk, not the whole chunk
    item_retries = (sending.retries, sending.retry_delay) if sending.retries else ()
    per_chunk = dataclasses.replace(sending, retries=0)
    spans = chunk_spans(len(items), size)
    name = display_name(fn)
    jobs: list[Job] = []
    try:
        # One wake of the watcher, and one trip to the broker, for all the chunks.
        with session.watcher.batch(), session.sending_together():
            for number, (start, stop) in enumerate(spans):
                try:
                    job = session.submit(
                        run_chunk,
                        (fn, items[start:stop], star, name, *item_retries),
                        call_options=per_chunk,
                        name=f"{name} [{start}:{stop}]",
                        call_repr=f"{name} chunk {number + 1}/{len(spans)}",
                        record=False,
                    )
                except SerializationError as exc:
                    raise SerializationError(_unshippable(fn, items, start, stop, exc)) from None
                jobs.append(job)
    except BaseException:
        if jobs:
            session.revoke([job.id for job in jobs], shipped=True)
        raise
    group = JobGroup(
        jobs,
        spans,
        name=name,
        call_repr=map_call_repr(name, len(items)),
        session=session,
        code=fn,
    )

    def chunk_call(fn: Any, subset: builtins.list[Any], star: bool) -> tuple[Any, ...]:
        """A chunk's call for ``subset`` of its items (retry_failed), as submit keeps it."""
        return (run_chunk, (fn, subset, star, name, *item_retries), {}, None, per_chunk, ())

    group._items_call = (fn, items, star, chunk_call)  # the items: a reference, not a copy
    registry.add(group)
    return group


def _sliceable(iterable: Iterable[Any]) -> range | list[Any] | tuple[Any, ...]:
    """The items, in a form whose slices are the chunks: a range stays a range (its
    chunks travel as ranges, a few bytes each, whatever their length); a list or
    tuple is sliced as it is (each slice is a copy); anything else becomes a list."""
    if isinstance(iterable, range | list | tuple):
        return iterable
    return list(iterable)


def attach(target: Any, *, name: str | None = None) -> Job | JobGroup:
    """Watch work started elsewhere: a task id, an ``AsyncResult``, a ``GroupResult``
    (or any ``ResultSet``, e.g. a chord's header), or a list of those.

    Returns a live Job (one task) or JobGroup (several), displayed like any other.
    The result of a chain or a chord (what its ``apply_async`` returned) is watched
    whole: every step's tasks, the bar naming the step that runs ("step 2 of 3"),
    the value the last step's.
    """
    session = current_session()
    if isinstance(target, str):
        return session.attach(target, name)
    steps = canvas_steps(target) if isinstance(target, AsyncResult | ResultSet) else None
    if steps is not None:  # a chain or a chord, by its final result
        return _attach_canvas(session, steps, canvas_names(target), name, canvas_kind(target))
    if isinstance(target, ResultSet):
        return _attach_group(session, [r.id for r in target.results], name or _group_name(target))
    if isinstance(target, AsyncResult):
        return session.attach(target.id, name or _task_name(target))
    if isinstance(target, Iterable):
        ids = [t if isinstance(t, str) else getattr(t, "id", None) for t in target]
        bad = [t for t, i in zip(target, ids) if not isinstance(i, str)]
        if bad:
            raise TypeError(f"attach() takes task ids or AsyncResults, got {bad[0]!r}")
        task_ids = [task_id for task_id in ids if isinstance(task_id, str)]
        return _attach_group(session, task_ids, name or f"{len(task_ids)} tasks")
    raise TypeError(
        "attach() takes a task id, an AsyncResult, a GroupResult or a list of them, "
        f"not {type(target).__name__}"
    )


def reattach_previous(session: Session) -> builtins.list[Job | JobGroup]:
    """Watch again the jobs this notebook submitted from earlier kernels (see ``_store``)."""
    if not session.stores_states:
        log.warning(
            "celerynb: with the rpc:// result backend nothing is stored: jobs of earlier "
            "kernels cannot be re-attached (use a Redis or database result backend for that)"
        )
        return []
    previous = store.previous(session.backend_key)
    again: dict[str, Job | JobGroup] = {}
    records = []
    for record in previous:
        try:
            again[record.id] = registry.find_exact(record.id)  # re-attached already
        except KeyError:
            records.append(record)
    # Every task of every record in one batch: one catch-up read for all of them.
    task_ids = [task_id for r in records for task_id in (r.task_ids or (r.id,))]
    names = [r.name for r in records for _ in (r.task_ids or (r.id,))]
    shipped = [r.shipped for r in records for _ in (r.task_ids or (r.id,))]
    watched = iter(session.attach_many(task_ids, names, register=False, shipped=shipped))
    for record in records:
        jobs = [next(watched) for _ in (record.task_ids or (record.id,))]
        for job in jobs:  # a group's tasks were sent with it: elapsed goes on from then
            if not job._counted_from_store:
                job._count_from(record.submitted)
        if not record.task_ids:  # shown by its name: the store keeps no arguments
            registry.add(jobs[0])
            again[record.id] = jobs[0]
            continue
        group = JobGroup(
            jobs,
            record.spans,
            name=record.name,
            call_repr=_group_call_repr(record),
            session=session,
            group_id=record.id,
        )
        group._count_from(record.submitted)
        registry.add(group)
        again[record.id] = group
    return [again[record.id] for record in previous]  # oldest first


def _group_call_repr(record: JobRecord) -> str:
    """A re-attached group's call, rebuilt from its name and shape (no call text is stored)."""
    if record.spans is None:
        return record.name  # attached tasks: "12 tasks", "group 1a2b3c4d"
    return map_call_repr(record.name, record.spans[-1][1] if record.spans else 0)


def _attach_group(session: Session, ids: list[str], name: str) -> JobGroup:
    jobs = session.attach_many(ids)
    group = JobGroup(jobs, name=name, call_repr=name, session=session)
    registry.add(group)
    return group


def _attach_canvas(
    session: Session,
    steps: builtins.list[Step],
    names: builtins.list[str | None],
    name: str | None,
    kind: str,
) -> JobGroup:
    jobs = session.attach_many([task_id for step in steps for task_id in step], names)
    group = CanvasGroup(jobs, steps, name=name or "", session=session, kind=kind)
    registry.add(group)
    return group


def _group_name(result: ResultSet) -> str:
    group_id = getattr(result, "id", None)
    return f"group {group_id[:8]}" if group_id else f"{len(result.results)} tasks"


def _task_name(result: AsyncResult) -> str | None:
    name = getattr(result, "name", None)  # set when the AsyncResult came from apply_async
    return name or None


def _futures(jobs: Any) -> builtins.list[concurrent.futures.Future]:
    if isinstance(jobs, concurrent.futures.Future):
        return [jobs]
    if not isinstance(jobs, Iterable) or isinstance(jobs, str | bytes):
        raise TypeError(f"expected Jobs and JobGroups, got {type(jobs).__name__}")
    futures = builtins.list(jobs)
    for future in futures:
        if not isinstance(future, concurrent.futures.Future):
            raise TypeError(f"expected Jobs and JobGroups, got {type(future).__name__}")
    return futures


def wait(
    jobs: Any,
    timeout: float | None = None,
    return_when: str = concurrent.futures.ALL_COMPLETED,
) -> concurrent.futures._base.DoneAndNotDoneFutures:
    """``concurrent.futures.wait`` over Jobs and JobGroups (a JobGroup counts as one)."""
    return concurrent.futures.wait(_futures(jobs), timeout=timeout, return_when=return_when)


def as_completed(jobs: Any, timeout: float | None = None) -> Iterator[Any]:
    """``concurrent.futures.as_completed`` over Jobs and JobGroups, as they finish."""
    return concurrent.futures.as_completed(_futures(jobs), timeout=timeout)
