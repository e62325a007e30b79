"""Every exception celerynb raises on purpose, in one place (no heavy imports).

They print as ``celerynb.X`` (``__init__`` sets their ``__module__``)::

    Exception
     ├── CelerynbError                         every error celerynb raises on purpose
     │    ├── NotConnectedError                no connection yet, or it was closed
     │    ├── ConnectionSettingsError (ValueError)   a URL or setting Celery cannot use
     │    ├── BrokerUnreachableError (ConnectionError)   the broker did not answer
     │    ├── ConnectionClosedError            the session watching a job was closed
     │    ├── UnknownTaskError (LookupError)   no online worker registered that task name
     │    ├── UnknownJobError (LookupError)    no job of this kernel has that id
     │    ├── SerializationError (TypeError)   a call, argument or result cannot be sent
     │    ├── MissingSecretError               no CELERYNB_SECRET to sign shipped calls
     │    ├── PayloadRefusedError              a signed payload failed verification
     │    │    ├── UntrustedResultError        ... a result or error from the backend
     │    │    └── VersionMismatchError        ... pickled by another Python/cloudpickle
     │    ├── UndecodableResultError           a backend entry cannot be decoded
     │    ├── DataStoreError (OSError)         big data could not be stored or read back
     │    │    └── DataUnavailableError        ... it expired or was removed
     │    ├── RemoteError                      a worker's exception whose class is not here
     │    ├── WorkerLostError (billiard.exceptions.WorkerLostError)
     │    │                                    the whole worker running a job is gone
     │    ├── MessageLostError                 the broker lost a queued task's message
     │    ├── RedisServerNotFoundError (FileNotFoundError)   no redis-server for LocalCluster
     │    └── ClusterStartError (RuntimeError) a process of a LocalCluster did not start
     ├── RemoteTraceback                       a worker's traceback text, as ``__cause__``
     └── ShippedTaskError                      carries a signed exception (worker side)

``celerynb.WorkerLostError`` extends billiard's ``WorkerLostError``, the one Celery
raises when a *pool process* dies (its FAILURE re-raises that class): catch
``billiard.exceptions.WorkerLostError`` to catch both a lost pool process and a lost
worker; catch ``celerynb.WorkerLostError`` for the worker that went silent as a whole.
"""

from __future__ import annotations

from billiard.exceptions import WorkerLostError as _PoolProcessLostError


def one_line(text: str) -> str:
    """``text`` with every run of whitespace, newlines included, as one space: error
    messages built from user input (a URL) or a library's text stay one line."""
    return " ".join(text.split())


class CelerynbError(Exception):
    """Base class of every error celerynb raises on purpose."""


class NotConnectedError(CelerynbError):
    """A call needs a Celery connection and none was made yet."""


class ConnectionSettingsError(CelerynbError, ValueError):
    """A broker or result backend URL (or setting) that Celery cannot use."""


class BrokerUnreachableError(CelerynbError, ConnectionError):
    """The broker did not answer."""


class BackendUnreachableError(CelerynbError, ConnectionError):
    """The result backend did not answer when the session connected."""


class ConnectionClosedError(CelerynbError):
    """The session watching a job was closed before the job finished."""


class UnknownTaskError(CelerynbError, LookupError):
    """No online worker registered a task of that name."""


class UnknownJobError(CelerynbError, LookupError):
    """No job of this kernel matches an id (or id prefix), or several do."""


class SerializationError(CelerynbError, TypeError):
    """A callable, an argument or a result cannot be serialized."""


class MissingSecretError(CelerynbError):
    """No shared secret is configured for signing shipped callables."""


class PayloadRefusedError(CelerynbError):
    """A signed payload failed verification; it was NOT unpickled."""


class UntrustedResultError(PayloadRefusedError):
    """A result in the backend is not signed by a worker holding the shared secret."""


class VersionMismatchError(PayloadRefusedError):
    """A verified payload was pickled by another Python or cloudpickle version."""


class UndecodableResultError(CelerynbError):
    """A result backend entry could not be decoded with the configured serializer."""


class DataStoreError(CelerynbError, OSError):
    """Big data (an argument, a result, a scattered object) could not be put in the data
    store or read back: the store is unreachable, full, or there is none."""


class DataUnavailableError(DataStoreError):
    """Data a reference points to is gone from the data store: it expired, was removed
    (collected, released) or was never completely written."""


class ResultReleasedError(CelerynbError, RuntimeError):
    """A finished job's result was let go of once the code that ran it had it (a joblib
    batch's, for one): the kernel's job list keeps the job, not its data."""


class RemoteError(CelerynbError):
    """A remote exception whose own class could not be rebuilt in this process."""


class WorkerLostError(CelerynbError, _PoolProcessLostError):
    """The worker running a job stopped sending heartbeats and answers no ping:
    it was killed or cut off."""


class MemoryLimitError(CelerynbError, MemoryError):
    """A task went over its worker process's memory limit (``LocalCluster(memory_limit=)``)."""


class MessageLostError(CelerynbError):
    """The broker lost a queued task's message (it restarted without persistence):
    the task will not run."""


class RedisServerNotFoundError(CelerynbError, FileNotFoundError):
    """No redis-server binary on PATH or in an installed Python package."""


class ClusterStartError(CelerynbError, RuntimeError):
    """A process of the LocalCluster did not come up."""


class RemoteTraceback(Exception):
    """Carries the traceback text of an exception raised on a worker.

    Attached as ``__cause__`` of the re-raised exception, as
    ``concurrent.futures.ProcessPoolExecutor`` does, so the remote frames print
    under "The above exception was the direct cause of ...".
    """

    def __init__(self, tb: str) -> None:
        super().__init__(tb)
        self.tb = tb

    def __str__(self) -> str:
        return f'\n"""\n{self.tb.rstrip()}\n"""'


class ShippedTaskError(Exception):
    """Raised on a worker when a shipped callable fails.

    ``args`` are ``(summary, envelope)``: a one-line summary that Flower and worker
    logs show, and the signed envelope holding the pickled exception and its
    traceback, which only a kernel holding the secret opens.
    """

    def __init__(self, summary: str = "", envelope: dict | None = None) -> None:
        super().__init__(summary, envelope)
        self.summary = summary
        self.envelope = envelope

    def __str__(self) -> str:
        return self.summary


def message_of(exc: BaseException) -> str:
    """``str(exc)``, or a stand-in when its ``__str__`` raises: a worker still signs
    the failure (else its job would wait for ever), a display still shows it."""
    try:
        return str(exc)
    except BaseException as why:  # noqa: BLE001 (a __str__ raising KeyboardInterrupt too)
        return f"<str() of {type(exc).__qualname__} failed: {type(why).__name__}>"
