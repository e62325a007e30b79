"""Kernel side: what a call is before it is sent (pure): how displays name it, and its
arguments checked (registered tasks: JSON) or pickled (shipped callables)."""

from __future__ import annotations

import reprlib
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from celery.app.task import Task
from kombu.utils.json import dumps as json_dumps

from ._errors import CelerynbError, SerializationError
from ._payload import dumps

# Registered tasks: one message's JSON arguments at most (the broker, every worker and
# the result path would carry them). Shipped calls over the inline limit go by
# reference through the data store instead; without one, this is their limit too.
MAX_MESSAGE_BYTES = 32 * 2**20


def check_json(name: str, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
    """Refuse (SerializationError, naming the argument) a registered task's arguments
    that are not JSON or take more than ``MAX_MESSAGE_BYTES`` together."""
    sizes: dict[str, int] = {}
    for label, value in labelled(args, kwargs):
        try:
            sizes[label] = len(json_dumps(value))
        except Exception as exc:
            raise SerializationError(
                f"{label} of {name} ({type(value).__name__}) cannot be sent as JSON: {exc}; "
                "registered tasks take JSON arguments"
            ) from None
    if sum(sizes.values()) > MAX_MESSAGE_BYTES:
        refuse_size(name, sum(sizes.values()), sizes)


def labelled(args: tuple[Any, ...], kwargs: dict[str, Any]) -> list[tuple[str, Any]]:
    """``("argument 1", a)``, ``("argument 'k'", v)``...: each argument as errors name it."""
    return [
        *((f"argument {i + 1}", a) for i, a in enumerate(args)),
        *((f"argument {k!r}", v) for k, v in kwargs.items()),
    ]


def refuse_size(name: str, total: int, sizes: dict[str, int]) -> None:
    """Raise SerializationError: the call takes ``total`` bytes, naming its largest argument."""
    largest = max(sizes, key=sizes.__getitem__) if sizes else "the call"
    mib = 2**20
    raise SerializationError(
        f"the call {name}() takes {total / mib:.1f} MiB once serialized (largest: {largest}, "
        f"{sizes.get(largest, total) / mib:.1f} MiB), over the {MAX_MESSAGE_BYTES // mib} MiB "
        "limit for one message: pass large data by reference (a file path, a URL, a key)"
    )


def pickle_call(fn: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> list[memoryview]:
    """The call pickled (protocol 5, big buffers out of band); SerializationError naming
    the part that cannot be pickled."""
    try:
        return dumps((fn, args, kwargs))
    except CelerynbError:
        raise
    except Exception as whole:
        part = unpicklable_part([("the function", fn), *labelled(args, kwargs)])
        if part is not None:
            raise SerializationError(f"cannot ship {part.label} of {display_name(fn)}() "
                                     f"{part.why}") from None  # fmt: skip
        raise SerializationError(f"cannot ship {display_name(fn)}(): {whole}") from None


@dataclass(frozen=True)
class UnpicklablePart:
    """The first part of a call that does not pickle: its label and why."""

    label: str
    why: str  # "(type): ExcType: message"


def unpicklable_part(parts: Iterable[tuple[str, Any]]) -> UnpicklablePart | None:
    """The first of the labelled ``parts`` that cannot be pickled (None: each can)."""
    for label, value in parts:
        try:
            dumps(value)
        except CelerynbError:
            raise
        except Exception as exc:
            why = f"({type(value).__name__}): {type(exc).__name__}: {exc}"
            return UnpicklablePart(label, why)
    return None


def display_name(fn: Any) -> str:
    if isinstance(fn, str):
        return fn
    if isinstance(fn, Task):
        return fn.name
    name = getattr(fn, "__qualname__", None) or getattr(fn, "__name__", None)
    if not name:
        return type(fn).__name__
    return name.rsplit("<locals>.", 1)[-1]  # outer function names are noise here


def shown_call(fn: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> str:
    r = reprlib.Repr()
    r.maxstring, r.maxother = 20, 20
    parts = [r.repr(a) for a in args] + [f"{k}={r.repr(v)}" for k, v in kwargs.items()]
    text = f"{display_name(fn)}({', '.join(parts)})"
    return text if len(text) <= 60 else text[:57] + "..."
