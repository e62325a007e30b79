"""Worker side of ``map``: one Celery task runs a chunk of items as plain function calls.

A chunk costs one message and one loop; an item that raises is recorded and the
loop goes on. Progress is reported about 10 times a second, so a chunk of tiny
items pays almost nothing for it.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from ._remote_errors import pickle_exception
from ._reporting import report, running_task

REPORT_INTERVAL = 0.1


@dataclass
class ChunkResult:
    """The values of a chunk's items, in order; failed items map to pickled error info."""

    values: list[Any]
    errors: dict[int, bytes] = field(default_factory=dict)  # offset in the chunk -> info


def run_chunk(
    fn: Callable[..., Any], items: Sequence[Any], star: bool = False, desc: str = ""
) -> ChunkResult:
    """Call ``fn(item)`` (``fn(*item)`` when ``star``) for every item."""
    in_task = running_task() is not None
    values: list[Any] = [None] * len(items)
    errors: dict[int, bytes] = {}
    next_report = time.monotonic() + REPORT_INTERVAL
    for offset, item in enumerate(items):
        try:
            values[offset] = fn(*item) if star else fn(item)
        except Exception as exc:
            errors[offset] = pickle_exception(exc)
        if in_task:
            now = time.monotonic()
            if now >= next_report:
                report(offset + 1, len(items), desc)
                next_report = now + REPORT_INTERVAL
    return ChunkResult(values, errors)
