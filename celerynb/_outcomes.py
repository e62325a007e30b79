"""Worker side: every final state of a shipped call is signed, whichever process writes it.

The kernel accepts a shipped job's SUCCESS, FAILURE or REVOKED only when it is
signed for that task (anyone who can write to the result backend could forge an
unsigned one). The pool process signs what the call returned or raised
(``_runner``). The worker's main process writes the rest: a pool process that
died (``WorkerLostError``), a hard time limit, a revoke. ``ShippedTaskBackend``
stands in for the task's result backend and signs those, but only for a run it
can vouch for (``ShippedRequest`` tells it which request it acts for):

- the call's envelope verifies for that task id, and
- with a shared claim store, the claim of that call is held by the very pool
  process that ran it (a replayed copy with a forged time limit header gets no
  signature), and the claim is then closed, so no copy runs after it.

It also keeps a replayed copy from writing STARTED (only the run holding the
claim announces itself), and removes a forged SUCCESS that would otherwise stop
Celery's Redis backend from storing the real result.
"""

from __future__ import annotations

import logging
import socket
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import timezone
from typing import Any

from celery import Task, states
from celery.exceptions import TaskRevokedError
from celery.worker.request import Request

from ._claims import (
    DONE,
    Closing,
    Holder,
    claim_key,
    run_attempt,
    signed_run,
    store_for,
    take_closing,
)
from ._config import max_call_age, secret_from_env
from ._errors import ShippedTaskError
from ._remote_errors import sealed_error
from ._schema import PUBLISH_LIMIT, STORED_MARKER
from ._signing import CLOCK_SKEW, verify_envelope

log = logging.getLogger(__name__)

_acting = threading.local()  # .request: the Request the main process acts for


@contextmanager
def _thread_setting(local: threading.local, name: str, value: Any) -> Iterator[None]:
    """``local.name = value`` within it (this thread's), restored after."""
    previous = getattr(local, name, None)
    setattr(local, name, value)
    try:
        yield
    finally:
        setattr(local, name, previous)


def _acting_for(request: Any) -> Any:
    return _thread_setting(_acting, "request", request)


# .small: publish small; .known: {task id: stored state}; .closing: a claim to close
_this_thread = threading.local()


@contextmanager
def publishing_small(backend: Any) -> Iterator[None]:
    """Within it, a Redis backend stores a big state but publishes ``STORED_MARKER``
    instead of it (from this thread): Redis drops a subscriber whose pub/sub output
    buffer passes 32 MB (a 100 MB result knocked every bar of the kernel out), and the
    kernel reads the key when it sees the marker."""
    from celery.backends.redis import RedisBackend

    if not isinstance(backend, RedisBackend):
        yield
        return
    _install_hooks(backend)
    with _thread_setting(_this_thread, "small", True):
        yield


def _install_hooks(backend: Any) -> None:
    """Wrap the backend's read-before-write and its store-and-publish once, so that what
    ``publishing_small`` and ``knowing_state`` set for this thread applies, and only to
    this thread (a backend may be shared by threads: ``result_backend_thread_safe``)."""
    if getattr(backend, "_celerynb_hooks", False):
        return
    read, store_and_publish = backend._get_task_meta_for, getattr(backend, "_set", None)

    def read_unless_known(task_id: Any) -> Any:
        known = getattr(_this_thread, "known", None)
        meta = known.get(task_id) if known else None
        return meta if meta is not None else read(task_id)

    def store_and_publish_small(key: Any, value: Any, expires: Any = None) -> None:
        assert store_and_publish is not None  # installed only over a Redis backend's
        small = getattr(_this_thread, "small", False) and len(value) > PUBLISH_LIMIT
        closing: Closing | None = getattr(_this_thread, "closing", None)
        if not small and closing is None:
            return store_and_publish(key, value, expires)
        expires = backend.expires if expires is None else expires
        with backend.client.pipeline() as pipe:  # MULTI ... EXEC: all of it or nothing
            pipe.set(key, value, ex=expires or None)
            pipe.publish(key, STORED_MARKER if small else value)
            if closing is not None:
                closing.close_in(pipe)
            pipe.execute()
        if closing is not None:
            closing.closed_by_write()
        return None

    backend._get_task_meta_for = read_unless_known
    if store_and_publish is not None:
        backend._set = store_and_publish_small
    backend._celerynb_hooks = True


# The state Celery's guard is told the task is in while the run holding its claim writes
# STARTED, PROGRESS or its SUCCESS. Every write of a key-value backend first reads the
# task's state, to never overwrite a SUCCESS (a duplicate run's late write); a shipped
# call runs once (its claim), and only that run writes these, from the same thread. A
# SUCCESS there before them is forged: overwriting it is right. One round trip saved
# per write.
RUNNING = {"status": states.STARTED, "result": None}


@contextmanager
def closing_in_the_same_write(backend: Any, closing: Closing) -> Iterator[None]:
    """Within it, this thread's store of a state to a Redis backend also closes
    ``closing``'s claim, in one MULTI/EXEC (see ``closes_with_a_write``)."""
    if not closes_with_a_write(backend, closing):
        yield
        return
    _install_hooks(backend)
    with _thread_setting(_this_thread, "closing", closing):
        yield


def closes_with_a_write(backend: Any, closing: Closing) -> bool:
    """Whether a state stored to ``backend`` can close ``closing``'s claim in the same
    transaction: the backend is Redis and the claims live on it."""
    from celery.backends.redis import RedisBackend

    return isinstance(backend, RedisBackend) and closing.lives_on(backend.client)


@contextmanager
def knowing_state(backend: Any, task_id: str, meta: dict[str, Any] | None) -> Iterator[None]:
    """Within it, a key-value backend takes ``task_id``'s stored state to be ``meta``
    when this thread stores a state for it, instead of reading it again (None: it reads)."""
    from celery.backends.base import BaseKeyValueStoreBackend

    if meta is None or not isinstance(backend, BaseKeyValueStoreBackend):
        yield
        return
    _install_hooks(backend)
    known = getattr(_this_thread, "known", None)
    if known is None:
        known = _this_thread.known = {}
    previous = known.get(task_id)
    known[task_id] = meta
    try:
        yield
    finally:
        if previous is None:
            known.pop(task_id, None)
        else:
            known[task_id] = previous


def expiry_instant(text: str) -> Any:
    """An ISO time as the worker's request holds its expiry (aware: UTC when naive)."""
    from celery.utils.time import maybe_iso8601, maybe_make_aware

    return maybe_make_aware(maybe_iso8601(text), timezone.utc)


class ColdShutdownRequest(Request):
    """A request whose cancellation by a cold shutdown (``LocalCluster.restart``, Ctrl-C
    twice) stores no RETRY when its message was acknowledged at start: Celery stores
    RETRY ("cancelled by Celery"), which says the task runs again, and it does not (no
    message is left). Nothing is stored; the kernel finds the job lost with its worker.
    A late-acknowledged task's message is sent again: its RETRY stays."""

    def _announce_cancelled(self, emit_retry: bool = True) -> None:
        super()._announce_cancelled(emit_retry=emit_retry and bool(self.task.acks_late))


class ColdShutdownTask(Task):
    """The default task class of ``celerynb.worker``'s app (see ``ColdShutdownRequest``)."""

    Request = ColdShutdownRequest


class ShippedRequest(ColdShutdownRequest):
    """The worker's request for ``celerynb.run_shipped``: says which request the main
    process writes a final state for, so ``ShippedTaskBackend`` can sign it. (An
    unsigned RETRY of a cold shutdown would be ignored by the kernel with a note that
    reads as tampering: see ``ColdShutdownRequest``.)"""

    def on_failure(self, exc_info: Any, send_failed_event: bool = True, return_ok: bool = False):
        with _acting_for(self):
            return super().on_failure(exc_info, send_failed_event, return_ok)

    def on_timeout(self, soft: bool, timeout: float) -> None:
        with _acting_for(self):
            return super().on_timeout(soft, timeout)

    def _announce_revoked(self, reason: str, terminated: bool, signum: Any, expired: bool):
        # An expiry comes from the message's (unsigned) expires header: vouched for only
        # when the signed call asked for that very expiry.
        vouched = not expired or self._expiry_was_signed()
        with _acting_for(self if vouched else None):
            return super()._announce_revoked(reason, terminated, signum, expired)

    def _expiry_was_signed(self) -> bool:
        """Whether the message's expiry is the one signed in the call's envelope."""
        try:
            key = self.task.celerynb_key or secret_from_env()
            body = verify_envelope((self.args or [None])[0], secret=key, purpose="call",
                                   task_id=self.id)  # fmt: skip
            signed = body.get("expires")
            return isinstance(signed, str) and expiry_instant(signed) == self.expires
        except Exception as exc:  # unsigned, forged, or no secret: not vouched for
            log.debug("celerynb: not vouching for the expiry of %s: %s", self.id, exc)
            return False


class ShippedTaskBackend:
    """The result backend as ``celerynb.run_shipped`` sees it (see the module docstring)."""

    def __init__(self, app: Any, secret: Any) -> None:
        self._app = app
        self._secret = secret  # a callable returning the key, or raising without one
        self.max_call_age = max_call_age()  # the "done" mark is kept as long as calls live

    def __getattr__(self, name: str) -> Any:
        return getattr(self._app.backend, name)

    @property
    def backend(self) -> Any:
        return self._app.backend

    def store_result(self, task_id: str, result: Any, state: str, *args: Any, **kwargs: Any):
        running = signed_run(task_id) is not None
        if state == states.STARTED and not running:
            return result  # Celery's own STARTED comes before the claim; the run writes it
        if state in states.READY_STATES:
            with knowing_state(self.backend, task_id, self._drop_forged_success(task_id)):
                return self.backend.store_result(task_id, result, state, *args, **kwargs)
        if running:  # STARTED and PROGRESS of the run holding the claim: see RUNNING
            with knowing_state(self.backend, task_id, RUNNING):
                return self.backend.store_result(task_id, result, state, *args, **kwargs)
        return self.backend.store_result(task_id, result, state, *args, **kwargs)

    def mark_as_done(self, task_id: str, result: Any, *args: Any, **kwargs: Any) -> Any:
        closing = take_closing(task_id)
        if closing is None:
            stored = self._drop_forged_success(task_id)
            with publishing_small(self.backend), knowing_state(self.backend, task_id, stored):
                return self.backend.mark_as_done(task_id, result, *args, **kwargs)
        # The run holding the claim returned: its outcome is the only true one (a SUCCESS
        # stored before it is forged: overwritten unread), and its write closes the claim.
        # Where it cannot (claims elsewhere), the claim closes first: a process killed
        # between the two must leave it closed, or a replay would run the call again.
        if not closes_with_a_write(self.backend, closing):
            closing.close()
        try:
            with (
                publishing_small(self.backend),
                knowing_state(self.backend, task_id, RUNNING),
                closing_in_the_same_write(self.backend, closing),
            ):
                return self.backend.mark_as_done(task_id, result, *args, **kwargs)
        finally:
            closing.close()  # where the write could not carry it (or failed)

    def process_cleanup(self) -> None:
        """Celery calls it after every task, whatever happened (its tracer's ``finally``):
        a run's claim that no SUCCESS write closed closes here (Celery wrote a FAILURE
        after the call returned: a link that could not be sent, say, or it stored none)."""
        closing = take_closing()
        try:
            if closing is not None:
                closing.close()
        finally:
            self.backend.process_cleanup()

    def mark_as_failure(self, task_id: str, exc: BaseException, *args: Any, **kwargs: Any):
        if not (isinstance(exc, ShippedTaskError) and exc.envelope):
            exc = self._vouched(task_id, exc) or exc
        stored = self._drop_forged_success(task_id)
        with publishing_small(self.backend), knowing_state(self.backend, task_id, stored):
            return self.backend.mark_as_failure(task_id, exc, *args, **kwargs)

    def mark_as_revoked(
        self,
        task_id: str,
        reason: str = "",
        request: Any = None,
        store_result: bool = True,
        state: str = states.REVOKED,
    ) -> Any:
        signed = self._vouched(task_id, TaskRevokedError(reason), revoked=True)
        if signed is None:
            return self.backend.mark_as_revoked(task_id, reason, request, store_result, state)
        stored = self._drop_forged_success(task_id)
        if store_result:
            with knowing_state(self.backend, task_id, stored):
                self.backend.store_result(task_id, signed, state, traceback=None, request=request)
        return None

    # -- signing for the main process -----------------------------------------------
    def _vouched(
        self, task_id: str, exc: BaseException, *, revoked: bool = False
    ) -> ShippedTaskError | None:
        """``exc`` signed for ``task_id`` when the current request is vouched for."""
        request = getattr(_acting, "request", None)
        if request is None or request.id != task_id:
            return None
        try:
            key = self._secret()
            args = request.args or [None]
            body = verify_envelope(args[0], secret=key, purpose="call", task_id=task_id)
            claims = store_for(self._app)
            claim = claim_key(task_id, str(body.get("nonce")), run_attempt(request))
            if not revoked and not self._ran_here(claims, claim, request, key):
                return None
            claims.finish(claim, keep=self.max_call_age + CLOCK_SKEW)
        except Exception as exc_info:
            log.debug("celerynb: not signing the outcome of %s: %s", task_id, exc_info)
            return None
        return sealed_error(exc, secret=key, task_id=task_id)

    @staticmethod
    def _ran_here(claims: Any, claim: str, request: Any, secret: bytes) -> bool:
        pid = getattr(request, "worker_pid", None)
        if pid is None:
            return False
        if not claims.shared:
            return True  # the claim lives in the pool process: only the pid can be checked
        value = claims.current(claim)
        holder = Holder.parse(value, claim, secret)  # signed: no forged holder passes
        return (
            value != DONE
            and holder is not None
            and holder.host == socket.gethostname()
            and holder.pid == pid
        )

    def _drop_forged_success(self, task_id: str) -> dict[str, Any] | None:
        """A SUCCESS already stored for a call being finished now is forged (or stale):
        Celery's Redis backend would keep it and drop the real outcome; an entry it
        cannot decode would make storing fail. Forget either.

        Returns the task's stored state as Celery's guard reads it (PENDING once a
        forged entry is gone), None when it could not be read: storing reads it again.
        """
        from celery.backends.base import BaseKeyValueStoreBackend

        backend = self.backend
        if not isinstance(backend, BaseKeyValueStoreBackend):  # only these keep a SUCCESS
            return None
        try:
            meta = backend.get_task_meta(task_id, cache=False)
            if meta.get("status") != states.SUCCESS:
                return meta
            verify_envelope(
                meta.get("result"), secret=self._secret(), purpose="result", task_id=task_id
            )
            return meta
        except Exception as exc:  # forged, or garbage Celery cannot even read back
            log.warning("celerynb: removed a forged entry stored for task %s: %s", task_id, exc)
        try:
            backend.forget(task_id)
        except Exception as exc:
            log.debug("celerynb: could not forget %s: %s", task_id, exc)
            return None
        return {"status": states.PENDING, "result": None}


class ShippedTask(Task):
    """Base of ``celerynb.run_shipped``: its requests and its result backend sign."""

    Request = ShippedRequest
    celerynb_key: bytes | None = None  # the shared secret, else $CELERYNB_SECRET
    # The worker's "succeeded in 0.1s: ..." log line: the signed frame is base64 of no
    # use to a reader, and ran to hundreds of characters per task.
    resultrepr_maxsize = 40
    _signing_backend: ShippedTaskBackend | None = None

    @property
    def backend(self) -> Any:
        if self._signing_backend is None:
            key = self.celerynb_key
            self._signing_backend = ShippedTaskBackend(
                self.app, lambda: key if key is not None else secret_from_env()
            )
        return self._signing_backend

    @backend.setter
    def backend(self, value: Any) -> None:  # Celery may set it; the app's backend is used
        pass
