"""Kernel side: how a Job takes what the watcher learns about its task — a state read
from the backend (with the output lines and the signed run it carries), a worker or a
message lost — and when a task that keeps losing its worker is stopped. Functions of
the Job they update, called by its methods (the rules they apply: ``_job_states``)."""

from __future__ import annotations

import logging
import time
from typing import TYPE_CHECKING, Any

from celery import states

from ._errors import WorkerLostError
from ._job_outcome import Unverified, has_signed_error, open_run, read_outcome
from ._job_states import (
    message_lost_error,
    moves_forward,
    redelivery_loop_error,
    run_of,
    short_repr,
    worker_lost_error,
)
from ._schema import (
    FINAL_OUTPUT_KEY,
    LOST,
    OUTPUT_KEY,
    PROGRESS,
    REQUEUED,
    RUN_KEY,
    acceptable_state,
    parse_meta,
)

if TYPE_CHECKING:
    from ._job import Job

log = logging.getLogger("celerynb._job")  # its lines are the Job's

MAX_RUNS = 3  # runs of a re-queued task that each lost its worker, before it is stopped


def apply_meta(job: Job, meta: dict[str, Any], live: bool = False) -> None:
    """Take a state read from the backend. ``live``: it was just written (not a
    read-back), so a change it brings is news that the worker is alive."""
    state = meta.get("status", states.PENDING)
    if not acceptable_state(state, custom=job._shipped is not True):
        ignore(job, f"a state that is not a Celery state ({short_repr(state)})")
        return
    if not job.named:
        job._learn_name(meta.get("name"))
    if job._shipped is True:
        take_signed_run(job, meta.get("result"))
    if (
        state == states.RETRY
        and job._shipped is True
        and not has_signed_error(meta, session=job._session, task_id=job.id)
    ):
        # A retry says the call failed and runs again: for a shipped job, only on its
        # worker's signed word
        what = short_repr(str(meta.get("result")))
        ignore(job, f"an unsigned {state} ({what})")
        return
    outcome: tuple[str, Any] | None = None
    if state in states.READY_STATES:
        try:
            outcome = read_outcome(
                state,
                meta,
                task_id=job.id,
                shipped=job._shipped,
                session=job._session,
                code=job._code,
            )
        except Unverified as why:
            ignore(job, str(why))
            return
    if state in (PROGRESS, states.SUCCESS) and take_output(job, state, meta.get("result")):
        job._notify()  # even for a state that moves nothing else (a late one)
    too_many_runs = False
    with job._lock:
        if job.done():
            late = outcome is not None and job.watch_after_done
            if late:  # its worker came back after all
                job._late_outcome = True
                job._notes["worker"] = (
                    f"the task ended {state} after it was marked LOST: "
                    f"celerynb.attach({job.id!r}) follows it"
                )
        else:
            late = None  # not done: go on below
    if late is not None:
        if late:
            job._notify()
        return
    with job._lock:
        if job.done():  # finished meanwhile (cancelled, abandoned)
            return
        current = job._snapshot
        run = run_of(state, meta)
        rerun = False
        if run is not None and run not in job._runs:
            rerun = bool(job._runs)
            job._runs.append(run)
        if rerun:  # a STARTED from another process: the task runs again (re-queued)
            too_many_runs = job.requeued_if_worker_lost and len(job._runs) > MAX_RUNS
        elif state not in states.READY_STATES and not moves_forward(current, state, meta):
            return
        job._snapshot = parse_meta(state, meta.get("result"), current)
        if state != states.PENDING:
            job._notes.pop("queue", None)  # a worker took it
        if live and (state != current.state or job._snapshot.updated != current.updated):
            job._news_at = time.monotonic()
        if state == states.SUCCESS and not job._session.watcher.sees_every_update:
            job._snapshot = job._snapshot.completed()
        if state == PROGRESS:
            job._progress_updates += 1
    if state != states.PENDING and job._session.backend_caveat is not None:
        job._session.backend_caveat = None  # a worker does write to this backend
    if too_many_runs:
        stop_redelivery_loop(job)
        return
    if outcome is not None:
        # A verified outcome: an unsigned entry ignored before (e.g. the REVOKED that
        # Celery's revoke command writes for a task still queued) is moot now.
        job._notes.pop("entry", None)
        job._settle(*outcome, done_at=meta.get("date_done"))
    job._notify()


def take_output(job: Job, state: str, result: Any) -> bool:
    """Merge the output lines a PROGRESS meta (or a shipped call's SUCCESS) carries;
    True when some were new. A late or repeated batch adds only lines not seen yet
    (they are numbered)."""
    key = OUTPUT_KEY if state == PROGRESS else FINAL_OUTPUT_KEY
    batch = result.get(key) if isinstance(result, dict) else None
    if batch is None:
        return False
    with job._lock:
        return bool(job._output.merge(batch))


def take_signed_run(job: Job, result: Any) -> None:
    """Take the run a shipped job's worker signed, carried by a progress or final entry."""
    run = result.get(RUN_KEY) if isinstance(result, dict) else None
    if not isinstance(run, dict) or run.get("frame") == job._vouched_run_mac:
        return  # none, or the same run again (every progress write carries it)
    try:
        job._vouched_run = open_run(run, secret=job._session.secret, task_id=job.id)
        job._vouched_run_mac = run["frame"]
    except Exception:  # unsigned or forged: not a run this kernel can judge by
        return


def ignore(job: Job, what: str) -> None:
    """An entry from the backend that does not count: note it (one log line per job)."""
    if job.done():
        return
    note = f"ignored {what} found in the result backend"
    if "entry" not in job._notes:
        log.warning("celerynb: job %s: %s", job.id, note)
    job._set_note("entry", note)


def stop_redelivery_loop(job: Job) -> None:
    """The task started ``MAX_RUNS + 1`` times: each run lost its worker and the app
    re-queued it. Revoke it so no worker takes it again, and fail (as dask's
    KilledWorker does) instead of letting it kill workers forever."""
    job._session.revoke(job.id, shipped=job._shipped is True)
    job._abandon(redelivery_loop_error(job.id, job._runs))


def lose(job: Job, hostname: str, silent_for: float, why: str | None = None) -> None:
    """The worker running this job stopped sending heartbeats (or ``why``: it was
    stopped, as its LocalCluster knows): finish as LOST, or, for a task its app
    re-queues, show REQUEUED and follow its next run."""
    with job._lock:
        if job.done():
            return
        requeued = job.requeued_if_worker_lost
        job._snapshot = job._snapshot.with_state(REQUEUED if requeued else LOST)
    if requeued:
        job._notify()
        return
    if send_again_when_lost(job, f"lost with worker {hostname}"):
        return
    job._abandon(WorkerLostError(why) if why else worker_lost_error(job.id, hostname, silent_for))


def lose_message(job: Job) -> None:
    """The broker restarted without its data while the task waited in a queue: its
    message is gone and it will not run. Finish as LOST, saying so."""
    with job._lock:
        if job.done() or job._snapshot.state != states.PENDING:
            return
        job._snapshot = job._snapshot.with_state(LOST)
    if send_again_when_lost(job, "its message was lost with the broker's data"):
        return
    job._abandon(message_lost_error(job.id))


def send_again_when_lost(job: Job, why: str) -> bool:
    """For a job sent with ``retry_lost``: send it again (on a transfer thread, not
    the watcher's) instead of finishing it LOST; True when it is sent again."""
    options = job.call_options
    with job._lock:
        if options is None or job._call is None or job._lost_runs >= options.retry_lost:
            return False
        job._lost_runs += 1
        note = f"{why}: sent again ({job._lost_runs} of {options.retry_lost})"
    job._session.transfers.run(lambda: job._rerun(keep_note=note))
    return True
