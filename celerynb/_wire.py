"""The broker message of a shipped call: binary, not base64 in JSON (both sides).

celerynb registers a kombu serializer of its own content type. Its body is
Celery's ``(args, kwargs, embed)`` with one argument, a signed frame, carried as
raw bytes after a small JSON part (kwargs and the canvas options). Decoding never
unpickles anything: the frame is verified by the task before its pickle is read.
Only ``celerynb.run_shipped`` is sent this way; registered tasks keep their own
serializer (JSON by default).
"""

from __future__ import annotations

import struct
from typing import Any

from kombu.serialization import register
from kombu.utils.json import dumps as json_dumps
from kombu.utils.json import loads as json_loads

SERIALIZER = "celerynb"
CONTENT_TYPE = "application/x-celerynb"
_MAGIC = b"CNBM"
_HEAD = len(_MAGIC) + 4


def encode_call(body: Any) -> bytes:
    """Celery's message body ``([frame], {}, embed)`` as bytes."""
    args, kwargs, embed = body
    if len(args) != 1 or not isinstance(args[0], bytes | bytearray | memoryview):
        raise TypeError("the celerynb serializer carries one signed frame, nothing else")
    meta = json_dumps([kwargs, embed]).encode()
    return b"".join((_MAGIC, struct.pack(">I", len(meta)), meta, args[0]))


def decode_call(data: Any) -> list[Any]:
    """``[[frame], kwargs, embed]`` from a message body; the frame stays bytes (a worker
    answers ``inspect active`` with its tasks' arguments as JSON, which takes bytes)."""
    raw = data.encode("latin-1") if isinstance(data, str) else bytes(data)
    if raw[: len(_MAGIC)] != _MAGIC or len(raw) < _HEAD:
        raise ValueError("not a celerynb message body")
    (length,) = struct.unpack(">I", raw[len(_MAGIC) : _HEAD])
    kwargs, embed = json_loads(raw[_HEAD : _HEAD + length])
    return [[raw[_HEAD + length :]], kwargs, embed]


def accept_shipped_calls(app: Any) -> None:
    """Make ``app``'s workers accept celerynb's content type (next to their own)."""

    def add(**_: Any) -> None:
        accept = list(app.conf.accept_content or ["json"])
        if CONTENT_TYPE not in accept and SERIALIZER not in accept:
            app.conf.accept_content = [*accept, CONTENT_TYPE]

    if app.configured:
        add()
    else:
        app.on_after_configure.connect(add, sender=app, weak=False)


register(
    SERIALIZER,
    encode_call,
    decode_call,
    content_type=CONTENT_TYPE,
    content_encoding="binary",
)
