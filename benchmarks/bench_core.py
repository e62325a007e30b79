"""Core benchmarks of celerynb against plain tqdm / raw Celery, side by side.

Starts a private ``celerynb.LocalCluster`` (its own redis-server and a prefork
Celery worker, concurrency 2) and measures:

1. Worker-side loop overhead: ``for i in celerynb.tqdm(range(N)): s += i`` timed
   inside a Celery task, vs the same loop over plain ``tqdm.tqdm`` writing to
   /dev/null. Median of 3 runs each, alternating. Goal: ratio <= 1.10.
2. Progress latency: a task calls ``celerynb.report(i, total, force=True)`` every
   20 ms; a ``Job`` listener in this process records ``time.time() -
   job.progress.updated`` (worker clock, same machine) for each PROGRESS update.
   p50 and p99. Goal: p50 <= 5 ms.
3. Round trip, submit to result: ``celerynb.submit("celery.accumulate", 1)`` (a
   registered task, sent by name as JSON) and ``celerynb.submit(lambda: None)``
   (shipped with cloudpickle + HMAC), each vs raw Celery
   ``app.send_task("celery.accumulate", args=[1]).get()``. Interleaved rounds,
   after a warm-up; p50. Goals: registered <= 1.15x raw, shipped <= 1.5x raw.

Run from the repository root:

    .venv/bin/python benchmarks/bench_core.py            # full run, about 15 s
    .venv/bin/python benchmarks/bench_core.py --quick    # smaller N, 50 round trips
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import threading
import time
from collections.abc import Callable

from _report import percentile, print_table
from celery import Celery

import celerynb

TASK_TIMEOUT = 120.0  # seconds; the longest single task (a 10M-iteration loop) takes a few
CALL_TIMEOUT = 10.0  # seconds; one round trip
LOOP_RUNS = 3
PROGRESS_REPORTS = 200
PROGRESS_PAUSE = 0.02
WARMUP_CALLS = 20


# -- task bodies (shipped by value to the worker) ------------------------------
def celerynb_loop(n: int) -> float:
    """Seconds taken by an ``n``-iteration loop over celerynb.tqdm, inside the task."""
    import time

    from celerynb import tqdm

    s = 0
    start = time.perf_counter()
    for i in tqdm(range(n)):
        s += i
    return time.perf_counter() - start


def plain_tqdm_loop(n: int) -> float:
    """Seconds taken by the same loop over plain tqdm writing to /dev/null."""
    import os
    import time

    import tqdm

    s = 0
    with open(os.devnull, "w") as devnull:
        start = time.perf_counter()
        for i in tqdm.tqdm(range(n), file=devnull):
            s += i
        return time.perf_counter() - start


def report_often(count: int, pause: float) -> int:
    """Report progress ``count`` times, ``pause`` seconds apart."""
    import time

    from celerynb import report

    for i in range(1, count + 1):
        report(i, count, force=True)
        time.sleep(pause)
    return count


def noop() -> None:
    return None


# -- measurements ---------------------------------------------------------------
def loop_overhead(n: int) -> tuple[float, float]:
    """Median in-task seconds of the celerynb.tqdm loop and the plain tqdm loop."""
    ours: list[float] = []
    plain: list[float] = []
    for _ in range(LOOP_RUNS):
        ours.append(celerynb.submit(celerynb_loop, n).result(timeout=TASK_TIMEOUT))
        plain.append(celerynb.submit(plain_tqdm_loop, n).result(timeout=TASK_TIMEOUT))
    return statistics.median(ours), statistics.median(plain)


class LatencyRecorder:
    """Job listener: worker write -> kernel update delay of every PROGRESS update."""

    def __init__(self) -> None:
        self.delays: list[float] = []
        self.repeats = 0  # notifications that carried an already-seen ``updated``
        self._last: float | None = None

    def __call__(self, job: celerynb.Job) -> None:
        progress = job.progress
        if progress.state != celerynb.PROGRESS or progress.updated is None:
            return
        if progress.updated == self._last:
            self.repeats += 1
            return
        self._last = progress.updated
        self.delays.append(time.time() - progress.updated)


def progress_latency(count: int) -> LatencyRecorder:
    recorder = LatencyRecorder()
    job = celerynb.submit(report_often, count, PROGRESS_PAUSE)
    job.add_listener(recorder)
    job.result(timeout=TASK_TIMEOUT)
    if not recorder.delays:
        raise RuntimeError("no PROGRESS update reached the kernel")
    return recorder


def timed(call: Callable[[], object]) -> float:
    start = time.perf_counter()
    call()
    return time.perf_counter() - start


def round_trips(raw_app: Celery, calls: int) -> dict[str, list[float]]:
    """Seconds per call for each way of sending, in interleaved, rotating rounds."""
    variants: dict[str, Callable[[], object]] = {
        "registered": lambda: celerynb.submit("celery.accumulate", 1).result(CALL_TIMEOUT),
        "shipped": lambda: celerynb.submit(noop).result(CALL_TIMEOUT),
        "raw": lambda: raw_app.send_task("celery.accumulate", args=[1]).get(CALL_TIMEOUT),
    }
    names = list(variants)
    for _ in range(WARMUP_CALLS):
        for name in names:
            variants[name]()
    times: dict[str, list[float]] = {name: [] for name in names}
    for round_no in range(calls):
        shift = round_no % len(names)
        for name in names[shift:] + names[:shift]:  # no variant always goes first
            times[name].append(timed(variants[name]))
    return times


# -- report ---------------------------------------------------------------------
HEADER = ("measurement", "celerynb", "baseline", "ratio", "goal", "met?")


def compared(label: str, ours: float, base: float, unit: str, limit: float) -> tuple[str, ...]:
    ratio = ours / base
    fmt = "{:.3f} s" if unit == "s" else "{:.2f} ms"
    return (
        label,
        fmt.format(ours),
        fmt.format(base),
        f"{ratio:.3f}x",
        f"<= {limit:.2f}x",
        "yes" if ratio <= limit else "NO",
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--quick", action="store_true", help="N=1,000,000 and 50 round trips, for a fast check"
    )
    args = parser.parse_args()
    n = 1_000_000 if args.quick else 10_000_000
    calls = 50 if args.quick else 200

    started = time.perf_counter()
    with celerynb.LocalCluster(processes=2) as cluster:
        celerynb.connect(cluster)
        raw_app = Celery("bench-raw", broker=cluster.broker_url, backend=cluster.backend_url)
        try:
            print(f"loop overhead: {LOOP_RUNS} x 2 tasks of {n:,} iterations ...", flush=True)
            loop_ours, loop_plain = loop_overhead(n)
            print(f"progress latency: {PROGRESS_REPORTS} reports ...", flush=True)
            latency = progress_latency(PROGRESS_REPORTS)
            print(f"round trips: {WARMUP_CALLS} warm-up + {calls} rounds ...", flush=True)
            trips = round_trips(raw_app, calls)
        finally:
            raw_app.close()

    delays_ms = [d * 1000 for d in latency.delays]
    p50 = {name: statistics.median(values) * 1000 for name, values in trips.items()}
    p50_latency = percentile(delays_ms, 50)
    rows = [
        compared(
            f"worker loop, {n:,} its (median of {LOOP_RUNS})", loop_ours, loop_plain, "s", 1.10
        ),
        (
            "progress latency p50",
            f"{p50_latency:.2f} ms",
            "-",
            "-",
            "<= 5 ms",
            "yes" if p50_latency <= 5 else "NO",
        ),
        ("progress latency p99", f"{percentile(delays_ms, 99):.2f} ms", "-", "-", "-", "-"),
        compared("round trip p50, registered task", p50["registered"], p50["raw"], "ms", 1.15),
        compared("round trip p50, shipped no-op", p50["shipped"], p50["raw"], "ms", 1.50),
    ]
    print()
    print(
        f"celerynb {celerynb.__version__}, Python {platform.python_version()}, "
        f"{os.cpu_count()} CPUs, {'--quick' if args.quick else 'full run'}"
    )
    print_table(HEADER, rows)
    print()
    print(
        f"progress: {len(delays_ms)} of {PROGRESS_REPORTS} updates timed, "
        f"max {max(delays_ms):.2f} ms, "
        f"{latency.repeats} repeated notifications skipped"
    )
    print(
        f"round trips: {calls} per variant; baseline = raw Celery send_task().get(); "
        f"threads alive at exit: {threading.active_count()}"
    )
    print(f"total time: {time.perf_counter() - started:.1f} s")


if __name__ == "__main__":
    main()
