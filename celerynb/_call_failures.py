"""Worker side: which exceptions are a shipped call's own failure.

Every ``Exception``, and a ``BaseException`` its code raises too (``SystemExit``,
``KeyboardInterrupt``, ``GeneratorExit``, a user's subclass): each fails that call, or
that item of a chunk, signed, and may be retried. Only the one billiard's terminate
handler raises, when the worker stops the task (a revoke with ``terminate=True``), is
the worker's: its main process writes that outcome.
"""

from __future__ import annotations


def is_the_calls_own(exc: BaseException) -> bool:
    """Whether ``exc`` is the call's failure, not the worker stopping the task."""
    return isinstance(exc, Exception) or not stopped_by_the_worker()


def stopped_by_the_worker() -> bool:
    """Whether billiard's terminate handler raised (revoke with terminate=True)."""
    try:
        from billiard.common import terminate_handler_fired
    except ImportError:  # an older billiard: treat every BaseException as the worker's
        return True
    return bool(terminate_handler_fired())
