"""Soak: 1,000 celerynb jobs kept in flight for minutes, against a private LocalCluster.

Not part of the CI suite. Starts a private ``celerynb.LocalCluster(processes=2)`` (its own
redis-server and a prefork Celery worker, concurrency 2) and, for ``--minutes`` (10 by
default), keeps about 1,000 jobs unfinished in this process: 1,000 at once, then topped
up every 0.2 s as jobs finish (a done callback counts them). Each job is a shipped
function doing 20 steps of 5-20 ms over ``celerynb.tqdm`` and returning a value derived
from its input; 2 % raise a ValueError on purpose; 1 % run with 150 ms steps and are
cancelled (``Job.cancel()``) once their progress shows step 3. Then no more submissions,
and every job still in flight has a bounded time to finish (the drain).

Measured and checked:

1. Final states: every job ends SUCCESS with the right result (and its bar at 20/20),
   FAILURE with its own ValueError, or REVOKED (cancelled; the backend must say REVOKED
   too, not SUCCESS). Goals: 0 mismatches, 0 jobs unfinished at the drain deadline.
2. Memory of this (kernel) process over time: every 30 s (10 s with --quick) the RSS
   (psutil), tracemalloc's current size, ``watcher.watched_count``, threads and the
   registry size (``len(celerynb.jobs())``); the growth from the first sample after the
   warm-up to the end of the soak. The registry keeps up to 10,000 finished jobs by
   design (``celerynb._registry.MAX_JOBS_KEPT``): memory grows until that cap, then
   should plateau. Goal: flat once the cap is reached.
3. Throughput (jobs finished per second), the ``celerynb-watcher`` thread's CPU time
   (``/proc/self/task/<id>/stat``) and how late finished jobs reach this process
   (``time.time()`` at the done callback minus at the task's return, same machine):
   a watcher that falls behind shows as a growing lag.

Run from the repository root (needs psutil):

    .venv/bin/python benchmarks/soak.py               # 10 min + drain, about 13 min
    .venv/bin/python benchmarks/soak.py --quick       # 90 s + drain, about 4 min
    .venv/bin/python benchmarks/soak.py --minutes 60  # longer
"""

from __future__ import annotations

import argparse
import os
import platform
import queue
import sys
import tempfile
import threading
import time
import tracemalloc
from array import array
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from _report import percentile, print_table

import celerynb
from celerynb._registry import MAX_JOBS_KEPT, registry

IN_FLIGHT = 1_000
STEPS = 20
STEP_SECONDS = (0.005, 0.020)
CANCEL_STEP_SECONDS = 0.15  # jobs to cancel run longer: caught mid-run at a 0.2 s poll
CANCEL_AT_STEP = 3
FAIL_EVERY, FAIL_AT = 50, 17  # index % 50 == 17: 2 % raise
CANCEL_EVERY, CANCEL_AT = 100, 42  # index % 100 == 42: 1 % cancelled mid-run
POLL_SECONDS = 0.2
DRAIN_TIMEOUT = 300.0  # seconds after the soak for the last ~1,000 jobs to finish
SETTLE_TIMEOUT = 10.0  # seconds for the watcher to let go of finished jobs at the end
MAX_DETAILS = 10  # mismatch descriptions kept


# -- task body (shipped by value to the workers) ----------------------------------
def stepper(index: int, steps: int, low: float, high: float, fail: bool) -> tuple[int, float]:
    """``steps`` sleeps of ``low``-``high`` s over celerynb.tqdm; ``(value, time.time())``."""
    import random
    import time

    from celerynb import tqdm

    rng = random.Random(index)
    total = 0
    for i in tqdm(range(steps), desc=f"job {index}"):
        time.sleep(rng.uniform(low, high))
        total += i
    if fail:
        raise ValueError(f"deliberate failure of job {index}")
    return index * 1_000 + total, time.time()


def expected_value(index: int) -> int:
    return index * 1_000 + STEPS * (STEPS - 1) // 2


def kind_of(index: int) -> str:
    if index % FAIL_EVERY == FAIL_AT:
        return "fail"
    if index % CANCEL_EVERY == CANCEL_AT:
        return "cancel"
    return "ok"


# -- this process -----------------------------------------------------------------
TICK = os.sysconf("SC_CLK_TCK")


def thread_cpu(native_id: int) -> float:
    """CPU seconds (user + system) of one thread of this process, from /proc."""
    with open(f"/proc/self/task/{native_id}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICK  # utime, stime (fields 14, 15)


class WatcherClock:
    """CPU seconds of the ``celerynb-watcher`` thread(s), summed over every one seen."""

    def __init__(self) -> None:
        self.seen: dict[int, float] = {}

    def read(self) -> float:
        for thread in threading.enumerate():
            if thread.name == "celerynb-watcher" and thread.native_id is not None:
                try:
                    self.seen[thread.native_id] = thread_cpu(thread.native_id)
                except OSError:
                    pass  # it just ended: keep its last reading
        return sum(self.seen.values())


@dataclass
class Sample:
    t: float
    phase: str
    in_flight: int
    watched: int
    registry: int
    submitted: int
    finished: int
    rss: int
    traced: int
    tracing: int  # tracemalloc's own memory (its traces), part of the RSS
    threads: int
    py_threads: int
    watcher_cpu: float
    lags: list[float]  # seconds, jobs that finished since the previous sample


@dataclass
class Tally:
    submitted: Counter[str] = field(default_factory=Counter)
    ended: Counter[str] = field(default_factory=Counter)  # kind -> ended as expected
    mismatches: list[str] = field(default_factory=list)
    mismatch_count: int = 0
    bar_not_full: int = 0
    cancel_missed: int = 0  # designated, but finished before seen mid-run
    cancelled_ids: list[str] = field(default_factory=list)
    submit_errors: int = 0
    lags: array[float] = field(default_factory=lambda: array("d"))  # 8 bytes a job
    finished: int = 0

    def mismatch(self, text: str) -> None:
        self.mismatch_count += 1
        if len(self.mismatches) < MAX_DETAILS:
            self.mismatches.append(text)


@dataclass
class Flight:
    job: celerynb.Job
    index: int
    kind: str
    cancelled_at_n: float | None = None


def check(flight: Flight, called_at: float, tally: Tally) -> None:
    """Compare one finished job with what it should have ended as."""
    job, index, kind = flight.job, flight.index, flight.kind
    tally.finished += 1
    where = f"job {index} ({kind}, {job.id})"
    if job.cancelled():
        if kind == "cancel" and job.state == "REVOKED":
            tally.ended["cancel"] += 1
            tally.cancelled_ids.append(job.id)
        else:
            tally.mismatch(f"{where}: cancelled, state {job.state}")
        return
    error = job.exception(timeout=0)
    if kind == "fail":
        message = f"deliberate failure of job {index}"
        if job.state == "FAILURE" and type(error) is ValueError and str(error) == message:
            tally.ended["fail"] += 1
        else:
            tally.mismatch(f"{where}: state {job.state}, exception {error!r}")
        return
    if error is not None:
        tally.mismatch(f"{where}: state {job.state}, exception {type(error).__name__}: {error}")
        return
    value, returned_at = job.result(timeout=0)
    tally.lags.append(called_at - returned_at)
    if job.state != "SUCCESS" or value != expected_value(index):
        tally.mismatch(f"{where}: state {job.state}, value {value!r}")
        return
    if job.progress.n != STEPS or job.progress.total != STEPS:
        tally.bar_not_full += 1
    if kind == "cancel":
        tally.cancel_missed += 1  # the harness never saw it mid-run: not celerynb's fault
    else:
        tally.ended["ok"] += 1


# -- the soak ---------------------------------------------------------------------
class Soak:
    def __init__(self, duration: float, warmup: float, sample_every: float) -> None:
        self.duration = duration
        self.warmup = warmup
        self.sample_every = sample_every
        self.session = celerynb.current_session()
        self.process = _psutil().Process()
        self.clock = WatcherClock()
        self.tally = Tally()
        self.samples: list[Sample] = []
        self.flying: dict[str, Flight] = {}
        self.to_cancel: dict[str, Flight] = {}
        self.done: queue.SimpleQueue[tuple[celerynb.Job, float]] = queue.SimpleQueue()
        self.next_index = 0
        self.lags_since_sample: list[float] = []
        self.start = 0.0
        self.soak_end = 0.0
        self.drain_end = 0.0

    def on_done(self, job: celerynb.Job) -> None:  # watcher thread (or main, on cancel)
        self.done.put((job, time.time()))

    def submit(self, count: int) -> None:
        for _ in range(count):
            index = self.next_index
            self.next_index += 1
            kind = kind_of(index)
            low, high = STEP_SECONDS
            if kind == "cancel":
                low = high = CANCEL_STEP_SECONDS
            try:
                job = celerynb.submit(stepper, index, STEPS, low, high, kind == "fail")
            except celerynb.CelerynbError as exc:
                self.tally.submit_errors += 1
                print(f"  submit failed: {exc}", flush=True)
                continue
            flight = Flight(job, index, kind)
            self.flying[job.id] = flight
            if kind == "cancel":
                self.to_cancel[job.id] = flight
            self.tally.submitted[kind] += 1
            job.add_done_callback(self.on_done)

    def collect(self) -> None:
        while True:
            try:
                job, called_at = self.done.get_nowait()
            except queue.Empty:
                return
            flight = self.flying.pop(job.id)
            self.to_cancel.pop(job.id, None)
            before = len(self.tally.lags)
            check(flight, called_at, self.tally)
            self.lags_since_sample.extend(self.tally.lags[before:])

    def cancel_running(self) -> None:
        for flight in list(self.to_cancel.values()):
            job = flight.job
            if job.state == "PROGRESS" and job.progress.n >= CANCEL_AT_STEP:
                flight.cancelled_at_n = job.progress.n
                del self.to_cancel[job.id]
                job.cancel()  # its done callback runs now, in this thread

    def sample(self, phase: str) -> Sample:
        s = Sample(
            t=time.monotonic() - self.start,
            phase=phase,
            in_flight=len(self.flying),
            watched=self.session.watcher.watched_count,
            registry=len(celerynb.jobs()),
            submitted=self.next_index,
            finished=self.tally.finished,
            rss=self.process.memory_info().rss,
            traced=tracemalloc.get_traced_memory()[0],
            tracing=tracemalloc.get_tracemalloc_memory(),
            threads=self.process.num_threads(),
            py_threads=threading.active_count(),
            watcher_cpu=self.clock.read(),
            lags=self.lags_since_sample,
        )
        self.lags_since_sample = []
        self.samples.append(s)
        lag = f"{percentile(s.lags, 99) * 1000:.0f} ms" if s.lags else "-"
        print(
            f"  t={s.t:5.0f}s {phase:5} in flight {s.in_flight:5,}  finished {s.finished:6,}  "
            f"watched {s.watched:5,}  registry {s.registry:6,}  RSS {s.rss / 2**20:6.1f} MB  "
            f"traced {s.traced / 2**20:6.1f} MB  threads {s.threads}  lag p99 {lag}",
            flush=True,
        )
        return s

    def run(self) -> None:
        self.start = time.monotonic()
        self.sample("start")
        end = self.start + self.duration
        next_sample = self.start + self.sample_every
        while True:
            now = time.monotonic()
            soaking = now < end
            self.collect()
            if soaking:
                self.submit(IN_FLIGHT - len(self.flying))
            self.cancel_running()
            if not soaking and not self.soak_end:
                self.soak_end = now
                self.sample("end")
                next_sample = now + self.sample_every
                print(f"soak over: draining {len(self.flying):,} jobs ...", flush=True)
            elif now >= next_sample:
                self.sample("soak" if soaking else "drain")
                next_sample += self.sample_every
            if not soaking and (not self.flying or now > end + DRAIN_TIMEOUT):
                break
            time.sleep(POLL_SECONDS)
        self.drain_end = time.monotonic()
        # Let the watcher let go of the last jobs and the revoker record the last cancels.
        deadline = time.monotonic() + SETTLE_TIMEOUT
        while time.monotonic() < deadline and (
            self.session.watcher.watched_count
            or any(t.name == "celerynb-revoke" for t in threading.enumerate())
        ):
            time.sleep(0.1)
        self.collect()
        self.sample("after")

    def backend_not_revoked(self) -> Counter[str]:
        """States the result backend holds for the cancelled jobs, other than REVOKED."""
        app = self.session.app
        states = Counter(app.AsyncResult(tid).state for tid in self.tally.cancelled_ids)
        states.pop("REVOKED", None)
        return states


def _psutil() -> Any:
    try:
        import psutil
    except ImportError:
        sys.exit("the soak needs psutil: pip install psutil")
    return psutil


# -- report -----------------------------------------------------------------------
def mb(n: float) -> str:
    return f"{n / 2**20:,.1f} MB"


def signed_mb(n: float) -> str:
    return f"{n / 2**20:+,.1f} MB"


def lag_ms(lags: list[float], q: float) -> str:
    return f"{percentile(lags, q) * 1000:,.0f}" if lags else "-"


def report_states(soak: Soak) -> bool:
    tally = soak.tally
    unfinished = Counter(f.job.state for f in soak.flying.values())
    backend = soak.backend_not_revoked()
    expected = {
        "ok": tally.submitted["ok"],
        "fail": tally.submitted["fail"],
        "cancel": tally.submitted["cancel"] - tally.cancel_missed,
    }

    def row(what: str, got: int, want: int) -> tuple[str, str, str, str]:
        return (what, f"{got:,}", f"{want:,}", "yes" if got == want else "NO")

    rows = [
        ("jobs submitted", f"{soak.next_index:,}", "-", "-"),
        row("ended SUCCESS, right value", tally.ended["ok"], expected["ok"]),
        row("ended FAILURE, its own ValueError", tally.ended["fail"], expected["fail"]),
        row("cancelled mid-run, ended REVOKED", tally.ended["cancel"], expected["cancel"]),
        row("mismatches (state, value or exception)", tally.mismatch_count, 0),
        row(f"unfinished {DRAIN_TIMEOUT:.0f} s after the soak", len(soak.flying), 0),
        row("cancelled, backend state not REVOKED", sum(backend.values()), 0),
        row(f"SUCCESS with the bar not at {STEPS}/{STEPS}", tally.bar_not_full, 0),
        row("to cancel, finished before seen mid-run", tally.cancel_missed, 0),
        row("submissions refused", tally.submit_errors, 0),
    ]
    print_table(("final states", "got", "expected", "ok"), rows)
    for text in tally.mismatches:
        print(f"  mismatch: {text}")
    if unfinished:
        print(f"  unfinished at the deadline, by state: {dict(unfinished)}")
    if backend:
        print(f"  backend states of cancelled jobs, besides REVOKED: {dict(backend)}")
    return all(r[3] != "NO" for r in rows)


def report_samples(soak: Soak) -> None:
    rows = []
    previous: Sample | None = None
    for s in soak.samples:
        if previous is None:
            rate = cpu = "-"
        else:
            span = s.t - previous.t
            rate = f"{(s.finished - previous.finished) / span:,.1f}" if span > 0 else "-"
            used = s.watcher_cpu - previous.watcher_cpu
            cpu = f"{100 * used / span:.1f}%" if span > 0 else "-"
        rows.append(
            (
                f"{s.t:,.0f}",
                s.phase,
                f"{s.in_flight:,}",
                f"{s.watched:,}",
                f"{s.registry:,}",
                f"{s.finished:,}",
                rate,
                mb(s.rss),
                mb(s.traced),
                f"{s.threads}/{s.py_threads}",
                cpu,
                lag_ms(s.lags, 50),
                lag_ms(s.lags, 99),
            )
        )
        previous = s
    header = (
        "t (s)",
        "phase",
        "in flight",
        "watched",
        "registry",
        "finished",
        "jobs/s",
        "RSS",
        "traced",
        "threads os/py",
        "watcher CPU",
        "lag p50 ms",
        "lag p99 ms",
    )
    print_table(header, rows)
    print(
        "jobs/s and watcher CPU (% of a core): since the previous sample; lag: a job's "
        "return on the worker to its done callback here, for the jobs finished since"
    )


def report_growth(soak: Soak) -> None:
    soaking = [s for s in soak.samples if s.phase in ("soak", "end")]
    after_warmup = [s for s in soaking if s.t >= soak.warmup]
    if len(after_warmup) < 2:
        print("memory growth: not enough samples after the warm-up (run longer)")
        return
    first, last = after_warmup[0], after_warmup[-1]
    final = soak.samples[-1]
    finished = last.finished - first.finished

    def per_job(delta: int) -> str:
        return f"{delta / finished:,.0f} B" if finished > 0 else "-"

    def row(what: str, get: Any, show: Any) -> tuple[str, ...]:
        change = get(last) - get(first)
        return (what, show(get(first)), show(get(last)), show(change, True), show(get(final)))

    def size(n: int, signed: bool = False) -> str:
        return signed_mb(n) if signed else mb(n)

    def count(n: int, signed: bool = False) -> str:
        return f"{n:+,}" if signed else f"{n:,}"

    rows = [
        row("RSS", lambda s: s.rss, size),
        row("tracemalloc current", lambda s: s.traced, size),
        row("tracemalloc's own traces (in RSS)", lambda s: s.tracing, size),
        row("watched by the watcher", lambda s: s.watched, count),
        row("threads (os)", lambda s: s.threads, count),
        row("registry (jobs())", lambda s: s.registry, count),
        row("jobs finished", lambda s: s.finished, count),
    ]
    print(
        f"memory growth over the soak, t={first.t:,.0f} s (first sample after the "
        f"{soak.warmup:,.0f} s warm-up) to t={last.t:,.0f} s (end of the soak); and after "
        f"the drain (t={final.t:,.0f} s, nothing in flight):"
    )
    header = ("kernel side", "first", "end of soak", "change", "after drain")
    print_table(header, rows)
    cap = registry.max_kept
    top = max(s.registry for s in soak.samples)
    print(
        f"per job finished during the soak (another is submitted for each): RSS "
        f"{per_job(last.rss - first.rss)}, tracemalloc {per_job(last.traced - first.traced)}"
    )
    lowered = "" if cap == MAX_JOBS_KEPT else f", lowered from {MAX_JOBS_KEPT:,} (--registry-cap)"
    design = (
        f"the registry keeps up to {cap:,} jobs by design (MAX_JOBS_KEPT{lowered}), letting "
        "the oldest tenth of the finished ones go beyond that"
    )
    capped = [s for s in soaking if s.registry >= cap - cap // 10]
    if not capped or capped[0] is last:
        print(
            f"{design}; it held at most {top:,} here, so the cap was not reached and memory "
            "growing with it is expected; a plateau can only show once it is (run longer, "
            "or lower it with --registry-cap)"
        )
        return
    at = capped[0]
    print(
        f"{design}; it reached {at.registry:,} at t={at.t:,.0f} s. Since then: RSS "
        f"{signed_mb(last.rss - at.rss)}, tracemalloc {signed_mb(last.traced - at.traced)} "
        f"over {last.finished - at.finished:,} more jobs (expected: flat)"
    )


def report_rates(soak: Soak) -> None:
    tally = soak.tally
    steady = [s for s in soak.samples if s.phase in ("soak", "end") and s.t >= soak.warmup]
    if len(steady) >= 2 and steady[-1].t > steady[0].t:
        rate = (steady[-1].finished - steady[0].finished) / (steady[-1].t - steady[0].t)
        print(
            f"throughput: {rate:,.2f} jobs/s finished with {IN_FLIGHT:,} in flight "
            f"(t={steady[0].t:,.0f}-{steady[-1].t:,.0f} s)",
            end="; ",
        )
    total = soak.drain_end - soak.start
    drained = soak.drain_end - soak.soak_end
    end_sample = next(s for s in soak.samples if s.phase == "end")
    print(
        f"overall {tally.finished:,} jobs in {total:,.0f} s ({tally.finished / total:,.2f}/s); "
        f"drain: {end_sample.in_flight:,} jobs in {drained:,.0f} s"
    )
    cpu = soak.samples[-1].watcher_cpu - soak.samples[0].watcher_cpu
    print(
        f"watcher thread CPU: {cpu:,.1f} s over {total:,.0f} s ({100 * cpu / total:.1f}% of a "
        f"core; {1000 / TICK:.0f} ms ticks), {1000 * cpu / max(tally.finished, 1):.1f} ms per "
        f"job; watcher threads seen: {len(soak.clock.seen)}; status: {soak.session.watcher.status}"
    )
    if tally.lags:
        print(
            f"lag, worker return -> done here ({len(tally.lags):,} successes): p50 "
            f"{lag_ms(tally.lags, 50)} ms, p99 {lag_ms(tally.lags, 99)} ms, max "
            f"{max(tally.lags) * 1000:,.0f} ms"
        )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="90 s, a sample every 10 s")
    parser.add_argument("--minutes", type=float, default=None, help="soak length (default 10)")
    parser.add_argument(
        "--registry-cap",
        type=int,
        default=MAX_JOBS_KEPT,
        help=f"finished jobs the registry keeps (celerynb's default {MAX_JOBS_KEPT:,}); "
        "lower it to see the plateau in a shorter run",
    )
    args = parser.parse_args()
    minutes = args.minutes if args.minutes is not None else (1.5 if args.quick else 10.0)
    sample_every = 10.0 if args.quick else 30.0
    warmup = 2 * sample_every
    registry.max_kept = args.registry_cap
    _psutil()

    started = time.perf_counter()
    tracemalloc.start()
    with tempfile.TemporaryDirectory(prefix="soak-") as tmp:
        # Keep the soak's thousands of jobs out of the user's job store.
        os.environ.setdefault("CELERYNB_STORE", str(Path(tmp) / "jobs.sqlite3"))
        print("celerynb: starting LocalCluster(processes=2) ...", flush=True)
        with celerynb.LocalCluster(processes=2) as cluster:
            celerynb.connect(cluster)
            print(
                f"soak: {IN_FLIGHT:,} jobs in flight for {minutes:g} min, a sample every "
                f"{sample_every:.0f} s (warm-up {warmup:.0f} s) ...",
                flush=True,
            )
            soak = Soak(minutes * 60, warmup, sample_every)
            soak.run()
            print()
            print(
                f"celerynb {celerynb.__version__}, Python {platform.python_version()}, "
                f"{os.cpu_count()} CPUs, {'--quick' if args.quick else 'full run'}, "
                f"{minutes:g} min; jobs: {STEPS} steps of {STEP_SECONDS[0] * 1000:.0f}-"
                f"{STEP_SECONDS[1] * 1000:.0f} ms over celerynb.tqdm, 2 worker processes"
            )
            ok = report_states(soak)
            print()
            report_samples(soak)
            print()
            report_growth(soak)
            print()
            report_rates(soak)
    tracemalloc.stop()
    print(
        f"goals: every job in its expected final state, none unfinished: "
        f"{'yes' if ok else 'NO'}; threads alive at exit: {threading.active_count()}; "
        f"total time: {time.perf_counter() - started:,.1f} s"
    )
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
