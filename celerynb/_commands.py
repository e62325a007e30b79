"""Kernel side: the commands behind the magics — cells, job and worker tables, cancel."""

from __future__ import annotations

import itertools
import uuid
from collections.abc import Iterable, Mapping, MutableMapping
from typing import Any

import cloudpickle

from ._assignments import set_latest, will_set
from ._call_options import CallOptions
from ._cell import CellResult, cell_inputs, first_unpicklable, parse_output_names, run_cell
from ._cluster import LocalCluster
from ._errors import SerializationError
from ._job import Job
from ._many import reattach_previous
from ._registry import registry
from ._scatter import collecting
from ._session import current_session
from ._tables import JobTable, WorkerTable
from ._validation import check_task_ids
from ._workers import INSPECT_TIMEOUT, pool_memory

_cell_numbers = itertools.count(1)


def jobs(previous: bool = False) -> JobTable:
    """This kernel's jobs, oldest first, as a list that shows as a table.

    ``previous=True``: the jobs this notebook submitted from earlier kernels (before
    a restart) on the same backend, in flight or finished since; they are watched
    again, live, and join this kernel's jobs.
    """
    if previous:
        table = JobTable(reattach_previous(current_session()))
        table.empty_text = "no jobs of this notebook from earlier kernels on this backend"
        return table
    return JobTable(registry.all())


def workers(timeout: float = INSPECT_TIMEOUT) -> WorkerTable:
    """The online workers of the current connection (waits ``timeout`` s for answers),
    with the memory their pool processes use (workers on this machine) and, for a
    LocalCluster, its state (restarts, memory limit)."""
    session = current_session()
    online = session.workers(timeout=timeout)
    owner = session.owner
    note = f"LocalCluster: {owner.summary()}" if isinstance(owner, LocalCluster) else ""
    return WorkerTable(online, memory=pool_memory(online), note=note)


def cancel(*ids: str) -> list[str]:
    """Cancel jobs of this kernel by id or unique id prefix; return the ids cancelled.

    A full task id that is not a job of this kernel is revoked on the workers.
    Jobs that already finished are left as they are.
    """
    check_task_ids(list(ids))
    found: list[Job] = []
    revoked: list[str] = []
    for task_id in ids:
        try:
            found.append(registry.find(task_id))
        except LookupError:
            if not _is_task_id(task_id):
                raise
            current_session().revoke(task_id)
            revoked.append(task_id)
    return [job.id for job in found if job.cancel()] + revoked


def submit_cell(
    source: str,
    namespace: MutableMapping[str, Any],
    *,
    outputs: str | Iterable[str] | None = None,
    queue: str | None = None,
    hidden: Mapping[str, Any] | None = None,
    label: str | None = None,
    call_options: CallOptions | None = None,
) -> Job:
    """Run a cell's code on a worker; return its Job at once.

    The names the code reads from ``namespace`` (and does not bind first) are
    shipped with it; ``outputs`` (``"a, b"`` or a list) are assigned back into
    ``namespace`` when the job succeeds. The job's result is a ``CellResult``
    (``values``, ``stdout``, ``stderr``). ``hidden`` names are the shell's own
    (not shipped); ``label`` names the job in displays; ``call_options``: Celery's
    calling options (countdown, time limits...).
    """
    names = parse_output_names(outputs)
    label = label or f"cell {next(_cell_numbers)}"
    filename = f"<{label}>"
    inputs = cell_inputs(source, filename, namespace, hidden or {})
    with collecting() as carried:  # scattered references among the variables
        blob = _pickle_inputs(inputs)
    first_line = next((line.strip() for line in source.splitlines() if line.strip()), "")
    job = current_session().submit(
        run_cell,
        (source, filename, blob, names),
        queue=queue,
        call_options=call_options,
        name=label,
        call_repr=f"{label}: {first_line}"[:60],  # shown, never stored (see _store)
        holding=carried,
    )
    if names:
        will_set(namespace, names, job)
        job.add_done_callback(lambda done: _assign_outputs(done, namespace, names))
    return job


def assign_on_success(job: Job, namespace: MutableMapping[str, Any], name: str) -> None:
    """Set ``namespace[name]`` to the job's result when (and only if) it succeeds, and
    no job submitted later is to set it."""

    def assign(done: Any) -> None:
        if not done.cancelled() and done.exception(timeout=0) is None:
            set_latest(namespace, done, {name: done.result(timeout=0)})

    will_set(namespace, [name], job)
    job.add_done_callback(assign)


def _assign_outputs(job: Any, namespace: MutableMapping[str, Any], names: tuple[str, ...]) -> None:
    if job.cancelled() or job.exception(timeout=0) is not None:
        return
    result = job.result(timeout=0)
    if isinstance(result, CellResult):  # the names asked for, nothing else the worker sent
        set_latest(namespace, job, {n: result.values[n] for n in names if n in result.values})


def _pickle_inputs(inputs: dict[str, Any]) -> bytes:
    try:
        return cloudpickle.dumps(inputs)
    except Exception:
        found = first_unpicklable(inputs)
        if found is None:
            raise
        name, exc = found
        raise SerializationError(
            f"cannot ship notebook variable {name!r} ({type(inputs[name]).__name__}) to the "
            f"worker: {type(exc).__name__}: {exc}"
        ) from None


def _is_task_id(text: str) -> bool:
    try:
        uuid.UUID(text)
    except ValueError:
        return False
    return True
