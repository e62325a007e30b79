"""Where big data waits between the kernel and the workers (both sides).

Arguments, results and scattered objects larger than the inline limit never go
through a broker message or the result backend's pub/sub: their signed frame is
put in a data store that both sides reach, and a small signed reference travels
instead. Two kinds of store:

- ``RedisDataStore`` (the default): the Redis the session already uses (its result
  backend's, else its broker's), in chunks of a Redis hash, so neither Redis's
  512 MB value limit nor its pub/sub buffer limit matters; every entry expires.
- ``LocalDirectoryStore`` (``_localstore``): a ``file://`` directory, a LocalCluster's
  default (in ``/dev/shm``, several times faster than Redis on one machine) or a
  shared disk;
- ``FsspecDataStore``: any other fsspec URL (``s3://bucket/x``, ``memory://`` for
  tests), one object per entry; entries older than their time to live are swept
  when data is put.

A store is named by its ``spec`` ("redis", or the URL), which the kernel signs
into each call so that the worker writes results where the kernel reads them.
"""

from __future__ import annotations

import logging
import mmap
import os
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import AbstractContextManager, contextmanager
from typing import Any, Protocol

from ._config import failure_line, mask_url, shared_redis
from ._errors import DataStoreError, DataUnavailableError

log = logging.getLogger(__name__)

REDIS_SPEC = "redis"
# Measured on 2 cores (0.5 GB, hiredis): 1-2 MiB fields move ~1.7x faster than 8 MiB
# ones (they stay in the CPU caches), and a 16 MiB round trip hides the latency.
CHUNK = 2 * 2**20  # bytes per Redis hash field
BATCH = 8  # chunks per round trip (pipelined)
PREFIX = "celerynb:data:"
STORE_ENV = "CELERYNB_DATA_STORE"

Progress = Callable[[int], None]  # called with the bytes moved so far
Buffer = bytes | bytearray | memoryview | mmap.mmap


class DataStore(Protocol):
    """Puts, gets and removes signed frames by key, each with a time to live."""

    spec: str

    def put(
        self,
        key: str,
        parts: Sequence[Buffer],
        size: int,
        ttl: int,
        progress: Progress | None = None,
    ) -> None:
        """Store ``parts`` (``size`` bytes in all) under ``key`` for ``ttl`` seconds."""

    def get(self, key: str, size: int, progress: Progress | None = None) -> Buffer:
        """The ``size`` bytes stored under ``key``; DataUnavailableError if gone."""

    def delete(self, keys: Iterable[str]) -> None:
        """Remove entries (missing ones are fine)."""

    def refresh(self, key: str, ttl: int) -> bool:
        """Keep ``key`` ``ttl`` seconds more; False if it is gone."""


def chunks_of(parts: Sequence[Buffer], chunk: int) -> Iterator[Buffer]:
    """The concatenation of ``parts`` cut in pieces of ``chunk`` bytes (the last may be
    shorter). A piece inside one part is a view of it; only pieces that straddle
    parts are copied (at most ``chunk`` bytes each)."""
    pending: list[memoryview] = []
    pending_size = 0
    for part in parts:
        view = memoryview(part).cast("B")
        offset = 0
        while offset < view.nbytes:
            take = min(chunk - pending_size, view.nbytes - offset)
            if not pending and take == chunk:
                yield view[offset : offset + take]
            else:
                pending.append(view[offset : offset + take])
                pending_size += take
                if pending_size == chunk:
                    yield b"".join(pending)
                    pending, pending_size = [], 0
            offset += take
    if pending:
        yield b"".join(pending)


def write_pieces(out: Any, parts: Sequence[Buffer], progress: Progress | None = None) -> None:
    """Write ``parts`` to the file ``out`` in ``CHUNK``-byte pieces, telling ``progress``."""
    done = 0
    for piece in chunks_of(parts, CHUNK):
        out.write(piece)
        done += memoryview(piece).nbytes
        if progress is not None:
            progress(done)


def read_exactly(handle: Any, size: int, key: str, progress: Progress | None = None) -> bytearray:
    """``size`` bytes read from the file ``handle`` into a new buffer, in ``CHUNK``-byte
    pieces; DataUnavailableError if the file holds fewer."""
    out = bytearray(size)
    view = memoryview(out)
    offset = 0
    while offset < size:
        read = handle.readinto(view[offset : min(offset + CHUNK, size)])
        if not read:
            break
        offset += read
        if progress is not None:
            progress(offset)
    if offset != size:
        raise DataUnavailableError(gone_line(key))
    return out


class RedisDataStore:
    """Entries as Redis hashes of ``CHUNK``-byte fields, with an expiry."""

    spec = REDIS_SPEC

    def __init__(self, client: Any, url: str | None = None) -> None:
        self._client = client
        self._url = url

    def put(
        self,
        key: str,
        parts: Sequence[Buffer],
        size: int,
        ttl: int,
        progress: Progress | None = None,
    ) -> None:
        name = PREFIX + key
        done = 0
        with self._errors(f"store {size} bytes in"):
            pipe = self._client.pipeline(transaction=False)
            pipe.delete(name)
            queued = 0
            for index, piece in enumerate(chunks_of(parts, CHUNK)):
                pipe.hset(name, str(index), piece)
                if index == 0:
                    pipe.expire(name, ttl)  # a writer that dies midway leaves nothing forever
                queued += memoryview(piece).nbytes
                if (index + 1) % BATCH == 0:
                    pipe.execute()
                    done += queued
                    queued = 0
                    if progress is not None:
                        progress(done)
            pipe.expire(name, ttl)
            pipe.execute()
        if progress is not None:
            progress(size)

    def get(self, key: str, size: int, progress: Progress | None = None) -> bytearray:
        name = PREFIX + key
        out = bytearray(size)
        count = -(-size // CHUNK)
        offset = 0
        with self._errors("read data from"):
            for start in range(0, count, BATCH):
                pipe = self._client.pipeline(transaction=False)
                for index in range(start, min(start + BATCH, count)):
                    pipe.hget(name, str(index))
                for piece in pipe.execute():
                    if piece is None or offset + len(piece) > size:
                        raise DataUnavailableError(gone_line(key))
                    out[offset : offset + len(piece)] = piece
                    offset += len(piece)
                if progress is not None:
                    progress(offset)
        if offset != size:
            raise DataUnavailableError(gone_line(key))
        return out

    def delete(self, keys: Iterable[str]) -> None:
        names = [PREFIX + key for key in keys]
        if names:
            with self._errors("remove data from"):
                self._client.unlink(*names)

    def refresh(self, key: str, ttl: int) -> bool:
        with self._errors("keep data in"):
            kept = bool(self._client.expire(PREFIX + key, ttl))
        return kept

    def _errors(self, doing: str) -> AbstractContextManager[None]:
        return store_errors(f"could not {doing} the data store (Redis) at", self._url)


class FsspecDataStore:
    """Entries as objects under an fsspec URL (``file://``, ``s3://``, ``memory://``)."""

    SWEEP_EVERY = 3600.0  # seconds between sweeps of expired entries by one process

    def __init__(self, url: str) -> None:
        import fsspec  # optional: only for a store given by URL

        self.spec = url
        self._fs, self._root = fsspec.core.url_to_fs(url)
        self._swept_at: float | None = None

    def _path(self, key: str) -> str:
        return f"{self._root.rstrip('/')}/{key}"

    def put(
        self,
        key: str,
        parts: Sequence[Buffer],
        size: int,
        ttl: int,
        progress: Progress | None = None,
    ) -> None:
        self.sweep(ttl)
        with self._errors(f"store {size} bytes in"):
            self._fs.makedirs(self._root, exist_ok=True)
            with self._fs.open(self._path(key), "wb") as out:
                write_pieces(out, parts, progress)

    def get(self, key: str, size: int, progress: Progress | None = None) -> bytearray:
        with self._errors("read data from"):
            try:
                handle = self._fs.open(self._path(key), "rb")
            except FileNotFoundError:
                raise DataUnavailableError(gone_line(key)) from None
            with handle:
                return read_exactly(handle, size, key, progress)

    def delete(self, keys: Iterable[str]) -> None:
        for key in keys:
            try:
                self._fs.rm(self._path(key))
            except FileNotFoundError:
                pass
            except Exception as exc:
                log.debug("celerynb: could not remove %s from %s: %s", key, self.spec, exc)

    def refresh(self, key: str, ttl: int) -> bool:
        path = self._path(key)
        if not self._fs.exists(path):
            return False
        try:
            self._fs.touch(path, truncate=False)
        except Exception:  # not every filesystem can: the entry lives from its write
            pass
        return True

    def sweep(self, ttl: int, now: float | None = None) -> None:
        """Remove entries older than ``ttl`` seconds (at most once an hour per process)."""
        now = time.time() if now is None else now
        if self._swept_at is not None and now - self._swept_at < self.SWEEP_EVERY:
            return
        self._swept_at = now
        try:
            entries = self._fs.ls(self._root, detail=True)
        except Exception:
            return
        for entry in entries:
            modified = _modified(entry)
            if modified is not None and now - modified > ttl:
                try:
                    self._fs.rm(entry["name"])
                except Exception as exc:
                    log.debug("celerynb: could not sweep %s: %s", entry.get("name"), exc)

    def _errors(self, doing: str) -> AbstractContextManager[None]:
        return store_errors(f"could not {doing} the data store at", self.spec)


def _modified(entry: dict[str, Any]) -> float | None:
    for field in ("mtime", "created", "LastModified", "last_modified"):
        value = entry.get(field)
        if isinstance(value, int | float):
            return float(value)
        if value is not None and hasattr(value, "timestamp"):
            return float(value.timestamp())
    return None


def gone_line(key: str) -> str:
    return (
        f"the data {key} is no longer in the data store: it expired, was removed once "
        "collected or released, or was never completely written"
    )


@contextmanager
def store_errors(doing: str, url: str | None) -> Iterator[None]:
    """Turns a failure of the store's client into one DataStoreError line (URL masked)."""
    try:
        yield
    except DataStoreError:
        raise
    except Exception as exc:
        line = failure_line(doing, url, exc)
        if "OOM" in str(exc) or "maxmemory" in str(exc):
            line += " (the store is full: free memory, or raise Redis's maxmemory)"
        raise DataStoreError(line) from None


# -- finding the store ----------------------------------------------------------
_stores: dict[tuple[int, int, str], DataStore | None] = {}
_stores_lock = threading.Lock()


def store_spec(explicit: str | None = None, default: str | None = None) -> str:
    """The store a kernel uses: ``explicit``, else ``$CELERYNB_DATA_STORE``, else
    ``default`` (a LocalCluster's directory), else Redis."""
    return explicit or os.environ.get(STORE_ENV) or default or REDIS_SPEC


def data_store(app: Any, spec: str = REDIS_SPEC) -> DataStore | None:
    """This process's store for ``spec`` (None: "redis" and the app has no Redis)."""
    cache_key = (os.getpid(), id(app), spec)  # a forked pool child needs its own
    with _stores_lock:
        if cache_key not in _stores:
            _stores[cache_key] = _make_store(app, spec)
        return _stores[cache_key]


def _make_store(app: Any, spec: str) -> DataStore | None:
    if spec.startswith("file://"):
        from ._localstore import LocalDirectoryStore  # no fsspec needed on one machine

        return LocalDirectoryStore(spec)
    if spec != REDIS_SPEC:
        return FsspecDataStore(spec)
    found = shared_redis(app, socket_timeout=120)  # big transfers: no short timeout
    return RedisDataStore(*found) if found is not None else None


def no_store_line(app: Any) -> str:
    """Why big data cannot go by reference with ``app``, and what to do."""
    return (
        f"no data store: neither the result backend nor the broker "
        f"({mask_url(str(app.conf.broker_write_url or app.conf.broker_url))}) is Redis; "
        "pass celerynb.connect(..., store='file:///shared/dir') (any fsspec URL both the "
        f"kernel and the workers reach) or set {STORE_ENV}"
    )
