"""Kernel side: the items of a JobGroup's tasks — where each task's items are, their
values and errors, which tasks are stored, cancelled or have failed items, and what a
retry runs again. Pure bookkeeping: no locks (the group holds its own around every
call), no waiting, no messages."""

from __future__ import annotations

import concurrent.futures
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import CancelledError
from typing import Any

from ._chunks import ChunkResult
from ._group_progress import Span
from ._remote_errors import exception_from_info

# Set by the joblib backend's worker side on the exception of the call that ended a
# batch: its place in the batch (the calls after it never ran).
FAILED_CALL = "_celerynb_failed_call"


def failed_call(error: BaseException, size: int) -> int | None:
    """The place of the call ``error`` came from in a batch of ``size`` calls, when the
    worker marked it; None: the whole task failed. Read from the exception's own
    attributes only: a class with its own ``__getattr__`` may raise anything."""
    try:
        place = vars(error).get(FAILED_CALL)
    except Exception:  # no __dict__ (slots), or a strange one: unmarked
        return None
    if isinstance(place, int) and not isinstance(place, bool) and 0 <= place < size:
        return place
    return None


def collect_task(
    job: Any,
    span: Span,
    offsets: Sequence[int] | None,
    values: list[Any],
    *,
    chunked: bool,
    keep_values: bool,
    call_repr: str,
    code: Any = None,
    batches: bool = False,
) -> dict[int, BaseException]:
    """Store a finished task's values in ``values``; return its failed items.

    ``span``: the task's items; ``offsets``: those its latest run ran (a retry of a
    map's chunk runs only its failed items), None for all of them. ``job`` is done and
    not cancelled. ``batches``: the tasks are joblib batches, whose failed call the
    worker marks (``FAILED_CALL``).
    """
    start, stop = span
    error = job.exception(timeout=0)
    if error is not None:
        place = failed_call(error, stop - start) if batches and not offsets else None
        if place is not None:  # one call failed; those after it never ran (see not_run)
            return {start + place: error}
        # the whole task failed: none of its items has a result
        return dict.fromkeys([start + o for o in offsets] if offsets else range(start, stop),
                             error)  # fmt: skip
    value = job.result(timeout=0)
    if not keep_values:
        return {}
    if not chunked:
        values[start] = value
        return {}
    indexes = [start + o for o in offsets] if offsets else range(start, stop)
    size = len(indexes)
    if (
        not isinstance(value, ChunkResult)
        or len(value.values) != size
        or not all(isinstance(o, int) and 0 <= o < size for o in value.errors)
    ):
        mismatch = TypeError(
            f"task {job.id} of {call_repr} returned {type(value).__name__}, "
            f"not the results of its items {start} to {stop - 1}"
        )
        return dict.fromkeys(indexes, mismatch)
    for index, item_value in zip(indexes, value.values, strict=True):
        values[index] = item_value
    return {
        indexes[offset]: exception_from_info(info, code) for offset, info in value.errors.items()
    }


class GroupItems:
    """The items of a group's tasks, by task position (a task given twice has two).

    ``spans[p]`` are the items of the task at position ``p``; ``values`` the items'
    results in input order (empty when the group does not keep them); ``errors`` the
    failed items (never cancelled ones); ``stored[p]``: the task's outcome is recorded
    here; ``cancelled[p]``: it was cancelled; ``has_failures[p]``: some of its items
    failed; ``rerun_offsets[p]``: the offsets in its span that a retry ran again.
    """

    def __init__(
        self,
        spans: Sequence[Span],
        tasks: int,
        *,
        chunked: bool,
        keep_values: bool,
        batches: bool = False,
    ) -> None:
        self.spans = list(spans)
        self.chunked = chunked
        self.batches = batches  # joblib batches: a failed call ends its batch
        self.keep_values = keep_values
        self.total = self.spans[-1][1] if self.spans else 0
        self.values: list[Any] = [None] * self.total if keep_values else []
        self.errors: dict[int, BaseException] = {}  # failed items, never cancelled ones
        self.stored = [False] * tasks  # the task's outcome is recorded here
        self.cancelled = [False] * tasks
        self.has_failures = [False] * tasks  # some of its items failed
        self.rerun_offsets: dict[int, list[int]] = {}  # position -> offsets run again
        self.not_run_from: dict[int, int] = {}  # position -> its first item not run

    def grow(self, sizes: Sequence[int]) -> None:
        """Add tasks of ``sizes`` items each; their items follow those there are."""
        for size in sizes:
            self.spans.append((self.total, self.total + size))
            self.total += size
        if self.keep_values:
            self.values += [None] * (self.total - len(self.values))
        self.stored += [False] * len(sizes)
        self.cancelled += [False] * len(sizes)
        self.has_failures += [False] * len(sizes)

    def collect(
        self, position: int, job: Any, offsets_of: int, *, call_repr: str, code: Any = None
    ) -> dict[int, BaseException]:
        """``collect_task`` for the task at ``position``, run with the offsets recorded
        for the position ``offsets_of`` (the task's first)."""
        return collect_task(
            job,
            self.spans[position],
            self.rerun_offsets.get(offsets_of),
            self.values,
            chunked=self.chunked,
            keep_values=self.keep_values,
            call_repr=call_repr,
            code=code,
            batches=self.batches,
        )

    def record(self, position: int, *, cancelled: bool, errors: dict[int, BaseException]) -> None:
        """The task at ``position`` finished: its outcome is recorded."""
        self.errors.update(errors)
        self.cancelled[position] = cancelled
        self.has_failures[position] = bool(errors)
        self.stored[position] = True
        start, stop = self.spans[position]
        if self.batches and len(errors) == 1 and stop - start > 1:
            ((index, error),) = errors.items()
            if failed_call(error, stop - start) == index - start and index + 1 < stop:
                self.not_run_from[position] = index + 1  # a batch that one call ended

    @property
    def not_run(self) -> int:
        """Items of finished tasks that never ran: those after a batch's failed call."""
        return sum(self.spans[p][1] - first for p, first in self.not_run_from.items())

    def all_succeeded(self, position: int) -> bool:
        """Whether every item of the (stored) task at ``position`` has its value."""
        return not (self.cancelled[position] or self.has_failures[position])

    def item_error(self, position: int, index: int, call_repr: str) -> BaseException | None:
        if self.cancelled[position]:
            return CancelledError(f"item {index} of {call_repr} was cancelled")
        first_not_run = self.not_run_from.get(position)
        if first_not_run is not None and index >= first_not_run:
            return CancelledError(
                f"item {index} of {call_repr} did not run: item {first_not_run - 1} failed"
            )
        return self.errors.get(index)

    def in_order(self, ready: Callable[[int], None], call_repr: str) -> Iterator[Any]:
        """Item results in input order, each once ``ready(position)`` returned for its
        task (it waits until the task's items are stored); a failed (or cancelled) item
        raises its exception."""
        for position, (start, stop) in enumerate(self.spans):
            ready(position)
            if self.all_succeeded(position):
                yield from self.values[start:stop]
                continue
            for index in range(start, stop):
                error = self.item_error(position, index, call_repr)
                if error is not None:
                    raise error
                yield self.values[index]

    def outcomes(self, call_repr: str) -> list[Any]:
        """Every item's result in input order, a failed item's exception in its place,
        and a ``CancelledError`` in a cancelled item's (every task is stored)."""
        outcomes: list[Any] = []
        for position, (start, stop) in enumerate(self.spans):
            if self.all_succeeded(position):  # no per-item work: a map may have millions
                outcomes += self.values[start:stop]
                continue
            for index in range(start, stop):
                error = self.item_error(position, index, call_repr)
                outcomes.append(self.values[index] if error is None else error)
        return outcomes

    def item_futures(self, position: int) -> Iterator[tuple[int, concurrent.futures.Future]]:
        """``(index, future)`` for every item of the (stored) task at ``position``."""
        start, stop = self.spans[position]
        for index in range(start, stop):
            yield index, self.item_future(position, index)

    def item_future(self, position: int, index: int) -> concurrent.futures.Future:
        """A done Future holding one item's outcome."""
        future: concurrent.futures.Future = concurrent.futures.Future()
        if self.cancelled[position]:
            future.cancel()
            return future
        error = self.errors.get(index)
        if error is not None:
            future.set_exception(error)
        else:
            future.set_result(self.values[index])
        return future

    # -- retry -------------------------------------------------------------------
    def failed_positions(self) -> list[int]:
        """The positions of the tasks with failed items, in order."""
        return sorted({p for p, has in enumerate(self.has_failures) if has})

    def rerun_plan(
        self,
        position: int,
        job: Any,
        *,
        items_call: tuple[Any, Any, bool, Any] | None,
        call_repr: str,
        scattered: Callable[[], bool],
    ) -> tuple[Any, list[int]]:
        """What the task ``job`` at ``position`` runs again, and the offsets in its span
        of the items it runs: a map's chunk that ran runs only its failed items, with a
        new call made from ``items_call`` (returned); any other task runs its own call
        again (None is returned for the call: it stays).

        Raises:
            RuntimeError: the task's call is not known here (``scattered()``: some task
                of the group carried scattered data, let go of when it ended).
        """
        start, stop = self.spans[position]
        failed = [i - start for i in range(start, stop) if i in self.errors]
        whole = job.cancelled() or job._exception is not None
        if self.chunked and not whole and items_call is not None:
            fn, items, star, make_call = items_call
            return make_call(fn, [items[start + o] for o in failed], star), failed
        if job._call is None:
            why = (
                "its calls carried scattered data, let go of when they ended"
                if scattered()
                else (job._no_retry)
            )
            raise RuntimeError(f"task {job.id} of {call_repr} cannot run again: {why}")
        return None, self.rerun_offsets.get(position) or list(range(stop - start))

    def reopen(self, position: int, offsets: list[int]) -> None:
        """The task at ``position`` runs the items at ``offsets`` again: they are no
        longer failed, and the task is no longer stored."""
        for index in [self.spans[position][0] + o for o in offsets]:
            self.errors.pop(index, None)
        self.rerun_offsets[position] = offsets
        self.stored[position] = False
        self.has_failures[position] = False
        self.not_run_from.pop(position, None)
