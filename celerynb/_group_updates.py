"""Kernel side: how a JobGroup takes what its tasks tell — a task joins it, a task's
output lines, a task finished (its items collected and stored, the group ending with
its last) — how an open-ended group (a joblib call) grows and closes, and how what
failed runs again. Functions of the group they update, called by its methods (the
item bookkeeping they use: ``_group_items``)."""

from __future__ import annotations

import functools
import logging
from collections.abc import Sequence
from concurrent.futures import CancelledError
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from ._group import JobGroup
    from ._job import Job

log = logging.getLogger("celerynb._group")  # its lines are the group's


def grow(group: JobGroup, jobs: Sequence[Job], sizes: Sequence[int]) -> None:
    """Add tasks of ``sizes`` items each; their items follow those the group has.

    Raises:
        CancelledError: the group was cancelled (or ended): the tasks are cancelled.
    """
    with group._lock:
        ended = group._ended or group._cancelling
        if not ended:
            first = len(group.jobs)
            if not group.jobs:
                group._submitted_at = min(job._submitted_at for job in jobs)
            for job, _size in zip(jobs, sizes, strict=True):
                group.jobs.append(job)
                group._positions.setdefault(job.id, []).append(len(group.jobs) - 1)
            group._items.grow(sizes)
            group._remaining += len(jobs)
    if ended:
        for job in jobs:
            job.cancel()
        raise CancelledError(f"{group.call_repr} was cancelled")
    for position, job in enumerate(jobs, first):
        join(group, position, job)
    group._notify()


def close(group: JobGroup) -> None:
    """No more tasks will come: the group ends once those it has are done."""
    with group._lock:
        group._open = False
        last = group._remaining == 0 and not group._cancelling
    if last:
        group._finish()
    group._notify()


def take_output_of(group: JobGroup, job: Job) -> None:
    """The task's new output lines join the group's, in the order they came (also
    called when a task joins: it may have printed before the group existed)."""
    with group._lock:
        entries, missed, group._output_marks[job.id] = job._output_since(
            group._output_marks.get(job.id, 0)
        )
        group._output.append(entries)
        group._output.count_dropped(missed)


def on_job_done(group: JobGroup, position: int, job: Job) -> None:
    """The task at ``position`` finished: its items are collected and stored, and the
    group ends with its last task (a done callback of the job)."""
    with group._lock:
        if group._items.stored[position]:  # already counted (a task done twice is one outcome)
            return
    start, stop = group._items.spans[position]
    cancelled = job.cancelled()
    errors: dict[int, BaseException] = {}
    if not cancelled:
        try:  # store a finished task's values; its failed items are returned
            errors = group._items.collect(
                position,
                job,
                group._positions[job.id][0],
                call_repr=group.call_repr,
                code=group._code,
            )
        except Exception as exc:  # unexpected: fail its items, never hang
            errors = dict.fromkeys(range(start, stop), exc)
    with group._settled:
        try:
            group._items.record(position, cancelled=cancelled, errors=errors)
        except Exception:  # unexpected: the task still counts, or the group never ends
            log.exception("celerynb: recording task %s of %s failed", job.id, group.call_repr)
        group._remaining -= 1
        quiet = group._cancelling  # cancel() notifies once, not once per task
        last = group._remaining == 0 and not quiet and not group._open
        group._settled.notify_all()
    if last:
        group._finish()
    if not quiet:
        group._notify()


def join(group: JobGroup, position: int, job: Job) -> None:
    """``job`` joins the group as its task at ``position``: the group follows its
    changes, its output and its end (its retries go through the group)."""
    job._group = group if job._group is None else job._group
    job.add_listener(group._on_job_change)
    take_output_of(group, job)
    job.add_done_callback(functools.partial(on_job_done, group, position))


def retry_failed(group: JobGroup) -> JobGroup:
    """``JobGroup.retry_failed``: reopen the tasks with failed items, then send each
    again."""
    kept = group.counts.done  # items that ran well: this run's rate leaves them out
    with group._lock:
        if not group.done() or group._cancelling:
            raise RuntimeError(f"{group.call_repr} is still running: nothing to retry")
        failed = group._items.failed_positions()
        if not failed:
            raise RuntimeError(f"nothing of {group.call_repr} failed")
        plans = [retry_plan(group, position) for position in failed]
        for position, (_job, offsets) in zip(failed, plans, strict=True):
            group._items.reopen(position, offsets)
        group._remaining += len(failed)
        group._ended = False
        group._reopen()  # its elapsed time counts from now: so does its rate
        group._ran_before = kept
    first_error = None
    for job, _offsets in plans:  # each sent, or ended with why: the count balances
        try:
            job._rerun()
        except Exception as exc:
            first_error = first_error or exc
    group._notify()
    if first_error is not None:
        raise first_error
    return group


def retry_plan(group: JobGroup, position: int) -> tuple[Job, list[int]]:
    """The job at ``position`` with its call set to run its failed items again, and
    their offsets in its span (under ``_lock``)."""
    job = group.jobs[position]
    call, offsets = group._items.rerun_plan(
        position,
        job,
        items_call=group._items_call,
        call_repr=group.call_repr,
        scattered=lambda: any(j._carries_scattered for j in group.jobs),
    )
    if call is not None:  # a map's chunk: only its failed items
        job._call = call
    return job, offsets
