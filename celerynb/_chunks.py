"""Worker side of ``map``: one Celery task runs a chunk of items as plain function calls.

A chunk costs one message and one loop; an item that raises is recorded and the
loop goes on. The clock is read once per block of items (at most ``MAX_BLOCK``, sized
to take about ``BLOCK_SECONDS``), so a tiny item costs about what it costs in a list
comprehension. Progress is reported about 10 times a second, so a chunk of tiny
items pays almost nothing for it. The chunk's bar is the task's first (primary) bar,
so bars of the items' own ``celerynb.tqdm`` or ``report`` never pass for it.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from itertools import islice
from typing import Any

from ._call_failures import is_the_calls_own
from ._remote_errors import pickle_exception
from ._reporting import progress_for, running_task
from ._schema import bar_meta

REPORT_INTERVAL = 0.1
BLOCK_SECONDS = 0.01  # items run between two looks at the clock (progress, block size)
# Bounded: items that turn slow mid-chunk hold the bar still for at most this many.
MAX_BLOCK = 1024
CHUNK_BAR = -2  # the chunk's key among the task's bars (report() uses -1, tqdm bars their id)


@dataclass
class ChunkResult:
    """The values of a chunk's items, in order; failed items map to pickled error info."""

    values: list[Any]
    errors: dict[int, bytes] = field(default_factory=dict)  # offset in the chunk -> info


def run_chunk(
    fn: Callable[..., Any],
    items: Sequence[Any],
    star: bool = False,
    desc: str = "",
    retries: int = 0,
    retry_delay: float = 0.0,
) -> ChunkResult:
    """Call ``fn(item)`` (``fn(*item)`` when ``star``) for every item; an item that
    raises is called again, up to ``retries`` times, ``retry_delay`` seconds later."""
    if retries:
        fn = _retrying(fn, retries, retry_delay)
    task = running_task()
    progress = progress_for(task) if task is not None else None
    if progress is not None:  # first: the bars items open later come after it
        progress.add_bar(CHUNK_BAR, bar_meta(0, len(items), desc))
    total = len(items)
    values: list[Any] = []
    errors: dict[int, bytes] = {}
    remaining = iter(items)
    block = 1  # doubled while blocks run faster than BLOCK_SECONDS
    started = time.monotonic()
    next_report = started + REPORT_INTERVAL
    while len(values) < total:
        block_started = time.monotonic()
        _run_block(fn, islice(remaining, block), star, values, errors)
        now = time.monotonic()
        block = _next_block(block, now - block_started)
        if progress is not None and now >= next_report:
            done, elapsed = len(values), now - started
            meta = bar_meta(done, total, desc, rate=done / elapsed, elapsed=elapsed)
            progress.update_bar(CHUNK_BAR, meta)
            next_report = now + REPORT_INTERVAL
    return ChunkResult(values, errors)


def _run_block(
    fn: Callable[..., Any],
    items: Iterator[Any],
    star: bool,
    values: list[Any],
    errors: dict[int, bytes],
) -> None:
    """Append ``fn``'s value for each of ``items`` to ``values``; a failed item gets
    None there and its pickled error in ``errors``, and the block goes on."""
    append = values.append
    for item in items:
        try:
            append(fn(*item) if star else fn(item))
        except BaseException as exc:  # SystemExit too: this item's, the others go on
            if not is_the_calls_own(exc):
                raise  # the worker stops the task (a revoke)
            errors[len(values)] = pickle_exception(exc)
            append(None)


def _retrying(fn: Callable[..., Any], retries: int, delay: float) -> Callable[..., Any]:
    """``fn``, called again when it raises, up to ``retries`` times (the last error
    stands)."""

    def call(*args: Any) -> Any:
        for attempt in range(retries + 1):
            try:
                return fn(*args)
            except BaseException as exc:  # as a single call's retries= does
                if attempt == retries or not is_the_calls_own(exc):
                    raise
                if delay:
                    time.sleep(delay)
        raise AssertionError("unreachable")

    return call


def _next_block(block: int, seconds: float) -> int:
    """Items in the next block: twice as many while a block takes under BLOCK_SECONDS,
    fewer when it took longer (slow items: the bar still moves)."""
    if seconds < BLOCK_SECONDS / 2:
        return min(block * 2, MAX_BLOCK)
    if seconds > BLOCK_SECONDS * 2:
        return max(block // 2, 1)
    return block
