"""Worker side: run a shipped (signed, pickled) callable once and sign its outcome."""

from __future__ import annotations

import json
import logging
import os
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime, timezone
from typing import Any

from celery import states
from celery.exceptions import Ignore

from ._byref import DEFAULT_TTL, inline_limit, pack, stored_ref, unpack
from ._call_failures import is_the_calls_own
from ._capture import capture_output, output_of
from ._cell import CellResult
from ._claims import (
    Closing,
    Holder,
    LeaseKeeper,
    Refused,
    claim_key,
    claim_run,
    close_with_outcome,
    grant_retry,
    holding_claim,
    run_attempt,
    store_for,
)
from ._config import max_call_age, secret_from_env
from ._datastore import REDIS_SPEC, DataStore, Progress, data_store, no_store_line
from ._errors import CelerynbError, SerializationError, message_of
from ._memory import beyond_the_limit
from ._outcomes import expiry_instant
from ._payload import dumps, loads, size_of
from ._remote_errors import sealed_error
from ._reporting import last_bars, progress_for
from ._scatter import resolving
from ._schema import FINAL_BARS_KEY, FINAL_OUTPUT_KEY, RUN_KEY, bar_meta
from ._signing import CLOCK_SKEW, Opened, as_json, check_age, check_versions, seal, verify_envelope
from ._wire import SERIALIZER

log = logging.getLogger(__name__)

TRANSFER_BAR = -3  # a transfer's key among the task's bars (see _chunks.CHUNK_BAR)
MAX_INLINE_WITHOUT_STORE = 32 * 2**20  # a frame's bytes in a message when no store exists


def run_shipped(task: Any, envelope: Any, secret: bytes | None = None) -> dict[str, Any]:
    """Body of the generic ``celerynb.run_shipped`` task.

    Verifies ``envelope`` BEFORE unpickling (signature, task id, age: a refusal
    raises PayloadRefusedError), claims the call so that it runs once (a replayed
    or duplicate delivery is dropped without writing any state), calls the
    function, and returns its result sealed for the kernel. A failure raises
    ShippedTaskError carrying the sealed exception and traceback.
    """
    key = secret if secret is not None else secret_from_env()
    task_id = task.request.id
    if isinstance(envelope, bytes):  # an inline call (small): arrays in it arrive writable
        envelope = bytearray(envelope)
    body = verify_envelope(envelope, secret=key, purpose="call", task_id=task_id)
    age_limit = max_call_age()
    check_age(body, age_limit)
    attempt, allowed = run_attempt(task.request), signed_retries(body)
    if attempt > allowed:  # the retries header is not signed; the count allowed is
        log.warning(
            "celerynb: refused to run task %s: retry %s of a call that allows %s",
            task_id,
            attempt,
            allowed,
        )
        raise Ignore()
    if _expired_under_another_header(body, task.request):
        log.warning(
            "celerynb: refused to run task %s: its signed expiry %s has passed and its "
            "message carries another (a replay with a changed expires header)",
            task_id,
            body.get("expires"),
        )
        raise Ignore()
    claims = store_for(task.app)
    nonce = str(body.get("nonce"))
    claim = claim_key(task_id, nonce, attempt)
    me = Holder.this_process()
    try:
        claim_run(claims, claim, me, secret=key, retry=attempt > 0)
    except Refused as why:
        log.warning("celerynb: refused to run task %s: %s", task_id, why)
        raise Ignore() from None  # no state written: the real run's states stand
    lease = LeaseKeeper(claims, claim, me, key).hold()
    closing = Closing(task_id, claims, claim, keep=age_limit + CLOCK_SKEW, lease=lease)
    try:
        run = _signed_run(task, key)
        with holding_claim(task_id, run):
            _announce_started(task, run)
            value = _call(task, body, key)
        # Closed by the SUCCESS write (ShippedTaskBackend), else once the task is over
        # whatever Celery wrote (its process_cleanup); renewed until then.
        close_with_outcome(closing)
        return value
    except BaseException:
        closing.close()  # a later run is opened only by a grant (see _call): nothing else
        raise


def _call(task: Any, body: Opened, key: bytes) -> dict[str, Any]:
    """Read the call (following its reference), run it, and seal what it gives."""
    task_id = task.request.id

    def stores(spec: str) -> DataStore | None:
        return data_store(task.app, spec)

    spec = body.get("store") if isinstance(body.get("store"), str) else REDIS_SPEC
    ttl = body.get("ttl") if isinstance(body.get("ttl"), int) else DEFAULT_TTL
    try:
        check_versions(body)
        with _transfer(task, "receiving the call", stored_ref(body)) as progress:
            call = unpack(
                body,
                secret=key,
                purpose="call",
                task_id=task_id,
                store_for=stores,
                progress=progress,
            )
        with resolving(key, stores):
            fn, args, kwargs = loads(call.segments)
        del call
    except Exception as exc:  # a verified call that cannot be opened: say so, signed
        # (unsigned, the kernel could not tell it from a forged failure: it would wait on)
        raise sealed_error(exc, secret=key, task_id=task_id, summary=unopened(exc)) from None
    try:
        # Its output goes to the notebook live; the last lines before it returns too.
        with resolving(key, stores), capture_output():  # a cell unpickles its inputs itself
            value = fn(*args, **kwargs)
    except BaseException as exc:  # SystemExit, KeyboardInterrupt...: the call's own, signed
        if not is_the_calls_own(exc):
            raise  # a revoke's SIGTERM: the worker's main process writes (and signs) it
        error = beyond_the_limit(exc) if isinstance(exc, Exception) else exc
        failure = sealed_error(error, secret=key, task_id=task_id)
        attempt = run_attempt(task.request)
        if attempt < signed_retries(body):
            later = claim_key(task_id, str(body.get("nonce")), attempt + 1)
            grant_retry(store_for(task.app), later, key, keep=max_call_age() + CLOCK_SKEW)
            _retry(task, failure, body)  # raises Celery's Retry: the same job runs again
        raise failure from exc
    del args, kwargs
    try:
        segments = dumps(value)
    except Exception as exc:  # signed like any error of the call, or the job waits forever
        error = SerializationError(f"{_what_cannot_be_pickled(fn, value)} cannot be pickled: {exc}")
        raise sealed_error(error, secret=key, task_id=task_id, summary=str(error)) from None
    store = stores(spec)
    limit = body.get("inline") if isinstance(body.get("inline"), int) else inline_limit()
    size = size_of(segments)
    try:
        with _transfer(
            task, "sending the result", {"size": size} if size > limit else None
        ) as progress:
            sealed = pack(
                segments,
                secret=key,
                purpose="result",
                task_id=task_id,
                store=store,
                limit=limit if store is not None else max(limit, MAX_INLINE_WITHOUT_STORE),
                ttl=ttl,
                progress=progress,
                no_store=lambda: no_store_line(task.app),
            )
    except Exception as exc:  # signed, as above: e.g. the data store went away
        summary = _failure_line(exc, "cannot send the result")
        raise sealed_error(exc, secret=key, task_id=task_id, summary=summary) from None
    envelope = as_json(sealed)
    # Its bars as they end (none left: a transfer's bar, dropped, is not the task's).
    envelope[FINAL_BARS_KEY] = last_bars(task_id)
    output = output_of(task_id)
    recent = output.recent() if output is not None else None
    if recent is not None:
        envelope[FINAL_OUTPUT_KEY] = recent
    return envelope


def unopened(exc: Exception) -> str:
    """One line for a verified call this worker cannot open; a module missing here gets
    a hint (it is imported by name: the worker needs it too)."""
    line = _failure_line(exc, "cannot open the call on this worker")
    if isinstance(exc, ImportError | AttributeError):
        hint = (
            "the worker needs the modules the call uses, in the same versions; a module of "
            "your own can travel with the call: cloudpickle.register_pickle_by_value(module)"
        )
        line = f"{line} ({hint})"
        if hasattr(exc, "add_note"):  # Python 3.11+: shown under the re-raised exception
            exc.add_note(hint)
    return line


def _failure_line(exc: Exception, doing: str) -> str:
    """The one-line summary of a failure around the call: a CelerynbError's own line,
    else what was being done and the exception."""
    if isinstance(exc, CelerynbError):
        return str(exc)
    return f"{doing}: {type(exc).__name__}: {message_of(exc)}"


def signed_retries(body: Opened) -> int:
    """How many times the (verified) call may run again after it fails."""
    retries = body.get("retries")
    return retries if isinstance(retries, int) and retries > 0 else 0


def _expired_under_another_header(body: Opened, request: Any) -> bool:
    """Whether the call's signed expiry has passed while its message's ``expires`` header
    is another one or none. (Under the signed one, Celery's own check decides: it drops
    an expired message before it runs and the worker signs that.)"""
    signed = body.get("expires")
    if not isinstance(signed, str):
        return False
    expires = expiry_instant(signed)  # the kernel's isoformat(), signed
    try:
        if request.expires is not None and expiry_instant(request.expires) == expires:
            return False
    except Exception:  # an unreadable header is not the signed one
        pass
    return bool(datetime.now(timezone.utc) >= expires)


def _retry(task: Any, error: BaseException, body: Opened) -> None:
    """Send the call again under the same task id (Celery's ``retry``: state RETRY,
    then the next run), in its own content type, after the signed delay."""
    delay = body.get("retry_delay")
    task.retry(
        exc=error,
        countdown=delay if isinstance(delay, int | float) and delay > 0 else 0,  # not 180 s
        max_retries=signed_retries(body),
        serializer=SERIALIZER,
    )


@contextmanager
def _transfer(task: Any, desc: str, ref: dict[str, Any] | None) -> Iterator[Progress | None]:
    """A bar on the task for moving a big frame (``ref`` names its size), dropped once
    the frame has moved; nothing for a frame that travels inline."""
    size = ref.get("size") if ref else None
    if not isinstance(size, int):
        yield None
        return
    progress = progress_for(task)
    started = time.monotonic()

    def moved(done: int) -> None:
        elapsed = max(time.monotonic() - started, 1e-6)
        meta = bar_meta(done, size, desc, unit="B", rate=done / elapsed, elapsed=elapsed)
        progress.update_bar(TRANSFER_BAR, meta, force=done >= size)

    try:
        yield moved
    finally:
        progress.drop_bar(TRANSFER_BAR)


def _what_cannot_be_pickled(fn: Any, value: Any) -> str:
    """Names the result that failed to pickle: a cell's variable, else the call's result."""
    if isinstance(value, CellResult):
        name = value.unpicklable_variable()
        if name is not None:
            kind = type(value.values[name]).__name__
            return f"the cell's variable {name!r} ({kind}), asked for with -o,"
    return f"the result of {getattr(fn, '__name__', fn)!r} ({type(value).__name__})"


def _signed_run(task: Any, key: bytes) -> dict[str, Any]:
    """This run's worker and process, signed for the kernel's liveness judgement."""
    run = {"hostname": task.request.hostname, "pid": os.getpid()}
    return as_json(
        seal(json.dumps(run).encode(), secret=key, purpose="run", task_id=task.request.id)
    )


def _announce_started(task: Any, run: dict[str, Any]) -> None:
    """STARTED, written by the run that holds the claim (Celery's own is held back),
    with the run signed."""
    meta = {"pid": os.getpid(), "hostname": task.request.hostname, RUN_KEY: run}
    try:
        task.backend.store_result(task.request.id, meta, states.STARTED, request=task.request)
    except Exception as exc:
        log.warning("celerynb: could not store STARTED for %s: %s", task.request.id, exc)
