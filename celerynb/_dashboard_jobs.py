"""Kernel side: the dashboard's jobs: this user's jobs of every kernel, and cancel.

This kernel's jobs are its live ``Job``/``JobGroup`` objects. The jobs other kernels
sent on the same result backend come from the job store (``_store``); their states
are read from the backend in batches (at most ``MAX_TASKS_READ`` tasks a round),
and a finished one is not read again. Those states are display only, like all
progress: nothing here unpickles, finishes or trusts them.
"""

from __future__ import annotations

import os
import time
from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from celery import states

from ._registry import registry
from ._schema import PROGRESS, acceptable_state, parse_meta
from ._sources.polling import read_states
from ._store import KeptJob, store

MAX_ROWS = 200  # jobs read from the store per round
MAX_TASKS_READ = 2000  # task states read from the backend per round
MAX_AGE = 24 * 3600.0  # older jobs are left out (results expire after a day by default)
NOT_STORED = "?"  # a state that cannot be read (rpc:// keeps none)


@dataclass(frozen=True)
class JobRow:
    """One job (or group) as the dashboard shows it."""

    id: str
    name: str
    state: str
    percent: float | None
    where: str  # "this kernel", or the notebook of another kernel
    this_kernel: bool
    done: bool
    submitted: float
    tasks: int = 1
    finished_tasks: int = 0


def row_of_job(job: Any) -> JobRow:
    """A live job of this kernel (a ``Job`` or a ``JobGroup``)."""
    jobs = getattr(job, "jobs", None)
    tasks = len(jobs) if jobs is not None else 1
    finished = sum(1 for j in jobs if j.done()) if jobs is not None else int(job.done())
    return JobRow(
        id=job.id,
        name=job.name,
        state=job.state,
        percent=job.progress.percent,
        where="this kernel",
        this_kernel=True,
        done=job.done(),
        submitted=_wall_time_of(getattr(job, "_submitted_at", None)),
        tasks=tasks,
        finished_tasks=finished,
    )


def _wall_time_of(monotonic: Any) -> float:
    """A ``time.monotonic()`` moment as a ``time.time()`` one (now when unknown)."""
    now = time.time()
    if not isinstance(monotonic, int | float):
        return now
    return now - (time.monotonic() - monotonic)


def row_of_kept(kept: KeptJob, metas: Mapping[str, Mapping[str, Any]], readable: bool) -> JobRow:
    """A job of another kernel from its record and its tasks' stored metas (pure);
    ``readable``: the backend stores states (else every state is ``?``)."""
    record = kept.record
    where = os.path.basename(kept.notebook.rstrip("/")) or kept.notebook
    ids = record.task_ids or (record.id,)
    task_states = [_state_of(metas.get(task_id), readable) for task_id in ids]
    finished = sum(1 for state in task_states if state in states.READY_STATES)
    if len(ids) == 1:
        state = task_states[0]
        meta = metas.get(ids[0])
        percent = (
            parse_meta(state, meta.get("result")).percent if meta and state == PROGRESS else None
        )
    else:
        state = group_state(task_states)
        percent = round(100.0 * finished / len(ids), 2)
    if state == states.SUCCESS and percent is None:
        percent = 100.0
    return JobRow(
        id=record.id,
        name=record.name,
        state=state,
        percent=percent,
        where=where,
        this_kernel=False,
        done=state in states.READY_STATES,
        submitted=record.submitted,
        tasks=len(ids),
        finished_tasks=finished,
    )


def group_state(task_states: list[str]) -> str:
    """One state for a group's tasks (pure): running while any runs, else waiting
    while any waits, else FAILURE if any failed, REVOKED if any was, else SUCCESS."""
    if NOT_STORED in task_states:
        return NOT_STORED
    if any(s in (states.STARTED, PROGRESS) for s in task_states):
        return PROGRESS
    if any(s not in states.READY_STATES for s in task_states):
        return PROGRESS if any(s in states.READY_STATES for s in task_states) else states.PENDING
    for final in (states.FAILURE, states.REVOKED):
        if final in task_states:
            return final
    return states.SUCCESS


def state_counts(rows: Iterable[JobRow]) -> list[tuple[str, int]]:
    """``[(state, how many)]``, the most common first (pure)."""
    return Counter(row.state for row in rows).most_common()


def _state_of(meta: Mapping[str, Any] | None, readable: bool) -> str:
    if not readable:
        return NOT_STORED
    if meta is None:
        return states.PENDING  # nothing stored yet: queued (or expired)
    state = meta.get("status")
    return state if isinstance(state, str) and acceptable_state(state, custom=True) else NOT_STORED


class JobsReader:
    """Reads the rows of this user's jobs on one session's backend (see the module);
    remembers finished jobs of other kernels so they are read once."""

    def __init__(self, session: Any) -> None:
        self._session = session
        self._finished: dict[str, JobRow] = {}
        self.kept: dict[str, KeptJob] = {}  # other kernels' jobs by id, for cancel
        self.names: dict[str, str] = {}  # task id -> the name of its job (or group)

    def read(self, now: float | None = None) -> list[JobRow]:
        """The latest ``MAX_ROWS`` jobs of this kernel on the session's backend and as
        many of the other kernels' ones (of the last ``MAX_AGE`` s), newest first."""
        now = time.time() if now is None else now
        session = self._session
        mine = [
            job
            for job in registry.all()
            if getattr(getattr(job, "_session", None), "backend_key", None) == session.backend_key
        ][-MAX_ROWS:]
        rows = [row_of_job(job) for job in mine]
        known = {row.id for row in rows}
        kept = [
            k
            for k in store.recent(session.backend_key, now - MAX_AGE, MAX_ROWS)
            if k.record.id not in known
        ]
        self.kept = {k.record.id: k for k in kept}
        to_read = [k for k in kept if k.record.id not in self._finished]
        metas = self._metas(to_read)
        readable = bool(getattr(session, "stores_states", True))
        for k in kept:
            row = self._finished.get(k.record.id) or row_of_kept(k, metas, readable)
            if row.done:
                self._finished[row.id] = row
            rows.append(row)
        self._finished = {i: r for i, r in self._finished.items() if i in self.kept}
        names = {k_id: k.record.name for k_id, k in self.kept.items()}
        for k in kept:
            names.update(dict.fromkeys(k.record.task_ids, k.record.name))
        for job in mine:
            names[job.id] = job.name
            names.update((part.id, job.name) for part in getattr(job, "jobs", ()))
        self.names = names
        rows.sort(key=lambda row: row.submitted, reverse=True)
        return rows

    def _metas(self, kept: list[KeptJob]) -> dict[str, dict[str, Any]]:
        if not kept or not getattr(self._session, "stores_states", True):
            return {}
        ids: list[str] = []
        for k in kept:
            ids += list(k.record.task_ids or (k.record.id,))
            if len(ids) >= MAX_TASKS_READ:
                break
        return dict(read_states(self._session.app.backend, ids[:MAX_TASKS_READ]))

    def cancel(self, job_id: str) -> bool:
        """Cancel one job: this kernel's as ``Job.cancel()`` does, another kernel's by a
        revoke of its tasks (signed REVOKED for shipped calls, as that kernel expects).
        False when it is not known or already finished here."""
        try:
            return bool(registry.find_exact(job_id).cancel())
        except LookupError:
            pass
        kept = self.kept.get(job_id)
        if kept is None or job_id in self._finished:
            return False
        record = kept.record
        self._session.revoke(list(record.task_ids or (record.id,)), shipped=bool(record.shipped))
        return True
