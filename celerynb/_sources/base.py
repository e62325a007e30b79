"""The interface every state source implements, and what they share (pure)."""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any, Protocol

from celery import states

from .._errors import UndecodableResultError

log = logging.getLogger(__name__)

Update = tuple[str, dict[str, Any]]  # (task_id, decoded meta)
UNDECODABLE = "celerynb_undecodable"  # set in the meta standing for an unreadable entry


def decoded(task_id: str, decode: Callable[[], Any]) -> dict[str, Any]:
    """``decode()``'s meta, or, when the entry cannot be decoded (garbage, a pickle,
    a state that is not a string...), a FAILURE meta for this one task saying so:
    one bad entry must not stop the others (nor be re-read forever)."""
    try:
        meta = decode()
        if not isinstance(meta, dict):
            raise TypeError(f"decoded to {type(meta).__name__}, not a dict")
        hash(meta.get("status"))
        return meta
    except Exception as exc:
        log.warning("celerynb: cannot decode the stored state of task %s: %s", task_id, exc)
        error = UndecodableResultError(
            f"the result backend holds an entry for task {task_id} that cannot be decoded "
            f"with the configured serializer ({type(exc).__name__}); refused"
        )
        return {"status": states.FAILURE, "result": error, "traceback": None, UNDECODABLE: True}


class StateSource(Protocol):
    """Where a watcher's task states come from. Used from the watcher thread only,
    except ``wake()``.

    ``sees_every_update``: every state written reaches the jobs (push); when False,
    only the latest state at each read does (a polled backend), so a SUCCESS whose
    last progress writes were missed completes the bar.
    ``stores_states``: the backend keeps states that any process can read later
    (Redis, a database); False for ``rpc://``, whose states are messages to the
    sender alone (nothing to re-attach to, no REVOKED to write for others).
    """

    sees_every_update: bool
    stores_states: bool

    def watch(self, task_ids: list[str]) -> list[Update]:
        """Start following tasks; return their current states (catch-up)."""

    def unwatch(self, task_ids: list[str]) -> None:
        """Stop following tasks."""

    def poll(self, timeout: float) -> list[Update]:
        """Wait up to ``timeout`` seconds for updates; return them (maybe none)."""

    def resync(self) -> list[Update]:
        """After a lost connection: connect again and return every current state."""

    def wake(self) -> None:
        """Make a pending ``poll`` return soon. Safe from any thread."""

    def close(self) -> None: ...


class CoveringSource(StateSource, Protocol):
    """A source that can cover the task ids it makes from the moment it is connected
    (one pattern subscription: see ``redis_push``), so that a call sent then needs no
    catch-up of its own. Used from the watcher thread only, except ``new_task_id``
    and ``covering``."""

    def new_task_id(self) -> str:
        """A task id for a call about to be sent, one this source can cover."""

    def covering(self, task_id: str) -> int | None:
        """A token for the connection that covers ``task_id`` now (None: none does)."""

    def stamp(self, task_id: str) -> int | None:
        """``covering``, for a call about to be sent (the source expects it)."""

    def adopt(self, task_ids: list[str]) -> None:
        """Follow calls stamped with the ``covering`` token that is still current."""
