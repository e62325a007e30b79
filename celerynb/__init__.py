"""celerynb: live, non-blocking progress in Jupyter for work run on Celery workers.

Worker side: ``tqdm`` and ``report`` report a task's progress.
Notebook side: ``connect``, ``submit``/``apply_async``/``submit_cell`` and ``Job``;
``jobs``, ``workers`` and ``cancel``; ``LocalCluster`` for a local Redis and workers;
``%load_ext celerynb`` for the magics.
"""

from ._cell import CellResult
from ._cluster import LocalCluster, RedisServerNotFoundError
from ._commands import cancel, jobs, submit_cell, workers
from ._connect import ConnectionSettingsError, connect
from ._errors import (
    CelerynbError,
    NotConnectedError,
    PayloadRefusedError,
    RemoteError,
    SerializationError,
    UndecodableResultError,
    UntrustedResultError,
)
from ._group import ItemCounts, JobGroup
from ._job import Job
from ._liveness import WorkerLostError
from ._many import as_completed, attach, map, wait
from ._registry import UnknownJobError
from ._reporting import report, tqdm
from ._schema import LOST, PROGRESS, REQUEUED, UNKNOWN, BarSnapshot, ProgressSnapshot
from ._session import (
    BrokerUnreachableError,
    ConnectionClosedError,
    Session,
    UnknownTaskError,
    apply_async,
    current_session,
    submit,
)
from ._tables import JobTable, WorkerTable
from ._workers import WorkerInfo

__version__ = "0.1.0"


def load_ipython_extension(ipython: object) -> None:
    """``%load_ext celerynb``: register the ``%celery_*`` magics."""
    from ._magics import load_ipython_extension as load

    load(ipython)


__all__ = [
    "PROGRESS",
    "BarSnapshot",
    "BrokerUnreachableError",
    "CelerynbError",
    "CellResult",
    "ConnectionClosedError",
    "ConnectionSettingsError",
    "ItemCounts",
    "Job",
    "JobGroup",
    "JobTable",
    "LOST",
    "LocalCluster",
    "NotConnectedError",
    "PayloadRefusedError",
    "ProgressSnapshot",
    "REQUEUED",
    "RedisServerNotFoundError",
    "RemoteError",
    "SerializationError",
    "UNKNOWN",
    "UndecodableResultError",
    "Session",
    "UnknownJobError",
    "UnknownTaskError",
    "UntrustedResultError",
    "WorkerInfo",
    "WorkerLostError",
    "WorkerTable",
    "apply_async",
    "as_completed",
    "attach",
    "cancel",
    "connect",
    "current_session",
    "jobs",
    "load_ipython_extension",
    "map",
    "report",
    "submit",
    "submit_cell",
    "tqdm",
    "wait",
    "workers",
]
