"""Throughput of ``celerynb.map`` against raw Celery, Celery chunks, dask and ipyparallel.

Everything runs on this machine, one run at a time (never concurrently), each
contender with two worker processes:

1. ``celerynb.map(square, range(N)).results()`` with a private ``celerynb.LocalCluster``
   (its own redis-server and a prefork Celery worker, concurrency 2). Also with the
   JobGroup shown as a live text bar (stderr captured) and a listener counting the
   aggregated progress updates that reached this process during the run, and at
   N=100,000 and 1,000,000.
2. Raw Celery, one task per item: ``app.send_task("celery.accumulate", ...)`` (a
   built-in no-op task) on the same cluster, then ``ResultSet.get()``.
3. Celery's own ``chunks`` of the same no-op task, ``.group().apply_async().get()``:
   chunks of 10 (the documentation's example) and as many chunks as celerynb makes.
4. dask.distributed ``client.map(square, range(N), pure=False)`` + ``client.gather``,
   ``LocalCluster(n_workers=2, threads_per_worker=1, processes=True)``.
5. ipyparallel ``view.map_async(square, range(N), chunksize=C).get()``,
   ``ipp.Cluster(n=2)``, load-balanced view, with C giving as many chunks as celerynb.map
   made for the same N (equal chunking), at N=10,000 and at N=1,000,000. These runs take
   turns with celerynb.map's (both clusters up, one run at a time), so that a change in
   the machine's load during the benchmark weighs on both alike.

Every contender gets a warm-up, then a few timed runs from submission to all results
received and checked; rates are items/s, median and best. Goals: celerynb.map
>= 200,000 items/s at N=10,000 (median) and ahead of each contender (ratio > 1).

A second table measures the cost of watching 1,000 jobs in this process: 1,000
shipped jobs each wait for a gate file (so all are watched at once, two running and
the rest queued). With 0 and then 1,000 jobs watched, over a 3 s idle window: CPU
time of the ``celerynb-watcher`` thread, and how late ``time.sleep(0.01)`` returns in
the main thread (p50/p99). Then the gate opens: time until all 1,000 are done and
watcher CPU during that burst. Also the Redis connections this process holds in
pub/sub mode. Goal: exactly one carries the 1,000 jobs' channels (another listens
to worker heartbeats, whatever the number of jobs).

Needs the contenders: ``pip install -e '.[bench]'`` (rows say so when one is missing).
Run from the repository root:

    .venv/bin/python benchmarks/bench_map.py            # full run, about 2.5 min
    .venv/bin/python benchmarks/bench_map.py --quick    # about 1 min: fewer items and runs
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.util
import io
import math
import os
import platform
import statistics
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from _report import dask_client, ipp_client, percentile, print_table
from celery import Celery

import celerynb

N = 10_000
BIG = 1_000_000  # the size at which celerynb.map and ipyparallel are compared again
GOAL_RATE = 200_000.0  # items/s, celerynb.map at N
RUN_TIMEOUT = 120.0  # seconds; any one timed run
GATE_DEADLINE = 60.0  # seconds; a gated job gives up waiting for its gate after this
WATCHED_JOBS = 1_000
IDLE_SECONDS = 3.0
SLEEP_STEP = 0.01
NOT_INSTALLED = "not installed (pip install -e '.[bench]')"


# -- task bodies (shipped by value to the workers) ------------------------------
def square(x: int) -> int:
    return x * x


def gated(path: str, deadline: float = GATE_DEADLINE) -> bool:
    """Wait until ``path`` exists (True), or ``deadline`` seconds pass (False)."""
    import os
    import time

    give_up = time.monotonic() + deadline
    while not os.path.exists(path):
        if time.monotonic() > give_up:
            return False
        time.sleep(0.01)
    return True


# -- measurements -----------------------------------------------------------------
@dataclass
class Result:
    """Timed runs of one contender: items per run and seconds of each run."""

    name: str
    items: int = 0
    seconds: list[float] = field(default_factory=list)
    note: str = ""

    @property
    def rates(self) -> list[float]:
        return [self.items / s for s in self.seconds]

    @property
    def median(self) -> float:
        return statistics.median(self.rates) if self.seconds else math.nan

    @property
    def best(self) -> float:
        return max(self.rates) if self.seconds else math.nan


def measure(name: str, run: Callable[[int], float], items: int, runs: int, warmup: int) -> Result:
    """``run(items)`` does one complete run, checks its results and returns the seconds
    from submission to all results received; a warm-up, then ``runs`` timed runs."""
    print(f"{name}: warm-up ({warmup:,} items) + {runs} x {items:,} items ...", flush=True)
    run(warmup)
    return Result(name, items, [run(items) for _ in range(runs)])


def check(got: list[Any], expected: list[Any], what: str) -> None:
    if got != expected:
        raise AssertionError(f"{what}: wrong results (first: {got[:3]!r} vs {expected[:3]!r})")


class CelerynbMap:
    """``celerynb.map(...).results()``; keeps how long ``map()`` itself took (submission)."""

    def __init__(self) -> None:
        self.submit_seconds: dict[int, list[float]] = {}
        self.chunks: dict[int, int] = {}  # items -> tasks the map was split into

    def run(self, items: int) -> float:
        start = time.perf_counter()
        group = celerynb.map(square, range(items))
        submitted = time.perf_counter()
        values = group.results(timeout=RUN_TIMEOUT)
        end = time.perf_counter()
        self.submit_seconds.setdefault(items, []).append(submitted - start)
        self.chunks[items] = len(group.jobs)
        check(values, [x * x for x in range(items)], "celerynb.map")
        return end - start


class LiveBar:
    """``celerynb.map`` shown as a live text bar (stderr captured), with a listener
    counting the aggregated progress updates that arrive while it runs."""

    def __init__(self) -> None:
        # items -> per run: (listener calls before the group was done, distinct item
        # counts the bar went through, text bar redraws, the bar's final line)
        self.runs: dict[int, list[tuple[int, int, int, str]]] = {}

    def run(self, items: int) -> float:
        calls = 0
        seen: set[int] = set()

        def listener(group: celerynb.JobGroup) -> None:
            nonlocal calls
            if not group.done():
                calls += 1
            seen.add(group.progress.bars[0].n)

        sink = io.StringIO()
        with contextlib.redirect_stderr(sink):
            start = time.perf_counter()
            group = celerynb.map(square, range(items))
            group.add_listener(listener)
            group.show()  # a tqdm text bar on stderr outside Jupyter, drawn by its thread
            values = group.results(timeout=RUN_TIMEOUT)
            end = time.perf_counter()
        check(values, [x * x for x in range(items)], "celerynb.map (shown)")
        deadline = time.monotonic() + 5.0  # the render thread writes the final line
        while "\n" not in sink.getvalue() and time.monotonic() < deadline:
            time.sleep(0.01)
        text = sink.getvalue()
        final = text.rsplit("\r", 1)[-1].strip()
        self.runs.setdefault(items, []).append((calls, len(seen), text.count("\r"), final))
        return end - start


def raw_celery_run(app: Any, items: int) -> float:
    """One ``celery.accumulate`` task per item (returns its argument), sent by name."""
    from celery.result import ResultSet

    start = time.perf_counter()
    with app.producer_or_acquire() as producer:
        results = [
            app.send_task("celery.accumulate", args=[i], kwargs={"index": 0}, producer=producer)
            for i in range(items)
        ]
    values = ResultSet(results, app=app).get(timeout=RUN_TIMEOUT)
    end = time.perf_counter()
    check(values, list(range(items)), "raw Celery")
    return end - start


def celery_chunks_run(app: Any, size: int, items: int) -> float:
    """Celery's ``chunks``: each chunk is one ``celery.starmap`` task calling the no-op."""
    from celery.canvas import chunks

    start = time.perf_counter()
    task = app.signature("celery.accumulate")
    parts = chunks(task, zip(range(items)), size, app=app).group().apply_async()
    values = parts.get(timeout=RUN_TIMEOUT)
    end = time.perf_counter()
    check([v for part in values for v in part], [[i] for i in range(items)], "Celery chunks")
    return end - start


def dask_run(client: Any, items: int) -> float:
    import distributed

    start = time.perf_counter()
    futures = client.map(square, range(items), pure=False)  # no reuse of an earlier run
    distributed.wait(futures, timeout=RUN_TIMEOUT)
    values = client.gather(futures)
    end = time.perf_counter()
    check(values, [x * x for x in range(items)], "dask")
    return end - start


def ipyparallel_run(view: Any, items: int, chunks: int) -> float:
    chunksize = math.ceil(items / chunks)
    start = time.perf_counter()
    values = view.map_async(square, range(items), chunksize=chunksize).get(timeout=RUN_TIMEOUT)
    end = time.perf_counter()
    check(list(values), [x * x for x in range(items)], "ipyparallel")
    return end - start


# -- watching 1,000 jobs ----------------------------------------------------------
def watcher_cpu() -> float:
    """CPU seconds (user + system) used so far by the ``celerynb-watcher`` thread."""
    import psutil

    ids = [t.native_id for t in threading.enumerate() if t.name == "celerynb-watcher"]
    if not ids:
        raise RuntimeError("no celerynb-watcher thread in this process")
    for thread in psutil.Process().threads():
        if thread.id == ids[0]:
            return thread.user_time + thread.system_time
    raise RuntimeError("the celerynb-watcher thread is not listed by psutil")


def sleep_overshoot(seconds: float) -> list[float]:
    """How much later than asked ``time.sleep(SLEEP_STEP)`` returns (s), for ``seconds``."""
    late: list[float] = []
    end = time.perf_counter() + seconds
    while time.perf_counter() < end:
        start = time.perf_counter()
        time.sleep(SLEEP_STEP)
        late.append(time.perf_counter() - start - SLEEP_STEP)
    return late


def subscribed_connections(cluster: Any) -> list[int]:
    """Channels of each connection of this process to the cluster's Redis in pub/sub mode."""
    import psutil
    import redis

    ours = {
        c.laddr.port
        for c in psutil.Process().net_connections(kind="tcp")
        if c.raddr and c.raddr.port == cluster.port
    }
    admin = redis.Redis.from_url(cluster.broker_url, socket_timeout=5)
    try:
        clients = admin.client_list()
    finally:
        admin.close()
    return [
        int(c.get("sub", 0)) + int(c.get("psub", 0))
        for c in clients
        if int(c["addr"].rsplit(":", 1)[1]) in ours
        and int(c.get("sub", 0)) + int(c.get("psub", 0)) > 0
    ]


@dataclass
class IdleWindow:
    watched: int
    cpu: float  # watcher CPU seconds over the window
    seconds: float
    late: list[float]
    subscribed: list[int]


def idle_window(session: Any, cluster: Any) -> IdleWindow:
    cpu0, t0 = watcher_cpu(), time.perf_counter()
    late = sleep_overshoot(IDLE_SECONDS)
    cpu, seconds = watcher_cpu() - cpu0, time.perf_counter() - t0
    return IdleWindow(
        session.watcher.watched_count, cpu, seconds, late, subscribed_connections(cluster)
    )


@dataclass
class Watching:
    idle: list[IdleWindow]
    submit_seconds: float
    finish_seconds: float
    burst_cpu: float
    after: list[int]  # subscribed connections once all are done


def watch_many(cluster: Any, directory: Path) -> Watching:
    session = celerynb.current_session()
    deadline = time.monotonic() + 10.0
    while session.watcher.watched_count and time.monotonic() < deadline:
        time.sleep(0.05)  # finished map chunks leave the watcher on its next step
    print("watching: 0 jobs, idle window ...", flush=True)
    idle = [idle_window(session, cluster)]
    gate = directory / "gate"
    print(f"watching: submitting {WATCHED_JOBS:,} gated jobs ...", flush=True)
    try:
        start = time.perf_counter()
        jobs = [celerynb.submit(gated, str(gate)) for _ in range(WATCHED_JOBS)]
        submit_seconds = time.perf_counter() - start
        if not session.watcher.sync(timeout=30.0):
            raise RuntimeError("the watcher did not catch up with 1,000 new jobs in 30 s")
        print(f"watching: {WATCHED_JOBS:,} jobs, idle window ...", flush=True)
        idle.append(idle_window(session, cluster))
        cpu0, start = watcher_cpu(), time.perf_counter()
        gate.touch()
        done, pending = celerynb.wait(jobs, timeout=RUN_TIMEOUT)
        finish_seconds = time.perf_counter() - start
        burst_cpu = watcher_cpu() - cpu0
        if pending:
            raise RuntimeError(
                f"{len(pending)} gated jobs not done {RUN_TIMEOUT:.0f}s after the gate"
            )
        if not all(job.result(timeout=0) for job in jobs):
            raise RuntimeError("a gated job gave up waiting for its gate")
    finally:
        gate.touch()  # never leave workers waiting, whatever happened
    time.sleep(0.5)  # the watcher unsubscribes finished jobs on its next step
    return Watching(
        idle, submit_seconds, finish_seconds, burst_cpu, subscribed_connections(cluster)
    )


# -- contenders with clusters of their own ------------------------------------------
def run_dask(items: int, runs: int, warmup: int, directory: Path) -> Result:
    if importlib.util.find_spec("distributed") is None:
        return Result("dask.distributed client.map + gather", note=NOT_INSTALLED)
    with dask_client(directory) as client:
        return measure(
            "dask.distributed client.map + gather",
            lambda n: dask_run(client, n),
            items,
            runs,
            warmup,
        )


@contextlib.contextmanager
def ipyparallel_view(directory: Path) -> Iterator[Any]:
    """A load-balanced view on ``ipp.Cluster(n=2)``, or None when ipyparallel is missing."""
    if importlib.util.find_spec("ipyparallel") is None:
        yield None
        return
    with ipp_client(directory) as client:
        yield client.load_balanced_view()


def measure_in_turns(
    plain: CelerynbMap, view: Any, items: int, runs: int, warmup: int
) -> tuple[Result, Result]:
    """celerynb.map and ipyparallel (as many chunks as celerynb.map made) at ``items``,
    their timed runs taken in turns: ours, theirs, ours, theirs..."""
    ours = Result("celerynb.map", items)
    print(
        f"celerynb.map / ipyparallel in turns: warm-up + {runs} x {items:,} items ...", flush=True
    )
    plain.run(warmup)
    ours.seconds.append(plain.run(items))  # tells how many chunks celerynb.map makes
    chunks = plain.chunks[items]
    theirs = Result(f"ipyparallel map_async, {chunks} chunks (as celerynb)", items)
    if view is None:
        theirs.note = NOT_INSTALLED
        ours.seconds += [plain.run(items) for _ in range(runs - 1)]
        return ours, theirs
    ipyparallel_run(view, warmup, chunks)
    for turn in range(runs):
        if turn:
            ours.seconds.append(plain.run(items))
        theirs.seconds.append(ipyparallel_run(view, items, chunks))
    return ours, theirs


# -- report -----------------------------------------------------------------------
HEADER = ("contender", "items/run", "runs", "median items/s", "best items/s", "celerynb/that")


def throughput_row(result: Result, ours: float | None) -> tuple[str, ...]:
    if not result.seconds:
        return (result.name, "-", "-", result.note, "", "")
    return (
        result.name,
        f"{result.items:,}",
        str(len(result.seconds)),
        f"{result.median:,.0f}",
        f"{result.best:,.0f}",
        "-" if ours is None else f"{ours / result.median:,.2f}x",
    )


def ms(seconds: float) -> str:
    return f"{seconds * 1000:.2f} ms"


def watching_rows(w: Watching) -> list[tuple[str, ...]]:
    def cpu(window: IdleWindow) -> str:
        return f"{window.cpu * 1000:.0f} ms ({100 * window.cpu / window.seconds:.1f}% core)"

    def subs(counts: list[int]) -> str:
        return f"{len(counts)} ({', '.join(f'{c:,} ch' for c in counts) or '-'})"

    return [
        ("jobs watched by this process", *(f"{i.watched:,}" for i in w.idle)),
        (f"watcher CPU over {IDLE_SECONDS:.0f} s idle", *(cpu(i) for i in w.idle)),
        ("main thread sleep(10 ms) late, p50", *(ms(percentile(i.late, 50)) for i in w.idle)),
        ("main thread sleep(10 ms) late, p99", *(ms(percentile(i.late, 99)) for i in w.idle)),
        ("Redis pub/sub connections (channels)", *(subs(i.subscribed) for i in w.idle)),
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--quick",
        action="store_true",
        help="2,000 items (rate extrapolated) for one-task-per-item contenders, fewer runs",
    )
    args = parser.parse_args()
    fast_runs = 3 if args.quick else 5
    slow_items = 2_000 if args.quick else N  # raw Celery and dask do ~600 items/s here
    slow_runs = 3

    started = time.perf_counter()
    results: dict[str, Result] = {}
    plain, live = CelerynbMap(), LiveBar()
    with tempfile.TemporaryDirectory(prefix="bench-map-") as tmp:
        directory = Path(tmp)
        # Keep the benchmark's 1,000 jobs out of the user's job store.
        os.environ.setdefault("CELERYNB_STORE", str(directory / "jobs.sqlite3"))
        with contextlib.ExitStack() as stack:
            print("celerynb: starting LocalCluster(processes=2) ...", flush=True)
            cluster = stack.enter_context(celerynb.LocalCluster(processes=2))
            celerynb.connect(cluster)
            with ipyparallel_view(directory) as view:
                equal = {
                    items: measure_in_turns(plain, view, items, fast_runs, 1_000)
                    for items in (N, BIG)
                }
            results["ours"], ipp = equal[N]
            results["shown"] = measure(
                "celerynb.map, shown as live text bar", live.run, N, fast_runs, 1_000
            )
            for big in (100_000, 1_000_000):
                results[f"shown {big}"] = measure(
                    "celerynb.map, shown as live text bar", live.run, big, 3, 1_000
                )
            results["ours 1M"], ipp_big = equal[BIG]
            # psutil reads thread CPU times and this process's sockets (dask requires it).
            has_psutil = importlib.util.find_spec("psutil") is not None
            watching = watch_many(cluster, directory) if has_psutil else None

            raw_app = Celery("bench-raw", broker=cluster.broker_url, backend=cluster.backend_url)
            stack.callback(raw_app.close)
            results["raw"] = measure(
                "raw Celery, a task per item",
                lambda n: raw_celery_run(raw_app, n),
                slow_items,
                slow_runs,
                200,
            )
            results["chunks 10"] = measure(
                "Celery chunks of 10",
                lambda n: celery_chunks_run(raw_app, 10, n),
                N,
                slow_runs,
                1_000,
            )
            size = math.ceil(N / plain.chunks[N])  # as many chunks as celerynb.map made
            results["chunks same"] = measure(
                f"Celery chunks of {size:,} (as celerynb)",
                lambda n: celery_chunks_run(raw_app, size, n),
                N,
                fast_runs,
                1_000,
            )
        # The celerynb cluster is stopped: dask gets the machine to itself.
        results["dask"] = run_dask(slow_items, slow_runs, 200, directory)
        results["ipp"], results["ipp 1M"] = ipp, ipp_big

    ours = results["ours"].median
    contenders = ["raw", "chunks 10", "chunks same", "dask", "ipp"]
    print()
    print(
        f"celerynb {celerynb.__version__}, Python {platform.python_version()}, "
        f"{os.cpu_count()} CPUs, {'--quick' if args.quick else 'full run'}; "
        f"items are x -> x * x (the Celery rows: a no-op task), 2 worker processes each"
    )
    ours_big = results["ours 1M"].median

    def baseline(key: str) -> float | None:  # each contender against celerynb at its N
        if key.startswith("shown 1") or key == "ours 1M":
            return None
        return ours_big if key == "ipp 1M" else ours

    rows = [throughput_row(r, baseline(k)) for k, r in results.items()]
    print_table(HEADER, rows)
    measured = [results[k] for k in contenders if results[k].seconds]
    ahead = all(ours > r.median for r in measured)
    print(
        f"goals: celerynb.map >= {GOAL_RATE:,.0f} items/s at N={N:,}: "
        f"{'yes' if ours >= GOAL_RATE else 'NO'} ({ours:,.0f}); ahead of each contender: "
        f"{'yes' if ahead else 'NO'}"
        + ("" if len(measured) == len(contenders) else " (some not installed)")
    )
    print()
    print_equal_chunking(plain, results)
    print()
    if slow_items < N:
        print(f"raw Celery and dask: {slow_items:,} items per run, rate extrapolated")
    submits = plain.submit_seconds[N]
    print(
        f"celerynb.map, N={N:,}: map() itself (pickle + send {plain.chunks[N]} chunks) took "
        f"{ms(statistics.median(submits))} of {ms(statistics.median(results['ours'].seconds))} "
        "(medians)"
    )
    print_live(live)
    print()
    if watching is None:
        print(f"cost of watching {WATCHED_JOBS:,} jobs: not measured, needs psutil")
    else:
        print_watching(watching)
    print(
        f"threads alive at exit: {threading.active_count()}; "
        f"total time: {time.perf_counter() - started:.1f} s"
    )


def print_watching(watching: Watching) -> None:
    """The cost-of-watching table and what happened once the gate opened."""
    print(
        f"cost of watching {WATCHED_JOBS:,} jobs (this process, celerynb LocalCluster; "
        f"thread CPU is counted in {1000 / os.sysconf('SC_CLK_TCK'):.0f} ms ticks)"
    )
    print_table(("measurement", "0 jobs", f"{WATCHED_JOBS:,} jobs"), watching_rows(watching))
    rate = WATCHED_JOBS / watching.finish_seconds
    print(
        f"submit {WATCHED_JOBS:,} shipped jobs: {watching.submit_seconds:.2f} s; gate opened: "
        f"all done in {watching.finish_seconds:.2f} s ({rate:,.0f} jobs/s on 2 processes); "
        f"watcher CPU during that: {watching.burst_cpu * 1000:.0f} ms "
        f"({100 * watching.burst_cpu / watching.finish_seconds:.1f}% core)"
    )
    subscribed = watching.idle[-1].subscribed
    total = sum(subscribed)
    verdict = (
        "as expected: one pattern covers the jobs, no channel of their own"
        if total < WATCHED_JOBS
        else "expected a few: a channel per job?"
    )
    print(
        f"pub/sub connections with {WATCHED_JOBS:,} jobs watched: {len(subscribed)}, holding "
        f"{total} subscriptions in all ({verdict}; one connection listens to worker "
        f"heartbeats); after they finished: {len(watching.after)} "
        f"({', '.join(map(str, watching.after))} ch)"
    )


def print_equal_chunking(plain: CelerynbMap, results: dict[str, Result]) -> None:
    """celerynb.map against ipyparallel with the same chunks and processes, both sizes."""
    print(
        "equal chunking: celerynb.map vs ipyparallel map_async, the same chunks, "
        "2 worker processes each (medians; issue 15's goal: >= 1.0x at both sizes)"
    )
    rows = []
    for items, ours, theirs in (
        (N, results["ours"], results["ipp"]),
        (BIG, results["ours 1M"], results["ipp 1M"]),
    ):
        ratio = f"{ours.median / theirs.median:.2f}x" if theirs.seconds else theirs.note
        rows.append(
            (
                f"{items:,}",
                str(plain.chunks[items]),
                f"{ours.median:,.0f}",
                f"{theirs.median:,.0f}" if theirs.seconds else "-",
                ratio,
            )
        )
    print_table(
        ("items", "chunks", "celerynb.map items/s", "ipyparallel items/s", "celerynb/ipyparallel"),
        rows,
    )


def print_live(live: LiveBar) -> None:
    """Per size: aggregated updates heard, bar positions and text redraws of each run."""
    for items in (N, 100_000, 1_000_000):
        runs = live.runs.get(items, [])
        if runs:
            updates, positions, draws, _ = zip(*runs)
            print(
                f"live bar, N={items:,}: aggregated updates heard before done {list(updates)}, "
                f"distinct bar positions {list(positions)}, text redraws {list(draws)}"
            )
    print(f"live bar, last final line: {runs[-1][3]}")


if __name__ == "__main__":
    sys.exit(main())
