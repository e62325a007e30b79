"""Signed binary frames for pickled payloads (pure; stdlib, blake3, cloudpickle's version).

A frame is bytes::

    b"CNB3" | HMAC-SHA256 (32) | header length (4, big-endian) | header (JSON)
    | padding to 64 | segment 0 | padding to 64 | segment 1 | ...

The header names the purpose ("call", "result", "error", "run", "data"), the id it
belongs to (a task id, or a scattered object's digest), a nonce, the time it was
sealed, the Python and cloudpickle versions, each segment's size, and optionally a
reference to a frame kept in a data store (``ref``) or the store results go to
(``store``). The HMAC-SHA256 covers the header and the BLAKE3 digest of every
segment, in order, so nothing can be swapped: BLAKE3 (collision resistance as
SHA-256's) hashes 6-8 GB/s on one core where SHA-256 manages 2, and a round trip
hashes its data four times. Segments are a pickle and its out-of-band
buffers (``_payload``): big buffers are signed and written as they are, never copied
into one string, and opened as views of the received bytes or of a data store's
mapped file (aligned, so numpy arrays need no copy).

Verification happens before anything is unpickled, in steps a worker needs apart:

- ``verify_envelope``: signature, purpose and id (was it signed for this?);
- ``check_age``: a call sealed too long ago is refused (a replay of an old capture);
- ``check_versions``: the Python and cloudpickle versions the pickle needs.

``open_envelope`` does them all but the age check (results are read when they come).
Where JSON must carry a frame (Celery's result backend), ``as_json`` wraps it in
``{"celerynb": 3, "frame": base64}``; only small frames travel that way (big ones
are kept in a data store and the JSON carries a small frame referring to them).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import mmap
import os
import struct
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import cloudpickle
from blake3 import blake3

from ._errors import PayloadRefusedError, UntrustedResultError, VersionMismatchError

ENVELOPE_VERSION = 3
MAGIC = b"CNB3"
PURPOSES = ("call", "result", "error", "run", "data")
CLOCK_SKEW = 300.0  # seconds a kernel's clock may run ahead of a worker's
ALIGN = 64  # segments start at multiples of this (numpy needs its itemsize; SIMD likes 64)
MAX_HEADER = 1 << 20  # bytes of header JSON read before the signature is checked
_PREFIX = len(MAGIC) + 32 + 4
_ZEROS = bytes(ALIGN)

Buffer = bytes | bytearray | memoryview | mmap.mmap


def runtime_versions() -> dict[str, str]:
    """The versions a pickle depends on: Python major.minor and cloudpickle."""
    return {
        "python": f"{sys.version_info.major}.{sys.version_info.minor}",
        "cloudpickle": cloudpickle.__version__,
    }


def _padding(size: int) -> int:
    return -size % ALIGN


@dataclass
class Sealed:
    """A signed frame as the pieces to write in order: big buffers are not copied."""

    parts: list[Buffer]
    size: int
    header: dict[str, Any]

    def tobytes(self) -> bytes:
        """The whole frame as one bytes object (for small frames)."""
        return b"".join(self.parts)


@dataclass
class Opened:
    """A verified frame: its signed header and its segments (views of the frame)."""

    header: dict[str, Any]
    segments: list[memoryview] = field(default_factory=list)

    @property
    def ref(self) -> dict[str, Any] | None:
        """Where the real frame is kept, when this one only refers to it."""
        ref = self.header.get("ref")
        return ref if isinstance(ref, dict) else None

    def get(self, key: str, default: Any = None) -> Any:
        return self.header.get(key, default)


def seal(
    data: Buffer | Sequence[Buffer],
    *,
    secret: bytes,
    purpose: str,
    task_id: str,
    now: float | None = None,
    extra: dict[str, Any] | None = None,
    digests: bytes | None = None,
) -> Sealed:
    """Sign ``data`` (one buffer, or several segments) for ``task_id`` as a frame.

    ``extra`` adds signed header fields (``ref``, ``store``); ``digests`` are the
    segments' ``content_digests`` when the caller has them already.
    """
    if purpose not in PURPOSES:
        raise ValueError(f"unknown envelope purpose {purpose!r}")
    segments = (
        [data] if isinstance(data, bytes | bytearray | memoryview | mmap.mmap) else list(data)
    )
    views = [memoryview(s).cast("B") for s in segments]
    header: dict[str, Any] = {
        "celerynb": ENVELOPE_VERSION,
        "purpose": purpose,
        "task_id": task_id,
        "nonce": os.urandom(12).hex(),
        "ts": round(time.time() if now is None else now, 3),
        **runtime_versions(),
        "sizes": [v.nbytes for v in views],
        **(extra or {}),
    }
    header_bytes = json.dumps(header, sort_keys=True, separators=(",", ":")).encode()
    length = struct.pack(">I", len(header_bytes))
    head = MAGIC + _mac(secret, length + header_bytes, views, digests) + length + header_bytes
    parts: list[Buffer] = [head + _ZEROS[: _padding(len(head))]]
    size = len(parts[0])
    for view in views:
        parts.append(view)
        size += view.nbytes
        pad = _padding(view.nbytes)
        if pad:
            parts.append(_ZEROS[:pad])
            size += pad
    return Sealed(parts, size, header)


def content_digests(segments: Sequence[Buffer]) -> bytes:
    """The BLAKE3 digest of every segment, in order: what a frame's HMAC covers."""
    return b"".join(blake3(memoryview(s).cast("B")).digest() for s in segments)


def _mac(
    secret: bytes, head: bytes, segments: Sequence[memoryview], digests: bytes | None
) -> bytes:
    """HMAC-SHA256 of ``head`` and the BLAKE3 digests of the segments."""
    if digests is None:
        digests = content_digests(segments)
    return hmac.new(secret, head + digests, hashlib.sha256).digest()


def is_envelope(value: Any) -> bool:
    """Whether ``value`` looks like a celerynb envelope (it may still be forged)."""
    if isinstance(value, dict):
        return value.get("celerynb") == ENVELOPE_VERSION and isinstance(value.get("frame"), str)
    return isinstance(value, bytes | bytearray | memoryview) and bytes(value[:4]) == MAGIC


def as_json(sealed: Sealed | Buffer) -> dict[str, Any]:
    """A (small) frame as a JSON-safe envelope, for Celery's result backend."""
    raw = sealed.tobytes() if isinstance(sealed, Sealed) else bytes(sealed)
    return {"celerynb": ENVELOPE_VERSION, "frame": base64.b64encode(raw).decode("ascii")}


def verify_envelope(envelope: Any, *, secret: bytes, purpose: str, task_id: str) -> Opened:
    """The frame's signed header and segments, once its signature, purpose and id check out.

    ``envelope`` is a frame (bytes-like) or its JSON form (``as_json``). Refuses a
    missing or wrong signature, and a frame signed for another purpose or id (a
    payload replayed under a new task).
    """
    error = _refusal(purpose)
    frame = _frame_bytes(envelope)
    if frame is None:
        raise error(f"refused an unsigned {purpose} payload for task {task_id}")
    try:
        header_bytes, header, segments = _parse(frame)
    except (ValueError, TypeError, UnicodeDecodeError) as exc:
        raise error(f"refused a malformed {purpose} payload for task {task_id}") from exc
    if isinstance(envelope, mmap.mmap) and segments:
        # A mapped file can change under us: the pickle stream checked must be the one
        # unpickled (its out-of-band buffers are data, never code).
        segments[0] = memoryview(segments[0].tobytes())
    mac = _mac(secret, frame[36:40].tobytes() + header_bytes, segments, None)
    if not hmac.compare_digest(frame[4:36].tobytes(), mac):
        raise error(
            f"refused a {purpose} payload for task {task_id}: bad signature "
            "(tampered, or signed with another CELERYNB_SECRET)"
        )
    if header.get("purpose") != purpose or header.get("task_id") != task_id:
        raise error(
            f"refused a {purpose} payload for task {task_id}: it was signed as "
            f"{header.get('purpose')!r} for task {header.get('task_id')!r} (replayed?)"
        )
    return Opened(header, segments)


def _frame_bytes(envelope: Any) -> memoryview | None:
    if isinstance(envelope, dict):
        if envelope.get("celerynb") != ENVELOPE_VERSION or not isinstance(
            envelope.get("frame"), str
        ):
            return None
        try:
            return memoryview(bytearray(base64.b64decode(envelope["frame"], validate=True)))
        except ValueError:
            return None
    if isinstance(envelope, bytes | bytearray | memoryview | mmap.mmap):
        view = memoryview(envelope).cast("B")
        return view if view[:4].tobytes() == MAGIC else None
    return None


def _parse(frame: memoryview) -> tuple[bytes, dict[str, Any], list[memoryview]]:
    if frame.nbytes < _PREFIX:
        raise ValueError("short frame")
    (length,) = struct.unpack(">I", frame[36:40])
    if length > MAX_HEADER or _PREFIX + length > frame.nbytes:
        raise ValueError("bad header length")
    header_bytes = frame[_PREFIX : _PREFIX + length].tobytes()
    header = json.loads(header_bytes)
    sizes = header.get("sizes") if isinstance(header, dict) else None
    if not isinstance(sizes, list) or not all(
        isinstance(s, int) and not isinstance(s, bool) and s >= 0 for s in sizes
    ):
        raise ValueError("bad sizes")
    offset = _PREFIX + length
    offset += _padding(offset)
    segments = []
    for size in sizes:
        if offset + size > frame.nbytes:
            raise ValueError("truncated")
        segments.append(frame[offset : offset + size])
        offset += size + _padding(size)
    return header_bytes, header, segments


def check_age(body: Opened | dict[str, Any], max_age: float, now: float | None = None) -> None:
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


def check_versions(body: Opened | dict[str, Any]) -> None:
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


def open_envelope(envelope: Any, *, secret: bytes, purpose: str, task_id: str) -> Opened:
    """Verify a frame and its versions; raise before anything is unpickled."""
    opened = verify_envelope(envelope, secret=secret, purpose=purpose, task_id=task_id)
    check_versions(opened)
    return opened


def _refusal(purpose: str) -> type[PayloadRefusedError]:
    return PayloadRefusedError if purpose == "call" else UntrustedResultError
