"""Kernel side: a group's progress aggregated from its tasks — how many items are
pending, running, done, failed and cancelled (from the tasks' spans, states and
in-task progress), its bar and its note. Pure logic."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from celery import states

from ._schema import PROGRESS, BarSnapshot

Span = tuple[int, int]  # items [start, stop) of one task


@dataclass(frozen=True)
class ItemCounts:
    """How many items are pending, running, done (without error), failed and cancelled.

    ``done + failed`` items ran to an outcome; ``cancelled`` items never will (their
    task was revoked, whether or not some of them had run: their results are lost).
    """

    pending: int = 0
    running: int = 0
    done: int = 0
    failed: int = 0
    cancelled: int = 0

    def text(self) -> str:
        parts = [f"{self.failed} failed"] if self.failed else []
        parts += [f"{self.cancelled} cancelled"] if self.cancelled else []
        parts += [f"{self.running} running"] if self.running else []
        parts += [f"{self.pending} pending"] if self.pending else []
        return ", ".join(parts)


# States in which a task's own progress counts: running, or finished with its items
# about to be stored (a done callback runs right after the state arrives).
_COUNTING_PROGRESS = frozenset({states.STARTED, PROGRESS, states.RETRY}) | states.READY_STATES


def count_items(
    spans: Sequence[Span],
    job_states: Sequence[str],
    in_task_done: Sequence[float],
    *,
    settled: Sequence[bool],
    cancelled: Sequence[bool],
    failed_items: int,
    not_run_items: int = 0,
    kept: Sequence[int] | None = None,
) -> ItemCounts:
    """Item counts from each task's span, state, in-task progress and outcome (pure).

    ``settled``: the task's items are stored; ``cancelled``: it was cancelled (its
    items count as cancelled); ``failed_items``: how many stored items failed;
    ``not_run_items``: how many stored items never ran (after a batch's failed call:
    counted as cancelled); ``kept``: items of each task done in an earlier run while
    it runs its failed ones again (``retry_failed``): they stay done meanwhile, and
    its in-task progress counts the others.
    """
    pending = running = done = revoked = 0
    for (start, stop), state, partial, is_settled, is_cancelled, kept_here in zip(
        spans, job_states, in_task_done, settled, cancelled, kept or [0] * len(spans), strict=True
    ):
        size = stop - start
        if not is_settled and state != states.SUCCESS:
            done += kept_here
            size -= kept_here
        if is_cancelled:
            revoked += size
        elif is_settled or state == states.SUCCESS:
            # SUCCESS: every item ran, even while the chunk's values still download (the
            # job's bar then counts bytes, not items)
            done += size
        elif state in _COUNTING_PROGRESS:
            partial = int(min(max(partial, 0), size))
            done += partial
            running += size - partial
        else:
            pending += size
    done -= failed_items + not_run_items
    return ItemCounts(pending, running, done, failed_items, revoked + not_run_items)


def items_bar(
    counts: ItemCounts, total: int | None, desc: str, elapsed: float, ran_before: int = 0
) -> BarSnapshot:
    """A group's bar: items that ran (done or failed) of ``total``, and the counts in
    its text. The rate is of this run's items over its ``elapsed`` seconds: after a
    retry, the ``ran_before`` items done in earlier runs are not counted in it."""
    processed = counts.done + counts.failed
    this_run = processed - ran_before
    rate = this_run / elapsed if this_run > 0 and elapsed > 0 else None
    return BarSnapshot(processed, total, desc, "it", rate, elapsed, counts.text())


def tasks_note(notes: Sequence[str], tasks: int) -> str | None:
    """A group's note from the ``notes`` of its ``tasks``: the first one, and how many
    tasks it concerns."""
    if not notes:
        return None
    if tasks == 1:
        return notes[0]
    others = len(notes) - notes.count(notes[0])
    more = f" (and {others} other notes)" if others else ""
    return f"{notes.count(notes[0])} of {tasks} tasks: {notes[0]}{more}"
