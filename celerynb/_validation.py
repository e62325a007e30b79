"""Kernel side: checks of the names a user passes — queue names and task ids — made
before anything is sent. A bad one would otherwise be sent as is and its job wait
forever (a queue no worker can consume) or fail deep inside the watcher."""

from __future__ import annotations

import reprlib
import unicodedata
from collections.abc import Sequence

MAX_QUEUE_NAME = 255  # AMQP's limit on a queue name (a short string)

_shorten = reprlib.Repr()
_shorten.maxstring = 60
_shorten.maxother = 60


def shown(value: object) -> str:
    """``value`` as a short one-line repr for an error message."""
    return _shorten.repr(value)


def unsafe_character(text: str) -> str | None:
    """The first control character (``\\n``, ``\\x00``...) or lone surrogate (which cannot
    be encoded, e.g. ``\\ud800``) in ``text``; None if there is none."""
    for character in text:
        if unicodedata.category(character) in ("Cc", "Cs"):
            return character
    return None


def check_queue(queue: object) -> None:
    """Refuse a queue name that is not a non-empty str of at most 255 characters without
    control characters, lone surrogates or whitespace at either end (None: the default
    queue). Raises ValueError naming the value."""
    if queue is None:
        return
    if not isinstance(queue, str):
        problem = f"a str, not {type(queue).__name__}"
    elif not queue:
        problem = "a non-empty str (or None for the default queue)"
    elif len(queue) > MAX_QUEUE_NAME:
        problem = f"at most {MAX_QUEUE_NAME} characters, not {len(queue)}"
    elif (character := unsafe_character(queue)) is not None:
        problem = f"free of control characters and lone surrogates, not holding {character!r}"
    elif queue != queue.strip():
        problem = "free of whitespace at either end"
    else:
        return
    raise ValueError(f"queue must be {problem}: got {shown(queue)}")


def check_task_ids(task_ids: Sequence[object]) -> None:
    """Refuse ids that are not non-empty strs free of control characters and lone
    surrogates (an empty id would poison the watcher's reads for every job, a lone
    surrogate cannot be encoded). Raises ValueError naming the first bad one."""
    for task_id in task_ids:
        if not isinstance(task_id, str) or not task_id.strip():
            raise ValueError(f"task ids must be non-empty strings, got {shown(task_id)}")
        character = unsafe_character(task_id)
        if character is not None:
            raise ValueError(
                "task ids must be strings without control characters or lone surrogates, "
                f"got {shown(task_id)} (holding {character!r})"
            )
