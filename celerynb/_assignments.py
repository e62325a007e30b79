"""Kernel side: the notebook variables a job sets when it succeeds (``-o VAR``).

A cell run again while its first run still works (the usual fix-and-rerun) makes two
jobs that set the same variable; the one that finishes last would win, and the older
run's value would replace the newer one's. Only the latest job submitted for a
variable sets it.
"""

from __future__ import annotations

import threading
import weakref
from collections.abc import Iterable, Mapping, MutableMapping
from typing import Any

_lock = threading.Lock()
# (id of the namespace, variable) -> the job submitted last to set it
_latest: weakref.WeakValueDictionary[tuple[int, str], Any] = weakref.WeakValueDictionary()


def will_set(namespace: MutableMapping[str, Any], names: Iterable[str], job: Any) -> None:
    """``job`` is now the one to set ``names`` in ``namespace`` (earlier ones no longer)."""
    with _lock:
        for name in names:
            _latest[(id(namespace), name)] = job


def set_latest(namespace: MutableMapping[str, Any], job: Any, values: Mapping[str, Any]) -> None:
    """Set each of ``values`` for which ``job`` is still the latest job submitted."""
    with _lock:
        for name, value in values.items():
            if _latest.get((id(namespace), name)) is job:
                namespace[name] = value
