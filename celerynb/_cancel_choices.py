"""The dashboard's dropdown of jobs to cancel: what it offers, in positions that hold.

A Dropdown tells the kernel which entry the page chose by its position (ipywidgets
syncs ``index``, not the value). New options replace the page's while someone may be
choosing: a choice made in the page just before comes back as a position in the new
list. So a job keeps its position as long as the dropdown offers it; a job that
ended stays in its place, marked, until only ended jobs follow it; new jobs come
last, never in a place freed by the same update; and the first entry is a
placeholder that never moves, so that no job is chosen (and Cancel does nothing)
until someone picks one. Pure: no widgets here.
"""

from __future__ import annotations

from collections.abc import Sequence

from ._dashboard_jobs import JobRow

Choice = tuple[str, str]  # (label, job id); the placeholder's id is ""
PLACEHOLDER: Choice = ("choose a job to cancel", "")
ENDED = " · ended"


def choice_label(row: JobRow) -> str:
    """A job as the dropdown offers it (plain text, names cut): ``name · id · where``.

    No state: it changes as the job runs, and the labels would change with it."""
    parts = (row.name, row.id[:8], row.where)
    return " · ".join(" ".join(part.split())[:60] for part in parts)


def next_choices(
    previous: Sequence[Choice], unfinished: Sequence[JobRow], limit: int
) -> tuple[Choice, ...]:
    """The dropdown's options after ``previous``, for the ``unfinished`` jobs now.

    Every job offered before keeps its position (an ended one marked); new ones follow,
    at most ``limit`` jobs in all. Ended ones at the end are dropped only by an update
    that adds no job, so a position is never given to another job by the update that
    frees it (a choice made in the page before this update is read against it), and no
    job ever moves. Past the limit, new jobs wait until the end makes room."""
    live = {row.id: row for row in unfinished}
    kept: list[Choice] = []
    for label, job_id in previous:
        if not job_id:
            continue  # the placeholder: always first
        row = live.get(job_id)
        if row is not None:
            kept.append((choice_label(row), job_id))
        else:
            kept.append((label if label.endswith(ENDED) else label + ENDED, job_id))
    offered = {job_id for _, job_id in kept}
    new = [(choice_label(row), row.id) for row in unfinished if row.id not in offered]
    room = limit - len(kept)
    if new and room > 0:
        kept += new[:room]  # after every job offered, ended ones too: nothing moves
    else:  # make room at the end; what waits is added by a later update
        while kept and kept[-1][1] not in live:
            kept.pop()
    return (PLACEHOLDER, *kept)
