"""Worker side: run a shipped (signed, pickled) callable and sign its outcome."""

from __future__ import annotations

import traceback
from typing import Any

import cloudpickle

from ._config import secret_from_env
from ._errors import SerializationError, ShippedTaskError
from ._signing import open_envelope, seal


def run_shipped(task: Any, envelope: Any, secret: bytes | None = None) -> dict[str, Any]:
    """Body of the generic ``celerynb.run_shipped`` task.

    Verifies ``envelope`` BEFORE unpickling (refusal raises PayloadRefusedError),
    calls the function, and returns its result sealed for the kernel. A failure
    raises ShippedTaskError carrying the sealed exception and traceback.
    """
    key = secret if secret is not None else secret_from_env()
    task_id = task.request.id
    fn, args, kwargs = cloudpickle.loads(
        open_envelope(envelope, secret=key, purpose="call", task_id=task_id)
    )
    try:
        value = fn(*args, **kwargs)
    except Exception as exc:
        sealed = seal(pickle_exception(exc), secret=key, purpose="error", task_id=task_id)
        raise ShippedTaskError(f"{type(exc).__name__}: {exc}", sealed) from exc
    try:
        data = cloudpickle.dumps(value)
    except Exception as exc:
        raise SerializationError(
            f"the result of {getattr(fn, '__name__', fn)!r} ({type(value).__name__}) "
            f"cannot be pickled: {exc}"
        ) from None
    return seal(data, secret=key, purpose="result", task_id=task_id)


def pickle_exception(exc: BaseException) -> bytes:
    """The exception, its type, message and traceback text, pickled for the kernel."""
    # Skip run_shipped's own frame: the user's code starts one frame down.
    tb_start = exc.__traceback__.tb_next if exc.__traceback__ else None
    tb = "".join(traceback.format_exception(type(exc), exc, tb_start))
    try:
        pickled_exc: bytes | None = cloudpickle.dumps(exc)
        cloudpickle.loads(pickled_exc)  # some exceptions pickle but do not unpickle
    except Exception:
        pickled_exc = None
    return cloudpickle.dumps(
        {"exc": pickled_exc, "type": type(exc).__qualname__, "message": str(exc), "tb": tb}
    )
