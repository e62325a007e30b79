"""Worker side of ``map``: one Celery task runs a chunk of items as plain function calls.

A chunk costs one message and one loop; an item that raises is recorded and the
loop goes on. Progress is reported about 10 times a second, so a chunk of tiny
items pays almost nothing for it. The chunk's bar is the task's first (primary)
bar, so bars of the items' own ``celerynb.tqdm`` or ``report`` never pass for it.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from ._remote_errors import pickle_exception
from ._reporting import progress_for, running_task
from ._schema import bar_meta

REPORT_INTERVAL = 0.1
CHUNK_BAR = -2  # the chunk's key among the task's bars (report() uses -1, tqdm bars their id)


@dataclass
class ChunkResult:
    """The values of a chunk's items, in order; failed items map to pickled error info."""

    values: list[Any]
    errors: dict[int, bytes] = field(default_factory=dict)  # offset in the chunk -> info


def run_chunk(
    fn: Callable[..., Any], items: Sequence[Any], star: bool = False, desc: str = ""
) -> ChunkResult:
    """Call ``fn(item)`` (``fn(*item)`` when ``star``) for every item."""
    task = running_task()
    progress = progress_for(task) if task is not None else None
    if progress is not None:  # first: the bars items open later come after it
        progress.add_bar(CHUNK_BAR, bar_meta(0, len(items), desc))
    values: list[Any] = [None] * len(items)
    errors: dict[int, bytes] = {}
    started = time.monotonic()
    next_report = started + REPORT_INTERVAL
    for offset, item in enumerate(items):
        try:
            values[offset] = fn(*item) if star else fn(item)
        except Exception as exc:
            errors[offset] = pickle_exception(exc)
        if progress is not None:
            now = time.monotonic()
            if now >= next_report:
                done, elapsed = offset + 1, now - started
                meta = bar_meta(done, len(items), desc, rate=done / elapsed, elapsed=elapsed)
                progress.update_bar(CHUNK_BAR, meta)
                next_report = now + REPORT_INTERVAL
    return ChunkResult(values, errors)
