"""An exception raised on a worker, carried to the kernel: pickled there, rebuilt here.

``pickle_exception`` runs on the worker (inside a signed envelope it travels
safely); ``exception_from_info`` rebuilds it in the kernel with the remote
traceback, source lines restored, as its ``__cause__``.
"""

from __future__ import annotations

import traceback
from typing import Any

import cloudpickle

from ._errors import RemoteError, RemoteTraceback, ShippedTaskError, message_of
from ._signing import as_json, seal
from ._tracebacks import restore_sources, source_map


def pickle_exception(exc: BaseException) -> bytes:
    """The exception, its type, message and traceback text, pickled for the kernel."""
    # Skip the frame that caught it: the user's code starts one frame down.
    tb_start = exc.__traceback__.tb_next if exc.__traceback__ else None
    tb = "".join(traceback.format_exception(type(exc), exc, tb_start))
    try:
        pickled_exc: bytes | None = cloudpickle.dumps(exc)
        cloudpickle.loads(pickled_exc)  # some exceptions pickle but do not unpickle
    except Exception:
        pickled_exc = None
    return cloudpickle.dumps(
        {"exc": pickled_exc, "type": type(exc).__qualname__, "message": message_of(exc), "tb": tb}
    )


def sealed_error(
    exc: BaseException, *, secret: bytes, task_id: str, summary: str | None = None
) -> ShippedTaskError:
    """``exc`` as the outcome of shipped task ``task_id``: pickled, signed, and carried
    by a ShippedTaskError whose one-line ``summary`` logs and Flower show."""
    sealed = as_json(seal(pickle_exception(exc), secret=secret, purpose="error", task_id=task_id))
    line = f"{type(exc).__name__}: {message_of(exc)}" if summary is None else summary
    return ShippedTaskError(line, sealed)


def exception_from_info(data: bytes | memoryview, code: Any = None) -> BaseException:
    """Rebuild a worker's exception from its pickled info, with the remote traceback
    (source lines restored from ``code``) as its cause."""
    info = cloudpickle.loads(data)
    rebuilt: BaseException | None = None
    if info.get("exc") is not None:
        try:
            rebuilt = cloudpickle.loads(info["exc"])
        except Exception:
            rebuilt = None
    if not isinstance(rebuilt, BaseException):
        rebuilt = RemoteError(f"{info.get('type')}: {info.get('message')}")
    tb_text = restore_sources(info.get("tb", ""), source_map(code))
    rebuilt.__cause__ = RemoteTraceback(tb_text)
    return rebuilt
