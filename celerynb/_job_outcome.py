"""Kernel side: what a task's final state holds for its Job — its outcome (for a
shipped call, only one its worker signed for this task), the run its worker signed,
and a big result read from the data store."""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from typing import Any

from celery import states

from ._byref import unpack
from ._datastore import Progress
from ._errors import ShippedTaskError, UntrustedResultError
from ._job_states import plain_error, short_repr
from ._payload import loads
from ._remote_errors import exception_from_info
from ._scatter import resolving
from ._signing import Opened, is_envelope, open_envelope
from ._sources import UNDECODABLE

log = logging.getLogger("celerynb._job")  # its lines are the Job's


class Unverified(Exception):
    """A final state that does not carry a valid signature for a shipped job."""


def read_outcome(
    state: str,
    meta: dict[str, Any],
    *,
    task_id: str,
    shipped: bool | None,
    session: Any,
    code: Any = None,
) -> tuple[str, Any]:
    """``("value", v)``, ``("error", e)`` or ``("cancel", None)`` for a final state
    (``("fetch", opened)`` for a big result, to be read with ``fetch_outcome``).

    For a shipped job (or an attached one whose entry claims to be signed) only
    an outcome signed for this task counts: anything else raises ``Unverified``.
    A signed entry that cannot be opened (a version mismatch) is the job's error.
    ``session`` gives the secret and the data stores; ``code`` is the shipped
    callable, to restore source lines in its traceback.
    """
    result = meta.get("result")
    if meta.get(UNDECODABLE) and shipped is True:  # garbage can be written by anyone
        raise Unverified(f"an entry that cannot be decoded ({result})")
    signed = shipped is True or (
        shipped is None and (is_envelope(result) or isinstance(result, ShippedTaskError))
    )
    if not signed:
        if state == states.REVOKED:
            return ("cancel", None)
        if state == states.SUCCESS:
            return ("value", result)
        return ("error", plain_error(result, meta.get("traceback")))
    secret = session.secret
    try:
        if state == states.SUCCESS:
            opened = open_envelope(result, secret=secret, purpose="result", task_id=task_id)
            if opened.ref is not None:  # big: read from the data store, off this thread
                return ("fetch", opened)
            with resolving(secret, session.store_for):
                return ("value", loads(opened.segments))
        opened = open_error(result, secret=secret, task_id=task_id)
        if state == states.REVOKED:
            return ("cancel", None)
        return ("error", exception_from_info(opened.segments[0], code))
    except UntrustedResultError as exc:
        what = short_repr(getattr(result, "summary", None) or str(result))
        raise Unverified(f"an unsigned {state} ({what}: {exc})") from None
    except Exception as exc:  # verified, but cannot be opened here
        return ("error", exc)


def open_error(result: Any, *, secret: bytes, task_id: str) -> Opened:
    """The error envelope ``result`` carries, opened: signed for this task by its
    worker (raises ``UntrustedResultError`` otherwise)."""
    envelope = result.envelope if isinstance(result, ShippedTaskError) else None
    return open_envelope(envelope, secret=secret, purpose="error", task_id=task_id)


def has_signed_error(meta: dict[str, Any], *, session: Any, task_id: str) -> bool:
    """Whether ``meta`` carries an error its worker signed for this task."""
    try:
        open_error(meta.get("result"), secret=session.secret, task_id=task_id)
    except Exception:
        return False
    return True


def open_run(run: dict[str, Any], *, secret: bytes, task_id: str) -> tuple[str, int]:
    """(hostname, pid) of the run a worker signed for this task (raises otherwise)."""
    opened = open_envelope(run, secret=secret, purpose="run", task_id=task_id)
    info = json.loads(opened.segments[0].tobytes())
    return (str(info["hostname"]), int(info["pid"]))


def fetch_outcome(
    reference: Opened,
    *,
    session: Any,
    task_id: str,
    progress: Callable[[int], Progress],
) -> tuple[str, Any]:
    """``("value", v)`` of a big result read from the data store, or ``("error", e)``
    when it is gone, tampered with or unreachable. ``progress(size)``: a callback
    showing the transfer of ``size`` bytes."""
    ref = reference.ref or {}
    try:
        opened = unpack(
            reference,
            secret=session.secret,
            purpose="result",
            task_id=task_id,
            store_for=session.store_for,
            progress=progress(int(ref["size"])),
        )
        with resolving(session.secret, session.store_for):
            outcome: tuple[str, Any] = ("value", loads(opened.segments))
        del opened
    except Exception as exc:  # gone, tampered, unreachable: the job says which
        outcome = ("error", exc)
    return outcome


def remove_fetched(reference: Opened, *, session: Any, task_id: str) -> None:
    """Remove a big result from the data store once read, whether it opened or not
    (tampered data never will); it expires if it cannot be."""
    ref = reference.ref or {}
    store = session.store_for(ref["store"]) if isinstance(ref.get("store"), str) else None
    if store is not None:
        try:
            store.delete([ref["key"]])
        except Exception as exc:  # it expires anyway
            log.debug("celerynb: could not remove the result of %s: %s", task_id, exc)
