"""What the benchmark scripts share: percentiles, a plain-text table, and dask's cluster
started the same way for every comparison."""

from __future__ import annotations

import contextlib
import io
import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Any


@contextlib.contextmanager
def dask_client(directory: Path, workers: int = 2) -> Iterator[Any]:
    """A client of ``distributed.LocalCluster`` with ``workers`` single-thread worker
    processes (celerynb's pool processes' equal), its temporary files under
    ``directory``. Raises ImportError without dask.distributed."""
    import dask
    import distributed

    print(f"dask: starting LocalCluster(n_workers={workers}, threads_per_worker=1) ...", flush=True)
    with (
        dask.config.set({"temporary-directory": str(directory / "dask")}),  # not /tmp
        distributed.LocalCluster(
            n_workers=workers,
            threads_per_worker=1,
            processes=True,
            host="127.0.0.1",
            dashboard_address=None,
            silence_logs=logging.CRITICAL,
        ) as cluster,
        distributed.Client(cluster, timeout=60) as client,
    ):
        client.wait_for_workers(workers, timeout=60)
        yield client


@contextlib.contextmanager
def ipp_client(directory: Path) -> Iterator[Any]:
    """A client of ``ipyparallel.Cluster(n=2)`` (two engines: celerynb's two pool
    processes' equal), its profile under ``directory`` (no connection files left in
    ~/.ipython). Raises ImportError without ipyparallel."""
    import ipyparallel

    print("ipyparallel: starting Cluster(n=2) ...", flush=True)
    cluster = ipyparallel.Cluster(n=2, profile_dir=str(directory / "ipp"), log_level=logging.ERROR)
    try:
        with contextlib.redirect_stderr(io.StringIO()):  # its start-up progress bar
            client = cluster.start_and_connect_sync()
        try:
            yield client
        finally:
            client.close()
    finally:
        cluster.stop_cluster_sync()


def percentile(values: list[float], q: float) -> float:
    """The ``q``-th percentile (0-100), interpolated between closest ranks."""
    ordered = sorted(values)
    if len(ordered) == 1:
        return ordered[0]
    position = (len(ordered) - 1) * q / 100
    low = int(position)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (position - low)


def print_table(header: tuple[str, ...], rows: list[tuple[str, ...]]) -> None:
    """Columns padded to their widest cell: the first left-aligned, the others right."""
    widths = [max(len(row[i]) for row in [header, *rows]) for i in range(len(header))]

    def line(row: tuple[str, ...]) -> str:
        cells = [row[0].ljust(widths[0])] + [c.rjust(w) for c, w in zip(row[1:], widths[1:])]
        return "  ".join(cells).rstrip()

    print(line(header))
    print("  ".join("-" * w for w in widths))
    for row in rows:
        print(line(row))
