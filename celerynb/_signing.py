"""Signed envelopes for pickled payloads (pure; stdlib + cloudpickle version only).

An envelope is a JSON-safe dict. Its HMAC-SHA256 covers every field, so the
purpose ("call", "result", "error"), the task id it belongs to, the nonce, the
time it was sealed and the versions cannot be swapped. Verification happens
before anything is unpickled, in steps a worker needs apart:

- ``verify_envelope``: signature, purpose and task id (was it signed for this?);
- ``check_age``: a call sealed too long ago is refused (a replay of an old capture);
- ``check_versions``: the Python and cloudpickle versions the pickle needs;
- ``envelope_data``: the bytes.

``open_envelope`` does them all but the age check (results are read when they come).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import os
import sys
import time
from typing import Any

import cloudpickle

from ._errors import PayloadRefusedError, UntrustedResultError, VersionMismatchError

ENVELOPE_VERSION = 1
PURPOSES = ("call", "result", "error", "run")
CLOCK_SKEW = 300.0  # seconds a kernel's clock may run ahead of a worker's


def runtime_versions() -> dict[str, str]:
    """The versions a pickle depends on: Python major.minor and cloudpickle."""
    return {
        "python": f"{sys.version_info.major}.{sys.version_info.minor}",
        "cloudpickle": cloudpickle.__version__,
    }


def seal(
    data: bytes, *, secret: bytes, purpose: str, task_id: str, now: float | None = None
) -> dict[str, Any]:
    """Wrap ``data`` in an envelope signed with ``secret`` for ``task_id``."""
    if purpose not in PURPOSES:
        raise ValueError(f"unknown envelope purpose {purpose!r}")
    envelope: dict[str, Any] = {
        "celerynb": ENVELOPE_VERSION,
        "purpose": purpose,
        "task_id": task_id,
        "nonce": os.urandom(12).hex(),
        "ts": round(time.time() if now is None else now, 3),
        **runtime_versions(),
        "data": base64.b64encode(data).decode("ascii"),
    }
    envelope["mac"] = _mac(secret, envelope)
    return envelope


def is_envelope(value: Any) -> bool:
    """Whether ``value`` looks like a celerynb envelope (it may still be forged)."""
    return isinstance(value, dict) and value.get("celerynb") == ENVELOPE_VERSION and "mac" in value


def verify_envelope(envelope: Any, *, secret: bytes, purpose: str, task_id: str) -> dict[str, Any]:
    """The envelope's signed fields, once its signature, purpose and task id check out.

    Refuses a missing or wrong signature, and an envelope signed for another
    purpose or task id (a payload replayed under a new task).
    """
    error = _refusal(purpose)
    if not isinstance(envelope, dict) or "mac" not in envelope:
        raise error(f"refused an unsigned {purpose} payload for task {task_id}")
    body = {k: v for k, v in envelope.items() if k != "mac"}
    try:
        expected = _mac(secret, body)
    except (TypeError, ValueError) as exc:
        raise error(f"refused a malformed {purpose} payload for task {task_id}") from exc
    if not hmac.compare_digest(str(envelope["mac"]), expected):
        raise error(
            f"refused a {purpose} payload for task {task_id}: bad signature "
            "(tampered, or signed with another CELERYNB_SECRET)"
        )
    if body.get("purpose") != purpose or body.get("task_id") != task_id:
        raise error(
            f"refused a {purpose} payload for task {task_id}: it was signed as "
            f"{body.get('purpose')!r} for task {body.get('task_id')!r} (replayed?)"
        )
    return body


def check_age(body: dict[str, Any], max_age: float, now: float | None = None) -> None:
    """Refuse a verified envelope sealed more than ``max_age`` seconds ago (or in the
    future, beyond ``CLOCK_SKEW``)."""
    now = time.time() if now is None else now
    sealed_at = body.get("ts")
    if not isinstance(sealed_at, int | float) or isinstance(sealed_at, bool):
        raise PayloadRefusedError(f"refused a payload for task {body.get('task_id')}: no time")
    age = now - sealed_at
    if age > max_age or age < -CLOCK_SKEW:
        raise PayloadRefusedError(
            f"refused a {body.get('purpose')} payload for task {body.get('task_id')}: sealed "
            f"{age:.0f}s ago, outside the {max_age:.0f}s a call is accepted "
            "(a replayed capture, a clock far off, or a queue that waited too long: "
            "see CELERYNB_MAX_CALL_AGE)"
        )


def check_versions(body: dict[str, Any]) -> None:
    """Refuse a payload pickled with another Python or cloudpickle than this process's."""
    ours = runtime_versions()
    theirs = {k: body.get(k) for k in ours}
    if theirs != ours:
        raise VersionMismatchError(
            f"version mismatch for task {body.get('task_id')}: the payload was pickled with "
            f"Python {theirs['python']} / cloudpickle {theirs['cloudpickle']}, this "
            f"process has Python {ours['python']} / cloudpickle {ours['cloudpickle']}; "
            "install the same versions on the kernel and the workers"
        )


def envelope_data(body: dict[str, Any]) -> bytes:
    """The payload bytes of a verified envelope."""
    try:
        return base64.b64decode(body["data"], validate=True)
    except (KeyError, TypeError, ValueError) as exc:
        purpose = str(body.get("purpose"))
        raise _refusal(purpose)(
            f"refused a truncated {purpose} payload for task {body.get('task_id')}"
        ) from exc


def open_envelope(envelope: Any, *, secret: bytes, purpose: str, task_id: str) -> bytes:
    """Verify an envelope and return its bytes; raise before anything is unpickled."""
    body = verify_envelope(envelope, secret=secret, purpose=purpose, task_id=task_id)
    check_versions(body)
    return envelope_data(body)


def _refusal(purpose: str) -> type[PayloadRefusedError]:
    return PayloadRefusedError if purpose == "call" else UntrustedResultError


def _mac(secret: bytes, body: dict[str, Any]) -> str:
    canonical = json.dumps(body, sort_keys=True, separators=(",", ":")).encode()
    return hmac.new(secret, canonical, hashlib.sha256).hexdigest()
