"""Where a kernel's CPU goes in ``Parallel`` of 10,000 tiny calls on the celerynb backend.

Not a contest (``bench_joblib.py`` is): a breakdown for whoever makes the joblib path
faster. It starts a ``LocalCluster(processes=2)``, warms up with three calls, then runs
``CALLS`` more and prints, per call, the wall time, the rate, this process's CPU and
each of its threads' CPU (read from ``/proc/self/task``, Linux only), and the batch
sizes joblib sent in the last call. Threads that ended during the run (each call's
callback thread, which sends the batches) are summed as "(ended threads)".

    .venv/bin/python benchmarks/joblib_kernel_cpu.py          # 40 calls
    .venv/bin/python benchmarks/joblib_kernel_cpu.py --calls 10
"""

from __future__ import annotations

import argparse
import collections
import os
import statistics
import threading
import time
from pathlib import Path
from typing import Any

import joblib

import celerynb
import celerynb._joblib

TINY_CALLS = 10_000


def tiny(i: int) -> int:
    return i * i


def thread_cpu() -> collections.Counter[str]:
    """CPU seconds of each live thread of this process, by thread name (numbered
    suffixes dropped, so a pool's threads add up)."""
    names = {t.native_id: t.name.split("_")[0] for t in threading.enumerate()}
    ticks = os.sysconf("SC_CLK_TCK")
    seconds: collections.Counter[str] = collections.Counter()
    for task in Path("/proc/self/task").iterdir():
        try:
            fields = (task / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:  # ended meanwhile
            continue
        seconds[names.get(int(task.name), "?")] += (int(fields[11]) + int(fields[12])) / ticks
    return seconds


def cluster_cpu() -> collections.Counter[str]:
    """CPU seconds of each process this one started (the cluster's Redis, its workers'
    main processes and their pool processes), by role."""
    import psutil

    seconds: collections.Counter[str] = collections.Counter()
    for child in psutil.Process().children(recursive=True):
        try:
            times = child.cpu_times()
            command = " ".join(child.cmdline())
            parent = child.parent()
        except psutil.Error:
            continue
        if "redis-server" in command:
            role = "redis-server"
        elif parent is not None and parent.pid != os.getpid():
            role = "worker pool processes"
        else:
            role = "worker main processes"
        seconds[role] += times.user + times.system
    return seconds


def batch_sizes() -> list[int]:
    """Record the size of every batch the backend sends (patched in for this script)."""
    sizes: list[int] = []
    send = celerynb._joblib.CelerynbBackend.submit

    def counting(self: Any, func: Any, callback: Any = None) -> Any:
        sizes.append(len(func) if hasattr(func, "__len__") else 1)
        return send(self, func, callback)

    celerynb._joblib.CelerynbBackend.submit = counting  # type: ignore[method-assign]
    return sizes


def run(calls: int) -> None:
    sizes = batch_sizes()
    with celerynb.LocalCluster(processes=2) as cluster:
        celerynb.connect(cluster)
        with joblib.parallel_config(backend="celerynb", show=False):
            for _ in range(3):
                joblib.Parallel(n_jobs=-1)(joblib.delayed(tiny)(i) for i in range(TINY_CALLS))
            others_before = cluster_cpu()
            before, started, cpu = thread_cpu(), time.perf_counter(), time.process_time()
            walls = []
            for _ in range(calls):
                sizes.clear()
                began = time.perf_counter()
                joblib.Parallel(n_jobs=-1)(joblib.delayed(tiny)(i) for i in range(TINY_CALLS))
                walls.append(time.perf_counter() - began)
            wall = (time.perf_counter() - started) / calls
            cpu = (time.process_time() - cpu) / calls
            after = thread_cpu()
            others_after = cluster_cpu()
    print(f"per Parallel of {TINY_CALLS:,} tiny calls, over {calls} calls:")
    median = statistics.median(walls)
    print(
        f"  wall {wall * 1000:.0f} ms ({TINY_CALLS / wall:,.0f} calls/s), "
        f"median {median * 1000:.0f} ms ({TINY_CALLS / median:,.0f} calls/s)"
    )
    print(f"  kernel CPU {cpu * 1000:.1f} ms, by thread:")
    known = 0.0
    for name in sorted(after, key=lambda n: before.get(n, 0) - after[n]):
        spent = (after[name] - before.get(name, 0)) / calls
        known += spent
        if spent > 0:
            print(f"    {name:28s} {spent * 1000:6.1f} ms")
    print(f"    {'(ended threads)':28s} {(cpu - known) * 1000:6.1f} ms")
    print("  the cluster's CPU:")
    for role in sorted(others_after):
        spent = (others_after[role] - others_before.get(role, 0)) / calls
        print(f"    {role:28s} {spent * 1000:6.1f} ms")
    print(f"  batches of the last call: {len(sizes)}: {sizes}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=40, help="timed Parallel calls (40)")
    run(parser.parse_args().calls)


if __name__ == "__main__":
    main()
