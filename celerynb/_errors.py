"""Exceptions shared by the kernel side and the worker side (no heavy imports)."""

from __future__ import annotations


def one_line(text: str) -> str:
    """``text`` with every run of whitespace, newlines included, as one space: error
    messages built from user input (a URL) or a library's text stay one line."""
    return " ".join(text.split())


class CelerynbError(Exception):
    """Base class of every error celerynb raises on purpose."""


class NotConnectedError(CelerynbError):
    """A call needs a Celery connection and none was made yet."""


class SerializationError(CelerynbError, TypeError):
    """A callable, an argument or a result cannot be serialized."""


class PayloadRefusedError(CelerynbError):
    """A signed payload failed verification; it was NOT unpickled."""


class UntrustedResultError(PayloadRefusedError):
    """A result in the backend is not signed by a worker holding the shared secret."""


class UndecodableResultError(CelerynbError):
    """A result backend entry could not be decoded with the configured serializer."""


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


class RemoteError(CelerynbError):
    """A remote exception whose own class could not be rebuilt in this process."""


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
