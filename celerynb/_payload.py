"""Pickling with protocol 5 and out-of-band buffers (both sides; cloudpickle only).

``dumps`` gives a list of segments: the pickle stream, then every large buffer it
refers to (numpy and pandas arrays, and big ``bytes``/``bytearray`` values), as
views of the objects' own memory: nothing is copied into one big string. ``loads``
takes the segments back; arrays are rebuilt as views of the received buffers.
"""

from __future__ import annotations

import io
import pickle
from collections.abc import Sequence
from typing import Any

import cloudpickle

OUT_OF_BAND_MIN = 64 * 1024  # bytes and bytearray values this big travel out of band


SMALL_CONTAINER = 64  # items of a tuple, list or dict whose big bytes values are looked for


class _OutOfBand:
    """Pickles a big ``bytes``/``bytearray`` out of band (the C pickler writes those
    in the stream itself, and never asks ``reducer_override`` about them)."""

    __slots__ = ("value",)

    def __init__(self, value: bytes | bytearray) -> None:
        self.value = value

    def __reduce_ex__(self, protocol: Any) -> Any:
        return type(self.value), (pickle.PickleBuffer(self.value),)


def _big_bytes_out_of_band(obj: Any) -> Any:
    kind = type(obj)
    if kind is bytes or kind is bytearray:
        return _OutOfBand(obj) if len(obj) >= OUT_OF_BAND_MIN else obj
    if kind is tuple or kind is list:
        if len(obj) <= SMALL_CONTAINER and any(type(v) in (bytes, bytearray) for v in obj):
            return kind(_big_bytes_out_of_band(v) for v in obj)
    elif (
        kind is dict
        and len(obj) <= SMALL_CONTAINER
        and any(type(v) in (bytes, bytearray) for v in obj.values())
    ):
        return {k: _big_bytes_out_of_band(v) for k, v in obj.items()}
    return obj


def dumps(obj: Any) -> list[memoryview]:
    """``obj`` pickled: the stream first, then its out-of-band buffers (no copies).

    Buffers of numpy/pandas arrays go out of band, and so do big ``bytes`` values
    when they are the object itself or sit directly in a small tuple, list or dict.
    """
    buffers: list[pickle.PickleBuffer] = []
    stream = io.BytesIO()
    pickler = cloudpickle.Pickler(stream, protocol=5, buffer_callback=buffers.append)
    pickler.dump(_big_bytes_out_of_band(obj))
    return [stream.getbuffer(), *(buffer.raw() for buffer in buffers)]


def loads(segments: Sequence[Any]) -> Any:
    """The object pickled by ``dumps``, from its segments (any bytes-like objects)."""
    return cloudpickle.loads(segments[0], buffers=segments[1:])


def size_of(segments: Sequence[memoryview]) -> int:
    """Bytes the segments hold in all."""
    return sum(segment.nbytes for segment in segments)
