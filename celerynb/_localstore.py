"""A data store in a local directory (both sides): ``file:///path``.

For a ``LocalCluster`` (kernel and workers on one machine) a private directory in
memory-backed ``/dev/shm`` moves big frames several times faster than Redis (measured,
0.5 GB on 2 cores: put 0.2-0.3 s vs 0.9-1.4 s, get 0.5-0.6 s vs 0.7-0.9 s), and a
directory on a shared disk serves machines that mount it. Entries are 0600 files in
the directory, written under a temporary name and renamed, so a reader never sees
half a frame; their modification time is their age, and entries older than their
time to live are swept when data is put.
"""

from __future__ import annotations

import mmap
import os
import re
import time
from collections.abc import Iterable, Sequence
from urllib.parse import unquote, urlsplit

from ._datastore import Buffer, Progress, gone_line, store_errors, write_pieces
from ._errors import DataUnavailableError

_KEY = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,254}")
SWEEP_EVERY = 60.0  # seconds between sweeps of expired entries by one process


def directory_of(url: str) -> str:
    """The local path of a ``file://`` URL."""
    return unquote(urlsplit(url).path)


class LocalDirectoryStore:
    """Entries as files of one local directory (``file:///path``)."""

    def __init__(self, url: str) -> None:
        self.spec = url
        self._root = directory_of(url)
        self._swept_at: float | None = None

    def _path(self, key: str) -> str:
        if not _KEY.fullmatch(key):
            raise ValueError(f"not a data store key: {key!r}")
        return os.path.join(self._root, key)

    def put(
        self,
        key: str,
        parts: Sequence[Buffer],
        size: int,
        ttl: int,
        progress: Progress | None = None,
    ) -> None:
        path = self._path(key)
        partial = f"{path}.{os.getpid()}.partial"
        with store_errors(f"could not store {size} bytes in the data store at", self.spec):
            self.sweep(ttl)
            os.makedirs(self._root, mode=0o700, exist_ok=True)
            descriptor = os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            try:
                with os.fdopen(descriptor, "wb") as out:
                    write_pieces(out, parts, progress)
                os.replace(partial, path)
            except BaseException:
                try:
                    os.unlink(partial)
                except OSError:
                    pass
                raise

    def get(self, key: str, size: int, progress: Progress | None = None) -> Buffer:
        """The entry mapped into memory, copy-on-write: nothing is copied, and an
        array unpickled from it is a writable view of the file's pages (which stay
        alive when the entry is removed). ``_signing`` copies a mapped frame's pickle
        stream before checking it, so a later change of the file cannot reach the
        unpickler."""
        with store_errors("could not read data from the data store at", self.spec):
            try:
                descriptor = os.open(self._path(key), os.O_RDONLY)
            except FileNotFoundError:
                raise DataUnavailableError(gone_line(key)) from None
            try:
                if size <= 0 or os.fstat(descriptor).st_size < size:
                    raise DataUnavailableError(gone_line(key))
                mapped = mmap.mmap(
                    descriptor,
                    size,
                    flags=mmap.MAP_PRIVATE,  # MAP_POPULATE would copy every page of it
                    prot=mmap.PROT_READ | mmap.PROT_WRITE,
                )
            finally:
                os.close(descriptor)
        if progress is not None:
            progress(size)
        return mapped

    def delete(self, keys: Iterable[str]) -> None:
        for key in keys:
            try:
                os.unlink(self._path(key))
            except (OSError, ValueError):
                pass

    def refresh(self, key: str, ttl: int) -> bool:
        try:
            os.utime(self._path(key))
        except (OSError, ValueError):
            return False
        return True

    def sweep(self, ttl: int, now: float | None = None) -> None:
        """Remove entries older than ``ttl`` seconds (at most once a minute per process)."""
        now = time.time() if now is None else now
        if self._swept_at is not None and now - self._swept_at < SWEEP_EVERY:
            return
        self._swept_at = now
        try:
            entries = list(os.scandir(self._root))
        except OSError:
            return
        for entry in entries:
            try:
                if now - entry.stat().st_mtime > ttl:
                    os.unlink(entry.path)
            except OSError:
                pass
