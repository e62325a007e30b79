"""Signed envelopes for pickled payloads (pure; stdlib + cloudpickle version only).

An envelope is a JSON-safe dict. Its HMAC-SHA256 covers every field, so the
purpose ("call", "result", "error"), the task id it belongs to, the nonce and the
versions cannot be swapped. Verification happens before anything is unpickled.
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

from ._errors import PayloadRefusedError, UntrustedResultError

ENVELOPE_VERSION = 1
PURPOSES = ("call", "result", "error")


def runtime_versions() -> dict[str, str]:
    """The versions a pickle depends on: Python major.minor and cloudpickle."""
    return {
        "python": f"{sys.version_info.major}.{sys.version_info.minor}",
        "cloudpickle": cloudpickle.__version__,
    }


def seal(data: bytes, *, secret: bytes, purpose: str, task_id: str) -> dict[str, Any]:
    """Wrap ``data`` in an envelope signed with ``secret`` for ``task_id``."""
    if purpose not in PURPOSES:
        raise ValueError(f"unknown envelope purpose {purpose!r}")
    envelope: dict[str, Any] = {
        "celerynb": ENVELOPE_VERSION,
        "purpose": purpose,
        "task_id": task_id,
        "nonce": os.urandom(12).hex(),
        "ts": round(time.time(), 3),
        **runtime_versions(),
        "data": base64.b64encode(data).decode("ascii"),
    }
    envelope["mac"] = _mac(secret, envelope)
    return envelope


def is_envelope(value: Any) -> bool:
    """Whether ``value`` looks like a celerynb envelope (it may still be forged)."""
    return isinstance(value, dict) and value.get("celerynb") == ENVELOPE_VERSION and "mac" in value


def open_envelope(envelope: Any, *, secret: bytes, purpose: str, task_id: str) -> bytes:
    """Verify an envelope and return its bytes; raise before anything is unpickled.

    Refuses a missing or wrong signature, another purpose or task id (a payload
    replayed under a new task), and a Python/cloudpickle version that differs
    from this process's.
    """
    error = UntrustedResultError if purpose != "call" else PayloadRefusedError
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
    ours = runtime_versions()
    theirs = {k: body.get(k) for k in ours}
    if theirs != ours:
        raise PayloadRefusedError(
            f"version mismatch for task {task_id}: the payload was pickled with "
            f"Python {theirs['python']} / cloudpickle {theirs['cloudpickle']}, this "
            f"process has Python {ours['python']} / cloudpickle {ours['cloudpickle']}; "
            "install the same versions on the kernel and the workers"
        )
    try:
        return base64.b64decode(body["data"], validate=True)
    except (KeyError, TypeError, ValueError) as exc:
        raise error(f"refused a truncated {purpose} payload for task {task_id}") from exc


def _mac(secret: bytes, body: dict[str, Any]) -> str:
    canonical = json.dumps(body, sort_keys=True, separators=(",", ":")).encode()
    return hmac.new(secret, canonical, hashlib.sha256).hexdigest()
