"""Worker side: run a shipped (signed, pickled) callable once and sign its outcome."""

from __future__ import annotations

import json
import logging
import os
from typing import Any

import cloudpickle
from celery import states
from celery.exceptions import Ignore

from ._claims import (
    Holder,
    LeaseKeeper,
    Refused,
    claim_key,
    claim_run,
    holding_claim,
    store_for,
)
from ._config import max_call_age, secret_from_env
from ._errors import SerializationError, VersionMismatchError
from ._remote_errors import sealed_error
from ._schema import RUN_KEY
from ._signing import (
    CLOCK_SKEW,
    check_age,
    check_versions,
    envelope_data,
    seal,
    verify_envelope,
)

log = logging.getLogger(__name__)


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
    body = verify_envelope(envelope, secret=key, purpose="call", task_id=task_id)
    age_limit = max_call_age()
    check_age(body, age_limit)
    claims = store_for(task.app)
    claim = claim_key(task_id, str(body.get("nonce")))
    me = Holder.this_process()
    try:
        claim_run(claims, claim, me, secret=key)
    except Refused as why:
        log.warning("celerynb: refused to run task %s: %s", task_id, why)
        raise Ignore() from None  # no state written: the real run's states stand
    try:
        run = _signed_run(task, key)
        with LeaseKeeper(claims, claim, me, key), holding_claim(task_id, run):
            _announce_started(task, run)
            return _call(body, key, task_id)
    finally:
        try:
            claims.finish(claim, keep=age_limit + CLOCK_SKEW)
        except Exception as exc:
            log.warning("celerynb: could not close the claim of task %s: %s", task_id, exc)


def _call(body: dict[str, Any], key: bytes, task_id: str) -> dict[str, Any]:
    try:
        check_versions(body)
    except VersionMismatchError as exc:  # a verified call: say so, signed
        raise sealed_error(exc, secret=key, task_id=task_id, summary=str(exc)) from None
    fn, args, kwargs = cloudpickle.loads(envelope_data(body))
    try:
        value = fn(*args, **kwargs)
    except Exception as exc:
        raise sealed_error(exc, secret=key, task_id=task_id) from exc
    try:
        data = cloudpickle.dumps(value)
    except Exception as exc:  # signed like any error of the call, or the job waits forever
        error = SerializationError(
            f"the result of {getattr(fn, '__name__', fn)!r} ({type(value).__name__}) "
            f"cannot be pickled: {exc}"
        )
        raise sealed_error(error, secret=key, task_id=task_id, summary=str(error)) from None
    return seal(data, secret=key, purpose="result", task_id=task_id)


def _signed_run(task: Any, key: bytes) -> dict[str, Any]:
    """This run's worker and process, signed for the kernel's liveness judgement."""
    run = {"hostname": task.request.hostname, "pid": os.getpid()}
    return seal(json.dumps(run).encode(), secret=key, purpose="run", task_id=task.request.id)


def _announce_started(task: Any, run: dict[str, Any]) -> None:
    """STARTED, written by the run that holds the claim (Celery's own is held back),
    with the run signed."""
    meta = {"pid": os.getpid(), "hostname": task.request.hostname, RUN_KEY: run}
    try:
        task.backend.store_result(task.request.id, meta, states.STARTED, request=task.request)
    except Exception as exc:
        log.warning("celerynb: could not store STARTED for %s: %s", task.request.id, exc)
