"""Kernel side: big frames move to and from the data store on background threads, so
that neither the cell nor the watcher (every other job's bar) waits for them."""

from __future__ import annotations

import logging
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

log = logging.getLogger(__name__)

THREADS = 2  # transfers at once: the store's bandwidth is shared anyway


class Transfers:
    """A small pool of ``celerynb-transfer`` threads, started on first use."""

    def __init__(self, threads: int = THREADS) -> None:
        self._threads = threads
        self._pool: ThreadPoolExecutor | None = None
        self._closed = False

    def run(self, work: Callable[[], None]) -> None:
        """Run ``work()`` on a transfer thread; an exception it lets out is logged."""
        if self._closed:
            raise RuntimeError("transfers of a closed session")
        if self._pool is None:
            self._pool = ThreadPoolExecutor(self._threads, thread_name_prefix="celerynb-transfer")
        self._pool.submit(_logged, work)

    def close(self) -> None:
        """Drop transfers not started; those running finish on their own."""
        self._closed = True
        if self._pool is not None:
            self._pool.shutdown(wait=False, cancel_futures=True)


def _logged(work: Callable[[], None]) -> None:
    try:
        work()
    except Exception:
        log.exception("celerynb: a data transfer failed")
