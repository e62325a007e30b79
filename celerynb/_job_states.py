"""Kernel side: the rules that turn what is known of a task — its states, its name,
the processes that ran it, a lost worker or message — into a Job's state, note and
ending error. Pure logic: no I/O, no locks."""

from __future__ import annotations

import reprlib
from collections.abc import Iterable, Sequence
from datetime import datetime
from typing import Any

from celery import states

from ._call_options import CallOptions, time_limit_note, waiting_note
from ._config import SHIPPED_TASK_NAME
from ._errors import MessageLostError, RemoteError, RemoteTraceback, WorkerLostError
from ._liveness import UNKNOWN_NOTE
from ._schema import PROGRESS, UNKNOWN, ProgressSnapshot

MAX_NAME = 200  # characters of a task name learnt from the backend or a worker
SHORT_REPR = 160  # characters of an entry named in a note
_short = reprlib.Repr()  # nested values cut too, before the whole is
_short.maxstring = _short.maxother = 10 * SHORT_REPR


def short_repr(value: Any) -> str:
    """``repr(value)`` cut to ``SHORT_REPR`` characters, to name an entry in a note:
    cut at its end, where reprlib would cut a string in its middle (an error message
    says what went wrong there: a worker refusing a call "signed with another
    CELERYNB_SECRET" lost those words)."""
    text = _short.repr(value)
    return text if len(text) <= SHORT_REPR else text[: SHORT_REPR - 1] + "…"


def placeholder_name(task_id: str) -> str:
    """How a task is called while nothing better is known: ``task 1a2b3c4d``."""
    return f"task {task_id[:8]}"


def date_done(value: Any) -> float | None:
    """Celery's ``date_done`` (an ISO time with its offset) as a wall-clock time, or None
    (missing, or without a UTC offset: then which clock it was is unknown)."""
    if not isinstance(value, str):
        return None
    try:
        moment = datetime.fromisoformat(value)
    except ValueError:
        return None
    return moment.timestamp() if moment.tzinfo is not None else None


def is_task_name(name: Any) -> bool:
    """Whether ``name``, found in a task's stored state or a worker's answer, names it."""
    # A task name is one printable line; celerynb's own generic task names nothing.
    if not isinstance(name, str) or not name.isprintable() or len(name) > MAX_NAME:
        return False
    return name not in ("", SHIPPED_TASK_NAME)


def run_of(state: str, meta: dict[str, Any]) -> tuple[str, int] | None:
    """(hostname, pid) of the process a STARTED state comes from, else None."""
    info = meta.get("result")
    if state != states.STARTED or not isinstance(info, dict):
        return None
    hostname, pid = info.get("hostname"), info.get("pid")
    return (str(hostname), int(pid)) if hostname and isinstance(pid, int) else None


# Order in which non-final states may follow each other; a late message of an
# earlier state (catch-up racing pub/sub) must not move a job backwards.
_ORDER = {states.PENDING: 0, states.RECEIVED: 1, states.STARTED: 2, PROGRESS: 3}


def moves_forward(current: ProgressSnapshot, state: str, meta: dict[str, Any]) -> bool:
    """Whether a non-final ``state`` (its ``meta``) may follow the ``current`` one."""
    if state == states.RETRY:
        return True
    if _ORDER.get(state, 0) < _ORDER.get(current.state, 0):
        return False
    if state == PROGRESS and current.state == PROGRESS:
        result = meta.get("result")
        updated = result.get("updated") if isinstance(result, dict) else None
        if updated is not None and current.updated is not None:
            return updated >= current.updated
    return True


def plain_error(error: Any, traceback_text: str | None) -> BaseException:
    """The exception of a registered task's FAILURE (Celery rebuilt it, or a text)."""
    if not isinstance(error, BaseException):
        error = RemoteError(str(error))
    if traceback_text:
        error.__cause__ = RemoteTraceback(str(traceback_text))
    return error


def job_note(
    state: str,
    *,
    outage: str | None,
    cancelled: bool,
    revoke_note: str | None,
    unfollowed: str | None,
    backend_caveat: str | None,
    options: CallOptions | None,
    sent_wall: datetime,
    now: datetime,
    error: BaseException | None,
    notes: Iterable[str],
) -> str | None:
    """Why a job in ``state`` is not where one would expect, when celerynb knows; else
    None. ``outage``: the watcher's (for a job not done); ``revoke_note``: why its revoke
    has not reached the workers (a cancelled job); ``unfollowed``: why no state may ever
    come; ``backend_caveat``: the session's doubt about its result backend; ``notes``:
    what else is odd about it, by topic."""
    texts: list[str | None] = []
    if outage:
        texts.append(outage)
    if cancelled:
        texts.append(revoke_note)
        texts.append(waiting_note(options, sent_wall, now, ended=True))
    if state in (states.PENDING, UNKNOWN) and unfollowed:
        texts.append(unfollowed)
    elif state == UNKNOWN:
        texts.append(UNKNOWN_NOTE)
    if state == states.PENDING:
        texts.append(backend_caveat)
        texts.append(waiting_note(options, sent_wall, now))
    if state == states.FAILURE:
        texts.append(time_limit_note(options, error))
    texts += notes
    return "; ".join(text for text in texts if text) or None


def worker_lost_error(task_id: str, hostname: str, silent_for: float) -> WorkerLostError:
    """The error of a job whose worker stopped sending heartbeats ``silent_for`` s ago."""
    silence = f"{silent_for:.0f}s ago" if silent_for else "(never heard here)"
    return WorkerLostError(
        f"worker {hostname} stopped sending heartbeats {silence} and answers no ping "
        f"while running task {task_id}: it was killed or cut off, so the task will "
        "not finish there (an app with acks_late may re-queue it; should it finish "
        f"after all, celerynb.attach({task_id!r}) follows it)"
    )


def message_lost_error(task_id: str) -> MessageLostError:
    """The error of a job whose message the broker lost while it waited in a queue."""
    return MessageLostError(
        f"task {task_id} was waiting in a queue when the broker restarted without "
        "its data (no persistence): its message is gone and it will not run; "
        "submit it again"
    )


def redelivery_loop_error(task_id: str, runs: Sequence[tuple[str, int]]) -> WorkerLostError:
    """The error of a job re-queued after each of its ``runs`` but the last lost its
    worker, stopped (as dask's KilledWorker) instead of killing workers forever."""
    where = ", ".join(f"{host} pid {pid}" for host, pid in runs[:-1])
    return WorkerLostError(
        f"task {task_id} lost its worker {len(runs) - 1} times ({where}) and was "
        "re-queued each time; stopped and revoked so it cannot kill more workers"
    )
