"""celerynb: live, non-blocking progress in Jupyter for work run on Celery workers.

Worker side: ``tqdm`` and ``report`` report a task's progress; ``capture_output`` sends
its output.
Notebook side: ``connect``, ``submit``/``apply_async``/``submit_cell`` and ``Job``;
``Executor`` (a ``concurrent.futures.Executor``); joblib's backend ``"celerynb"``;
``map``, ``attach``, ``wait``, ``as_completed`` and ``JobGroup``; ``jobs``, ``workers``,
``cancel`` and ``dashboard``; ``LocalCluster`` for a local Redis and workers; ``%load_ext celerynb``
for the magics. Exceptions: see ``celerynb._errors`` for the hierarchy.
"""

from ._capture import capture_output
from ._cell import CellResult
from ._cluster import LocalCluster
from ._commands import cancel, jobs, submit_cell, workers
from ._connect import connect
from ._dashboard import Dashboard, dashboard
from ._display import display_job as _display_job  # noqa: F401 - sets how jobs are shown
from ._errors import (
    BackendUnreachableError,
    BrokerUnreachableError,
    CelerynbError,
    ClusterStartError,
    ConnectionClosedError,
    ConnectionSettingsError,
    DataStoreError,
    DataUnavailableError,
    MemoryLimitError,
    MessageLostError,
    MissingSecretError,
    NotConnectedError,
    PayloadRefusedError,
    RedisServerNotFoundError,
    RemoteError,
    RemoteTraceback,
    ResultReleasedError,
    SerializationError,
    UndecodableResultError,
    UnknownJobError,
    UnknownTaskError,
    UntrustedResultError,
    VersionMismatchError,
    WorkerLostError,
)
from ._executor import Executor
from ._group import ItemCounts, JobGroup
from ._job import Job
from ._many import as_completed, attach, map, wait
from ._output_log import OutputTail
from ._reporting import report, tqdm
from ._scatter import Scattered
from ._schema import LOST, PROGRESS, REQUEUED, UNKNOWN, BarSnapshot, ProgressSnapshot
from ._session import Session, apply_async, current_session, scatter, submit
from ._tables import JobTable, WorkerTable
from ._workers import WorkerInfo

__version__ = "0.1.0"

try:  # joblib's Parallel on Celery workers: parallel_config(backend="celerynb")
    from ._joblib import register as _register_joblib
except ImportError:  # joblib is not installed: no backend to register
    pass
else:
    _register_joblib()


def load_ipython_extension(ipython: object) -> None:
    """``%load_ext celerynb``: register the ``%celery_*`` magics."""
    from ._magics import load_ipython_extension as load

    load(ipython)


__all__ = [
    "LOST",
    "PROGRESS",
    "REQUEUED",
    "UNKNOWN",
    "BarSnapshot",
    "BackendUnreachableError",
    "BrokerUnreachableError",
    "CelerynbError",
    "CellResult",
    "ClusterStartError",
    "ConnectionClosedError",
    "ConnectionSettingsError",
    "Dashboard",
    "DataStoreError",
    "DataUnavailableError",
    "Executor",
    "ItemCounts",
    "Job",
    "JobGroup",
    "JobTable",
    "LocalCluster",
    "MessageLostError",
    "MemoryLimitError",
    "MissingSecretError",
    "NotConnectedError",
    "OutputTail",
    "PayloadRefusedError",
    "ProgressSnapshot",
    "RedisServerNotFoundError",
    "RemoteError",
    "ResultReleasedError",
    "RemoteTraceback",
    "SerializationError",
    "Scattered",
    "Session",
    "UndecodableResultError",
    "UnknownJobError",
    "UnknownTaskError",
    "UntrustedResultError",
    "VersionMismatchError",
    "WorkerInfo",
    "WorkerLostError",
    "WorkerTable",
    "apply_async",
    "as_completed",
    "attach",
    "cancel",
    "capture_output",
    "connect",
    "current_session",
    "dashboard",
    "jobs",
    "load_ipython_extension",
    "map",
    "report",
    "scatter",
    "submit",
    "submit_cell",
    "tqdm",
    "wait",
    "workers",
]

# Public classes print as ``celerynb.X`` (as httpx does), wherever they are defined.
for _name in __all__:
    _value = globals()[_name]
    if isinstance(_value, type) and _value.__module__.startswith("celerynb."):
        _value.__module__ = __name__
del _name, _value
