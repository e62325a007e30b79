"""celerynb: live, non-blocking progress in Jupyter for work run on Celery workers.

Worker side: ``tqdm`` and ``report`` report a task's progress.
Notebook side: ``connect``, ``submit`` and ``Job``; ``LocalCluster`` for a local
Redis and workers.
"""

from ._cluster import LocalCluster, RedisServerNotFoundError
from ._errors import (
    CelerynbError,
    NotConnectedError,
    PayloadRefusedError,
    RemoteError,
    SerializationError,
    UntrustedResultError,
)
from ._job import Job
from ._reporting import report, tqdm
from ._schema import PROGRESS, BarSnapshot, ProgressSnapshot
from ._session import BrokerUnreachableError, Session, connect, current_session, submit

__version__ = "0.1.0"

__all__ = [
    "PROGRESS",
    "BarSnapshot",
    "BrokerUnreachableError",
    "CelerynbError",
    "Job",
    "LocalCluster",
    "NotConnectedError",
    "PayloadRefusedError",
    "ProgressSnapshot",
    "RedisServerNotFoundError",
    "RemoteError",
    "SerializationError",
    "Session",
    "UntrustedResultError",
    "connect",
    "current_session",
    "report",
    "submit",
    "tqdm",
]
