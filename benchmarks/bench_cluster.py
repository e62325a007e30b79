"""From a worker's death to the next job done: celerynb's supervised LocalCluster
against dask's Nanny, side by side in one run.

Equal settings: one worker process each (``LocalCluster(processes=1)``; dask's
``LocalCluster(n_workers=1, threads_per_worker=1, processes=True)``), so the next job
must wait for the replacement (with two, the other one would take it at once). In
each run a job that sleeps is running; the worker is killed with SIGKILL (celerynb:
the worker's main process, as the OOM killer or a crash does; dask: the worker
process under its Nanny, its job cancelled first so that it is not run again); a
new job ``f(x) = x + 1`` is submitted at once and timed until its result is in hand.
Runs alternate between the contenders (5 each; 3 with ``--quick``) and the medians
are compared. Goal (issue 18): no slower than dask.

Needs dask.distributed (``pip install -e '.[bench]'``). Run from the repository root:

    .venv/bin/python benchmarks/bench_cluster.py            # about 1.5 min
    .venv/bin/python benchmarks/bench_cluster.py --quick
"""

from __future__ import annotations

import argparse
import contextlib
import os
import signal
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from _report import dask_client, print_table

import celerynb

TIMEOUT = 120.0


def f(x: int) -> int:
    return x + 1


def nap(seconds: float) -> float:
    import time

    time.sleep(seconds)
    return seconds


def wait_until(predicate: Callable[[], bool], timeout: float = TIMEOUT) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise TimeoutError("the condition did not hold in time")
        time.sleep(0.01)


class Celerynb:
    name = "celerynb LocalCluster (supervised)"

    def __enter__(self) -> Celerynb:
        self.cluster = celerynb.LocalCluster(processes=1)
        self.session = celerynb.connect(self.cluster)
        return self

    def __exit__(self, *exc: Any) -> None:
        self.session.close()
        self.cluster.close()

    def death_to_next_job(self) -> float:
        running = self.session.submit(nap, (60,))
        wait_until(lambda: running.state == "STARTED")
        os.kill(self.cluster._worker.pid, signal.SIGKILL)
        killed = time.monotonic()
        assert self.session.submit(f, (1,)).result(timeout=TIMEOUT) == 2
        took = time.monotonic() - killed
        running.cancel()
        return took


class Dask:
    name = "dask LocalCluster (Nanny)"

    def __enter__(self) -> Dask:
        self._stack = contextlib.ExitStack()
        directory = Path(self._stack.enter_context(tempfile.TemporaryDirectory()))
        self.client = self._stack.enter_context(dask_client(directory, workers=1))
        return self

    def __exit__(self, *exc: Any) -> None:
        self._stack.close()

    def death_to_next_job(self) -> float:
        running = self.client.submit(nap, 60, pure=False)
        wait_until(lambda: any(self.client.processing().values()))
        (pid,) = self.client.run(os.getpid).values()
        # Else the scheduler runs it again on the new worker, before f: celerynb's job
        # ends LOST instead.
        running.cancel()
        os.kill(pid, signal.SIGKILL)
        killed = time.monotonic()
        assert self.client.submit(f, 1, pure=False).result(timeout=TIMEOUT) == 2
        return time.monotonic() - killed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="3 runs each instead of 5")
    runs = 3 if parser.parse_args().quick else 5
    times: dict[str, list[float]] = {}
    with Celerynb() as ours, Dask() as theirs:
        for number in range(runs):
            for contender in (ours, theirs) if number % 2 == 0 else (theirs, ours):
                took = contender.death_to_next_job()
                times.setdefault(contender.name, []).append(took)
                print(f"{contender.name}: next job done {took:.2f} s after the kill", flush=True)
    print(
        f"\nPython {sys.version.split()[0]}, {os.cpu_count()} CPUs, {runs} runs each, "
        f"load average {os.getloadavg()[0]:.1f}\n"
    )
    ours_median = statistics.median(times[Celerynb.name])
    rows = [
        (
            name,
            f"{statistics.median(values):.2f}",
            f"{min(values):.2f}",
            f"{max(values):.2f}",
            f"{statistics.median(values) / ours_median:.2f}x",
        )
        for name, values in times.items()
    ]
    print_table(("worker killed", "median s", "best s", "worst s", "that/celerynb"), rows)
    theirs_median = statistics.median(times[Dask.name])
    verdict = "met" if ours_median <= theirs_median else "NOT met"
    print(f"\ngoal: celerynb no slower than dask's Nanny: {verdict}")


if __name__ == "__main__":
    main()
