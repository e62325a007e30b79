"""Worker side: which exceptions are a shipped call's own failure.

Every ``Exception``, and a ``BaseException`` its code raises too (``SystemExit``,
``KeyboardInterrupt``, ``GeneratorExit``, a user's subclass): each fails that call, or
that item of a chunk, signed, and may be retried. Not so once the worker stops the
task: billiard's terminate handler fired (a revoke with ``terminate=True``, a hard time
limit), after which whatever unwinds is the worker's, even an ``Exception`` a
``finally`` raised on the way; nor Celery's own ``WorkerShutdown``/``WorkerTerminate``
(raised inside the task by a solo pool's shutdown). The worker's main process writes
those outcomes.
"""

from __future__ import annotations

from celery.exceptions import WorkerShutdown, WorkerTerminate


def is_the_calls_own(exc: BaseException) -> bool:
    """Whether ``exc`` is the call's failure, not the worker stopping the task."""
    fired = _terminate_handler_fired()
    if fired is None:  # an older billiard cannot tell: only an Exception is the call's
        return isinstance(exc, Exception)
    return not fired and not isinstance(exc, WorkerShutdown | WorkerTerminate)


def _terminate_handler_fired() -> bool | None:
    try:
        from billiard.common import terminate_handler_fired
    except ImportError:
        return None
    return bool(terminate_handler_fired())
