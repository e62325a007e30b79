"""The watcher's bookkeeping of its jobs at each step, apart from its thread and source.

Which jobs a stopped worker was running, what the liveness checks conclude of the
workers of running jobs, which attached jobs to ask the workers about and what to do
with their answer, which jobs are finished: functions of the jobs (and a monitor's
evidence) that the ``Watcher`` calls, testable without a thread or a server.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from celery import states

from ._liveness import LOST as LOST_VERDICT
from ._liveness import PROBE, UNKNOWN_AFTER, WAIT, WorkerMonitor, judge
from ._schema import RUNNING_STATES
from ._watched import Watched


@dataclass(frozen=True)
class WorkerStopped:
    """A worker known to be gone (see ``Watcher.worker_stopped``)."""

    hostname: str
    why: str


def runs_on(job: Watched, hostname: str) -> bool:
    """``job`` is running on the worker ``hostname`` and would end LOST with it. Not a
    job whose task acknowledges late: its message is sent again (the liveness checks
    follow it as before)."""
    run = job.worker_run
    return (
        not job.done()
        and job.state in RUNNING_STATES
        and not getattr(job, "acks_late", False)
        and run is not None
        and run[0] == hostname
    )


def check_workers_of_running_jobs(
    jobs: Iterable[Watched], monitor: WorkerMonitor, now: float
) -> None:
    """Judge the worker of every running job (see ``_liveness``): probe the silent
    ones, note what is odd, finish as LOST the jobs whose worker is gone."""
    for job in list(jobs):
        run = job.worker_run
        if run is None or job.done() or job.state not in RUNNING_STATES:
            continue
        hostname, pid = run
        verdict, note = judge(monitor.evidence(hostname, job.news_age(now), now))
        if verdict == PROBE:
            monitor.probe(hostname, pid)
        elif verdict == LOST_VERDICT:
            job._lose(hostname, monitor.silent_for(hostname, now) or 0.0)
        job._set_note("worker", note if verdict == WAIT else None)


def attached_jobs_to_ask(
    jobs: Iterable[Watched], watched_since: Mapping[str, float], now: float
) -> tuple[list[Watched], list[Watched]]:
    """The attached jobs to ask the workers about, each once (marked asked here):
    those PENDING for ``UNKNOWN_AFTER`` s since first watched, and those running under
    no known name. Returns ``(pending, unnamed)``."""
    pending, unnamed = [], []
    for job in jobs:
        if not getattr(job, "attached", False):
            continue
        if (
            not getattr(job, "asked_workers", True)
            and job.state == states.PENDING
            and now - watched_since.get(job.id, now) >= UNKNOWN_AFTER
        ):
            job.asked_workers = True
            pending.append(job)
        elif (
            not getattr(job, "named", True)
            and not getattr(job, "asked_for_name", True)
            and job.state in RUNNING_STATES
        ):
            job.asked_for_name = True
            unnamed.append(job)
    return pending, unnamed


def tell_attached_jobs(
    pending: list[Watched], unnamed: list[Watched], found: Mapping[str, str]
) -> None:
    """The workers' answer (task id -> name of the tasks they hold): a pending job no
    worker holds is UNKNOWN; a job a worker holds learns its name."""
    for job in pending:
        if job.id not in found:
            job._mark_unknown()
    for job in pending + unnamed:
        if found.get(job.id):
            job._learn_name(found[job.id])


def finished_job_ids(jobs: Mapping[str, Watched]) -> set[str]:
    """The ids of the jobs done and no longer to watch. A LOST job stays watched: its
    worker may come back and finish it after all."""
    return {
        task_id
        for task_id, job in jobs.items()
        if job.done() and not getattr(job, "watch_after_done", False)
    }
