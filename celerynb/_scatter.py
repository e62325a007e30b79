"""``celerynb.scatter``: an object put in the data store once and passed to any number
of calls by reference (both sides).

The kernel pickles the object, signs it for its content digest (purpose "data")
and stores it; a ``Scattered`` reference pickles as that small reference. On a
worker, unpickling a call that holds one reads the stored frame, verifies it
(signature, digest, nonce) and unpickles it, once per worker process: later calls
in the same process get the same object from a cache keyed by the digest.
Treat scattered objects as read-only: the calls of one process share them.
"""

from __future__ import annotations

import hashlib
import logging
import os
import threading
import time
import weakref
from collections import OrderedDict
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

from ._byref import fetch_stored
from ._datastore import DataStore
from ._errors import (
    DataStoreError,
    DataUnavailableError,
    SerializationError,
    UntrustedResultError,
)
from ._payload import dumps, loads
from ._signing import content_digests, seal

log = logging.getLogger(__name__)

CACHE_ENV = "CELERYNB_SCATTER_CACHE"  # bytes of scattered objects a worker process keeps
REFRESH_EVERY = 60.0  # seconds between refreshes of a reference's time to live

_context = threading.local()  # .value: (secret, store_for) while a payload is unpickled
_collected = threading.local()  # .value: the references met while a call is pickled


@contextmanager
def resolving(secret: bytes, store_for: Callable[[str], DataStore | None]) -> Iterator[None]:
    """Within it, scattered references being unpickled are read from their store."""
    previous = getattr(_context, "value", None)
    _context.value = (secret, store_for)
    try:
        yield
    finally:
        _context.value = previous


@contextmanager
def collecting() -> Iterator[list[Scattered]]:
    """Within it, every ``Scattered`` pickled (sent) is listed: its jobs keep it alive."""
    previous = getattr(_collected, "value", None)
    found: list[Scattered] = []
    _collected.value = found
    try:
        yield found
    finally:
        _collected.value = previous


class Scattered:
    """A reference to an object scattered with ``celerynb.scatter``.

    Pass it (or anything holding it) to ``submit``, ``map`` or a cell: it arrives on
    the worker as the object itself. The data stays in the store while this
    reference or an unfinished job that carries it lives, and expires the session's
    result expiry (one day by default) after it was last sent; ``release()`` removes
    it once the jobs carrying it are done.
    """

    def __init__(
        self,
        info: dict[str, Any],
        *,
        type_name: str,
        store: DataStore | None = None,
        ttl: int = 0,
    ) -> None:
        self._info = info
        self.type_name = type_name
        self._store = store
        self._ttl = ttl
        self._refreshed_at = time.monotonic()
        self._released = False
        self._lock = threading.Lock()
        self._users: set[int] = set()  # ids of unfinished jobs that carry this reference
        self._finalizer = (
            weakref.finalize(self, _remove, store, info["ref"]["key"]) if store else None
        )

    @property
    def digest(self) -> str:
        """The SHA-256 of the object's pickle: the same object scattered twice has one."""
        return str(self._info["digest"])

    @property
    def nbytes(self) -> int:
        """Bytes the object takes in the data store."""
        return int(self._info["ref"]["size"])

    def release(self) -> None:
        """Remove the data from the store once the jobs that carry it are done (at once
        if none is running); calls sent after this are refused."""
        with self._lock:
            self._released = True
            busy = bool(self._users)
        if not busy and self._finalizer is not None:
            self._finalizer()

    def held_by(self, job: Any) -> None:
        """``job`` carries this reference: its data stays until the job is done (the job
        holds the reference until then, and only a weak one to it afterwards)."""
        with self._lock:
            self._users.add(id(job))
        job._holding = [*getattr(job, "_holding", ()), self]
        me = weakref.ref(self)

        def done(finished: Any) -> None:
            scattered = me()
            finished._holding = []
            if scattered is not None:
                scattered._job_done(id(finished))

        job.add_done_callback(done)

    def _job_done(self, job_id: int) -> None:
        with self._lock:
            self._users.discard(job_id)
            remove = self._released and not self._users
        if remove and self._finalizer is not None:
            self._finalizer()

    def __reduce__(self) -> Any:
        if self._store is not None:  # sending it: the data must still be there
            self._keep_alive()
            found = getattr(_collected, "value", None)
            if found is not None and not any(other is self for other in found):
                found.append(self)
        return _materialize, (self._info,)

    def _keep_alive(self) -> None:
        if self._released:
            raise DataUnavailableError(f"{self!r} was released: scatter the object again")
        now = time.monotonic()
        if now - self._refreshed_at < REFRESH_EVERY:
            return
        assert self._store is not None
        if not self._store.refresh(self._info["ref"]["key"], self._ttl):
            raise DataUnavailableError(
                f"the data of {self!r} is no longer in the data store (expired or removed): "
                "scatter the object again"
            )
        self._refreshed_at = now

    def __repr__(self) -> str:
        size = self.nbytes
        shown = f"{size / 2**20:.1f} MiB" if size >= 2**20 else f"{size} bytes"
        state = ", released" if self._released else ""
        return f"<celerynb.Scattered {self.type_name} {shown} {self.digest[:12]}{state}>"


def _remove(store: DataStore, key: str) -> None:
    try:
        store.delete([key])
    except Exception as exc:  # at exit or with the store gone: it expires anyway
        log.debug("celerynb: could not remove scattered data %s: %s", key, exc)


def scatter_to(store: DataStore, obj: Any, *, secret: bytes, ttl: int) -> Scattered:
    """Put ``obj`` in ``store`` once; a reference to pass to calls.

    Raises:
        SerializationError: ``obj`` cannot be pickled.
    """
    try:
        segments = dumps(obj)
    except Exception as exc:
        raise SerializationError(
            f"cannot scatter {type(obj).__name__}: {type(exc).__name__}: {exc}"
        ) from None
    digests = content_digests(segments)
    sizes = ",".join(str(memoryview(s).nbytes) for s in segments).encode()
    name = hashlib.sha256(sizes + b"|" + digests).hexdigest()
    sealed = seal(segments, secret=secret, purpose="data", task_id=name, digests=digests)
    nonce = sealed.header["nonce"]
    key = f"data.{name}.{nonce}"
    store.put(key, sealed.parts, sealed.size, ttl)
    info = {
        "digest": name,
        "ref": {"store": store.spec, "key": key, "size": sealed.size, "nonce": nonce},
    }
    return Scattered(info, type_name=type(obj).__name__, store=store, ttl=ttl)


# -- where the object is needed ----------------------------------------------------
_cache: OrderedDict[str, tuple[Any, int]] = OrderedDict()
_cache_lock = threading.Lock()


def cache_budget() -> int:
    """Bytes of scattered objects one process keeps: ``$CELERYNB_SCATTER_CACHE``,
    else a quarter of the machine's memory, at most 4 GiB."""
    try:
        return int(os.environ[CACHE_ENV])
    except (KeyError, ValueError):
        pass
    try:
        physical = os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        physical = 8 * 2**30
    return min(physical // 4, 4 * 2**30)


def _materialize(info: dict[str, Any]) -> Any:
    digest = str(info.get("digest"))
    ref = info.get("ref")
    if not isinstance(ref, dict):
        raise UntrustedResultError(f"refused scattered data {digest}: no reference")
    with _cache_lock:
        cached = _cache.get(digest)
        if cached is not None:
            _cache.move_to_end(digest)
            return cached[0]
    context = getattr(_context, "value", None)
    if context is None:
        raise DataStoreError(
            "a celerynb.Scattered reference is read only where celerynb runs a call"
        )
    secret, store_for = context
    opened = fetch_stored(ref, secret=secret, purpose="data", task_id=digest, store_for=store_for)
    value = loads(opened.segments)
    _remember(digest, value, int(ref["size"]))
    return value


def _remember(digest: str, value: Any, size: int) -> None:
    budget = cache_budget()
    if size > budget:
        return
    with _cache_lock:
        _cache[digest] = (value, size)
        total = sum(entry[1] for entry in _cache.values())
        while total > budget and len(_cache) > 1:
            _, (_, dropped) = _cache.popitem(last=False)
            total -= dropped


def forget_cache() -> None:
    """Drop every cached scattered object of this process (tests, memory pressure)."""
    with _cache_lock:
        _cache.clear()
