"""Worker side: which exceptions are a shipped call's own failure.

Every ``Exception``, and a ``BaseException`` its code raises too (``SystemExit``,
``KeyboardInterrupt``, ``GeneratorExit``, a user's subclass): each fails that call, or
that item of a chunk, signed, and may be retried. Not the ``SystemExit`` of billiard's
terminate handler (a revoke with ``terminate=True``), nor Celery's own
``WorkerShutdown``/``WorkerTerminate`` (raised inside the task by a solo pool's
shutdown): those are the worker's, and its main process writes the outcome.

An ``Exception`` stays the call's even once the terminate handler has fired: billiard
leaves that flag set in a process that lives on (a call that swallowed the
``SystemExit``), and every later call's error would then go unsigned, its job waiting
for ever (seen: a kernel waited on a plain ValueError).
"""

from __future__ import annotations

from celery.exceptions import WorkerShutdown, WorkerTerminate


def is_the_calls_own(exc: BaseException) -> bool:
    """Whether ``exc`` is the call's failure, not the worker stopping the task."""
    if isinstance(exc, Exception):
        return True
    if isinstance(exc, WorkerShutdown | WorkerTerminate):
        return False
    return _terminate_handler_fired() is False  # unknown (an older billiard): the worker's


def _terminate_handler_fired() -> bool | None:
    try:
        from billiard.common import terminate_handler_fired
    except ImportError:
        return None
    return bool(terminate_handler_fired())
