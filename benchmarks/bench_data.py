"""Round trip of big numpy arrays: celerynb against dask, ipyparallel, Ray and this
machine's limits.

One float64 array of 10 MB, 100 MB and 1 GB goes to a worker as the argument of
``f(x) = x + 1`` (the same function for everyone) and the result comes back. Timed from
submission to the result in hand; every result is then checked (shape, ends, exact sum;
not timed). Everything runs on this machine, one contender after the other (never
concurrently), each with two worker processes:

1. celerynb, ``LocalCluster(processes=2)``: ``submit(f, x).result()`` (frames over the
   inline limit go through the session's Redis in chunks, by signed reference), and
   ``s = scatter(x); submit(f, s).result()`` (scatter timed too).
2. dask.distributed, ``LocalCluster(n_workers=2, threads_per_worker=1, processes=True)``:
   ``client.gather(client.submit(f, client.scatter(x)))``, and ``client.submit(f, x)``
   (the array inside the task graph).
3. ipyparallel, ``Cluster(n=2)``: ``load_balanced_view().apply_sync(f, x)``, and on one
   engine push ``x``, execute ``y = f(x)``, pull ``y``. ipyparallel sends an array's
   memory as its own zmq frame, without pickling or copying it.
4. Ray, ``ray.init(num_cpus=2)``: ``ray.get(f.remote(ray.put(x)))``, and
   ``ray.get(f.remote(x))``. Needs ``pip install ray``; the rows say when it is missing.
5. The limits: a memcpy of the same bytes (``x.copy()``); the signature's digest of
   them (``celerynb._signing.content_digests``, BLAKE3; a round trip signs two
   frames and checks two); redis-py against a private
   redis-server (same binary as celerynb's, limits raised for 1 GB values): one SET
   then one GET of the whole array, and the same bytes SET and read back in pipelined
   2 MiB keys (celerynb's chunk), 8 per round trip; and celerynb's own Redis data
   store on that server (``put`` + ``get``: no signing, no Celery). Each moves the
   data to Redis and back once; a celerynb round trip moves it through Redis twice.

The run goes in rounds (3; 2 with ``--quick``): in each, every contender in turn starts
its cluster, warms up (one 10 MB round trip), does a few timed runs per size and stops,
and the next round takes the contenders in another order, so that the machine's
drifting load weighs on all alike. Reported: median and best seconds over all rounds,
and the median CPU seconds of this process and every process under it (each
contender's workers and servers are), which the machine's other load moves far less
than the seconds. Every run's array has another first element, so no content hash
(dask's scatter, celerynb's scatter cache) can reuse an earlier run.
Peak memory: each process's high-water mark (``/proc/PID/clear_refs``, reset before
each run) above its resident size when the run started, for the kernel (this process),
the busiest worker process (celerynb's pool processes, dask's and Ray's workers,
ipyparallel's engines) and the redis-server of celerynb and raw Redis; medians.
Goals (issue 15): celerynb ahead of dask and ipyparallel at every size, and at least a
quarter of raw Redis's throughput (both redis-py rows).

Needs numpy and the contenders: ``pip install -e '.[bench]' numpy`` (and ``ray``);
rows say so when one is missing. Run from the repository root:

    .venv/bin/python benchmarks/bench_data.py           # full run, about 7 min
    .venv/bin/python benchmarks/bench_data.py --quick   # about 1.5 min: 10 and 100 MB only
    .venv/bin/python benchmarks/bench_data.py --only limits,celerynb --sizes 1GB
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.util
import io
import itertools
import logging
import math
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from _report import dask_client, print_table

import celerynb
from celerynb._signing import content_digests

MB = 10**6
SIZES = {"10 MB": 10 * MB, "100 MB": 100 * MB, "1 GB": 1000 * MB}
RUNS = {"10 MB": 3, "100 MB": 2, "1 GB": 1}  # timed runs per size in each round
ROUNDS = 3  # every contender's cluster is started once per round, in turn
QUICK_RUNS = {"10 MB": 2, "100 MB": 1}
QUICK_ROUNDS = 2
TIMEOUT = 600.0  # seconds; any one round trip
RAW_CHUNK = 2 * 2**20  # bytes per key of the pipelined raw Redis reference
RAW_BATCH = 8  # keys per round trip
NOT_INSTALLED = "not installed (pip install -e '.[bench]')"
WARMUP = "10 MB"
FRESH = itertools.count(1)  # a new first element for every timed run
SUBMIT = "celerynb submit(f, x)"  # the row the others are compared with
SCATTERED = "celerynb scatter(x) + submit(f, s)"
RAW_REDIS = ("raw Redis: one SET + one GET", "raw Redis: pipelined 2 MiB SETs + GETs")
SIGNED = "signing digest of x (4 per round trip)"
STORE_ALONE = "celerynb data store alone: put + get"
GROUPS = ("limits", "celerynb", "dask", "ipyparallel", "ray")


def f(x: Any) -> Any:
    """The work: one pass over the array, a new array of the same size back."""
    return x + 1


def where_celerynb_is() -> str:
    """Where a worker imports celerynb from (shipped to the worker)."""
    import celerynb

    return os.path.dirname(celerynb.__file__)


# -- measurements -----------------------------------------------------------------
Run = Callable[[np.ndarray], Any]  # one round trip: the array there, its result back


@dataclass
class Contender:
    """One way of doing a round trip; ``added`` is what the result adds to ``x``."""

    name: str
    run: Run | None
    added: float = 1.0
    note: str = ""
    seconds: dict[str, list[float]] = field(default_factory=dict)
    kernel: dict[str, list[int]] = field(default_factory=dict)  # peak bytes above start
    worker: dict[str, list[int]] = field(default_factory=dict)
    redis: dict[str, list[int]] = field(default_factory=dict)
    cpu: dict[str, list[float]] = field(default_factory=dict)  # seconds, all processes

    def median(self, size: str) -> float:
        runs = self.seconds.get(size)
        return statistics.median(runs) if runs else math.nan

    def best(self, size: str) -> float:
        runs = self.seconds.get(size)
        return min(runs) if runs else math.nan


Table = dict[str, Contender]  # every contender by name, its runs gathered over the rounds


def entry(table: Table, name: str, added: float = 1.0) -> Contender:
    """The contender of that name (new on the first round), with no run yet."""
    return table.setdefault(name, Contender(name, None, added=added))


class Peaks:
    """High-water marks of resident memory of some processes, from a reset on.

    Linux only: writing 5 to ``/proc/PID/clear_refs`` sets the mark (VmHWM) back to the
    resident size (VmRSS) now. Elsewhere, or for a process not ours, nothing is measured.
    """

    def __init__(self) -> None:
        self._start: dict[int, int] = {}

    @staticmethod
    def _status(pid: int) -> dict[str, int]:
        fields = {}
        with open(f"/proc/{pid}/status") as status:
            for line in status:
                name, _, value = line.partition(":")
                if name in ("VmRSS", "VmHWM"):
                    fields[name] = int(value.split()[0]) * 1024
        return fields

    def reset(self, pids: list[int]) -> None:
        self._start = {}
        for pid in pids:
            try:
                with open(f"/proc/{pid}/clear_refs", "w") as clear:
                    clear.write("5")
                self._start[pid] = self._status(pid)["VmRSS"]
            except (OSError, KeyError):
                pass

    def above_start(self, pids: list[int]) -> int | None:
        """The largest growth among ``pids`` since the reset (None: not measured)."""
        grown = []
        for pid in pids:
            if pid in self._start:
                try:
                    grown.append(self._status(pid)["VmHWM"] - self._start[pid])
                except (OSError, KeyError):
                    pass
        return max(grown) if grown else None


class CpuTime:
    """CPU seconds (user + system) used by this process and every process under it
    (each contender's workers, servers and schedulers are), from ``start()`` on."""

    def __init__(self) -> None:
        self._start: dict[int, float] = {}

    @staticmethod
    def _times() -> dict[int, float]:
        try:
            import psutil
        except ImportError:
            return {}
        me = psutil.Process()
        times = {}
        for process in [me, *me.children(recursive=True)]:
            with contextlib.suppress(psutil.Error):
                used = process.cpu_times()
                times[process.pid] = used.user + used.system
        return times

    def start(self) -> None:
        self._start = self._times()

    def used(self) -> float | None:
        if not self._start:
            return None
        now = self._times()
        return sum(now[pid] - before for pid, before in self._start.items() if pid in now)


def array_of(size: int) -> np.ndarray:
    return np.arange(size // 8, dtype=np.float64)


def check(name: str, y: Any, x: np.ndarray, expected_sum: float, added: float) -> None:
    """The result is ``x + added``: shape, dtype, both ends, and its exact sum (the
    values are integers below 2**53, so the sum is exact in any order)."""
    y = np.asarray(y)
    ok = (
        y.shape == x.shape
        and y.dtype == x.dtype
        and y[0] == x[0] + added
        and y[-1] == x[-1] + added
        and float(y.sum()) == expected_sum + added * x.size
    )
    if not ok:
        raise AssertionError(f"{name}: wrong result for {x.nbytes / MB:,.0f} MB")


@dataclass
class Processes:
    """The pids to watch while a contender runs: workers, and a redis-server if any."""

    workers: Callable[[], list[int]] = list
    redis: Callable[[], list[int]] = list


def measure(
    contenders: list[Contender], processes: Processes, sizes: dict[str, int], runs: dict[str, int]
) -> None:
    """Warm-up, then ``runs[size]`` timed round trips of each contender at each size;
    their ``run`` is dropped afterwards (their cluster goes away)."""
    try:
        measure_now(contenders, processes, sizes, runs)
    except Exception as exc:
        failed(contenders, exc)
    finally:
        for contender in contenders:
            contender.run = None


def measure_now(
    contenders: list[Contender], processes: Processes, sizes: dict[str, int], runs: dict[str, int]
) -> None:
    peaks, cpu, me = Peaks(), CpuTime(), os.getpid()
    ready = [c for c in contenders if c.run is not None]
    for contender in ready:
        assert contender.run is not None
        print(f"{contender.name}: warm-up ...", flush=True)
        x = array_of(SIZES[WARMUP])
        check(contender.name, contender.run(x), x, float(x.sum()), contender.added)
    for size, nbytes in sizes.items():
        x = array_of(nbytes)
        for contender in ready:
            assert contender.run is not None
            print(f"{contender.name}: {runs[size]} x {size} ...", flush=True)
            for _ in range(runs[size]):
                x[0] = next(FRESH)  # another array each run: no content hash matches
                expected = float(x.sum())
                workers, redis = processes.workers(), processes.redis()
                peaks.reset([me, *workers, *redis])
                cpu.start()
                start = time.perf_counter()
                y = contender.run(x)
                seconds = time.perf_counter() - start
                used = cpu.used()
                kernel_peak = peaks.above_start([me])
                worker_peak = peaks.above_start(workers)
                redis_peak = peaks.above_start(redis)
                check(contender.name, y, x, expected, contender.added)
                del y
                contender.seconds.setdefault(size, []).append(seconds)
                if used is not None:
                    contender.cpu.setdefault(size, []).append(used)
                for peak, into in (
                    (kernel_peak, contender.kernel),
                    (worker_peak, contender.worker),
                    (redis_peak, contender.redis),
                ):
                    if peak is not None:
                        into.setdefault(size, []).append(peak)
        del x


def failed(contenders: list[Contender], exc: BaseException) -> None:
    """A contender that broke says why in its rows; the others still run."""
    line = f"failed: {type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
    print(line, file=sys.stderr, flush=True)
    for contender in contenders:
        if not contender.seconds:
            contender.note = line[:100]
        contender.run = None


def descendants(pid: int, name: str = "") -> list[int]:
    """Pids of the processes under ``pid`` (whose name starts with ``name``)."""
    try:
        import psutil
    except ImportError:
        return []
    try:
        children = psutil.Process(pid).children(recursive=True)
    except psutil.Error:
        return []
    found = []
    for child in children:
        with contextlib.suppress(psutil.Error):
            if child.name().startswith(name):
                found.append(child.pid)
    return found


# -- the limits of this machine ---------------------------------------------------------
def memcpy(x: np.ndarray) -> np.ndarray:
    return x.copy()


def signed(x: np.ndarray) -> np.ndarray:
    """The digest celerynb's signature covers, of the bytes (x back as is)."""
    content_digests([x.data.cast("B")])
    return x


@contextlib.contextmanager
def private_redis(directory: Path) -> Iterator[Any]:
    """A redis-server of our own (the binary celerynb's LocalCluster starts), its
    limits raised for 1 GB values; a redis-py client to it."""
    import redis

    from celerynb._redis_server import find_redis_server, free_port

    port = free_port()
    config = directory / "redis.conf"
    config.write_text(
        f'port {port}\nbind 127.0.0.1\nsave ""\nappendonly no\ndir {directory}\n'
        "proto-max-bulk-len 2gb\nclient-query-buffer-limit 2gb\n"
        f"logfile {directory / 'redis.log'}\n"
    )
    server = subprocess.Popen([find_redis_server(), str(config)], stdout=subprocess.DEVNULL)
    client = redis.Redis(port=port, socket_timeout=TIMEOUT)
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                client.ping()
                break
            except redis.ConnectionError:
                if time.monotonic() > deadline or server.poll() is not None:
                    raise
                time.sleep(0.05)
        client.server_pid = server.pid  # type: ignore[attr-defined]
        yield client
    finally:
        client.close()
        server.terminate()
        server.wait(30)


def raw_redis_one_value(client: Any) -> Run:
    def run(x: np.ndarray) -> np.ndarray:
        client.set("bench:raw", x.data.cast("B"))
        data = client.get("bench:raw")
        client.delete("bench:raw")
        return np.frombuffer(data, dtype=x.dtype)

    return run


def raw_redis_chunks(client: Any) -> Run:
    """The bytes as pipelined SETs of ``RAW_CHUNK``-byte keys, read back likewise into
    one buffer (what a reader of chunks must do)."""

    def run(x: np.ndarray) -> np.ndarray:
        view = x.data.cast("B")
        keys = [f"bench:chunk:{i}" for i in range(-(-view.nbytes // RAW_CHUNK))]
        pipe = client.pipeline(transaction=False)
        for index, key in enumerate(keys):
            pipe.set(key, view[index * RAW_CHUNK : (index + 1) * RAW_CHUNK])
            if (index + 1) % RAW_BATCH == 0:
                pipe.execute()
        pipe.execute()
        out = bytearray(view.nbytes)
        offset = 0
        for start in range(0, len(keys), RAW_BATCH):
            for piece in client.mget(keys[start : start + RAW_BATCH]):
                out[offset : offset + len(piece)] = piece
                offset += len(piece)
        client.unlink(*keys)
        return np.frombuffer(out, dtype=x.dtype)

    return run


def data_store_alone(client: Any) -> Run:
    """celerynb's Redis data store on its own: put and get, no signing, no Celery."""
    from celerynb._datastore import RedisDataStore

    store = RedisDataStore(client)

    def run(x: np.ndarray) -> np.ndarray:
        store.put("bench", [x.data.cast("B")], x.nbytes, 60)
        data = store.get("bench", x.nbytes)
        store.delete(["bench"])
        return np.frombuffer(data, dtype=x.dtype)

    return run


def run_limits(table: Table, sizes: dict[str, int], runs: dict[str, int], directory: Path) -> None:
    memory, mac = entry(table, "memcpy (x.copy())", 0.0), entry(table, SIGNED, 0.0)
    memory.run, mac.run = memcpy, signed
    measure([memory, mac], Processes(), sizes, runs)
    one, chunked = entry(table, RAW_REDIS[0], 0.0), entry(table, RAW_REDIS[1], 0.0)
    alone = entry(table, STORE_ALONE, 0.0)
    try:
        print("raw Redis: starting a private redis-server ...", flush=True)
        with private_redis(Path(tempfile.mkdtemp(prefix="raw-redis-", dir=directory))) as client:
            one.run, chunked.run = raw_redis_one_value(client), raw_redis_chunks(client)
            alone.run = data_store_alone(client)
            pids = Processes(redis=lambda: [client.server_pid])
            for contender in (one, chunked, alone):
                measure([contender], pids, sizes, runs)
    except Exception as exc:
        failed([one, chunked, alone], exc)


# -- contenders with clusters of their own ------------------------------------------
def run_celerynb(table: Table, sizes: dict[str, int], runs: dict[str, int]) -> None:
    def submit(x: np.ndarray) -> Any:
        return celerynb.submit(f, x).result(timeout=TIMEOUT)

    def scatter(x: np.ndarray) -> Any:
        scattered = celerynb.scatter(x)
        try:
            return celerynb.submit(f, scattered).result(timeout=TIMEOUT)
        finally:
            scattered.release()

    contenders = [entry(table, SUBMIT), entry(table, SCATTERED)]
    print("celerynb: starting LocalCluster(processes=2) ...", flush=True)
    with celerynb.LocalCluster(processes=2) as cluster:
        celerynb.connect(cluster)
        theirs = celerynb.submit(where_celerynb_is).result(timeout=60)
        ours = os.path.dirname(celerynb.__file__)
        if theirs != ours:
            print(f"WARNING: the kernel runs {ours}, the workers {theirs}", flush=True)
        contenders[0].run, contenders[1].run = submit, scatter
        redis_pid, worker_pid = cluster.pids
        processes = Processes(lambda: descendants(worker_pid), lambda: [redis_pid])
        measure(contenders, processes, sizes, runs)


def run_dask(table: Table, sizes: dict[str, int], runs: dict[str, int], directory: Path) -> None:
    scattered = entry(table, "dask scatter + submit + gather")
    plain = entry(table, "dask submit(f, x) (array in the graph)")
    if importlib.util.find_spec("distributed") is None:
        scattered.note = plain.note = NOT_INSTALLED
        return
    with dask_client(directory) as client, warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "Sending large graph": the plain row means to

        def with_scatter(x: np.ndarray) -> Any:
            future = client.submit(f, client.scatter(x))
            return client.gather(future)

        def in_graph(x: np.ndarray) -> Any:
            return client.submit(f, x, pure=False).result(timeout=TIMEOUT)

        scattered.run, plain.run = with_scatter, in_graph
        pids = sorted(client.run(os.getpid).values())
        measure([scattered, plain], Processes(lambda: pids), sizes, runs)


def run_ipyparallel(
    table: Table, sizes: dict[str, int], runs: dict[str, int], directory: Path
) -> None:
    apply = entry(table, "ipyparallel apply_sync(f, x)")
    push_pull = entry(table, "ipyparallel push + execute + pull")
    try:
        import ipyparallel
    except ImportError:
        apply.note = push_pull.note = NOT_INSTALLED
        return
    print("ipyparallel: starting Cluster(n=2) ...", flush=True)
    # A profile of its own: no connection files left in ~/.ipython.
    cluster = ipyparallel.Cluster(
        n=2, profile_dir=tempfile.mkdtemp(prefix="ipp-", dir=directory), log_level=logging.ERROR
    )
    try:
        with contextlib.redirect_stderr(io.StringIO()):  # its start-up progress bar
            client = cluster.start_and_connect_sync()
        try:
            view = client.load_balanced_view()
            engine = client[client.ids[0]]
            engine.push({"f": f}, block=True)

            def applied(x: np.ndarray) -> Any:
                y = view.apply_sync(f, x)
                client.purge_everything()  # the client and the hub keep results otherwise
                return y

            def pushed(x: np.ndarray) -> Any:
                engine.push({"x": x}, block=True)
                engine.execute("y = f(x)", block=True)
                y = engine.pull("y", block=True)
                engine.execute("del x, y", block=True)
                client.purge_everything()
                return y

            apply.run, push_pull.run = applied, pushed
            pids = sorted(client[:].apply_sync(os.getpid))
            measure([apply, push_pull], Processes(lambda: pids), sizes, runs)
        finally:
            client.close()
    except Exception as exc:
        failed([apply, push_pull], exc)
    finally:
        cluster.stop_cluster_sync()


def run_ray(table: Table, sizes: dict[str, int], runs: dict[str, int]) -> None:
    put = entry(table, "Ray put + f.remote + get")
    plain = entry(table, "Ray f.remote(x) + get")
    try:
        import ray
    except ImportError:
        put.note = plain.note = "not installed (pip install ray)"
        return
    print("Ray: starting ray.init(num_cpus=2) ...", flush=True)
    # A short path of its own: Ray's sockets must fit in AF_UNIX's 107 bytes.
    temp = tempfile.mkdtemp(prefix="ray-", dir="/tmp")
    ray.init(
        num_cpus=2,
        include_dashboard=False,
        log_to_driver=False,
        logging_level=logging.ERROR,
        _temp_dir=temp,
    )
    try:
        remote = ray.remote(f)

        def with_put(x: np.ndarray) -> Any:
            return ray.get(remote.remote(ray.put(x)), timeout=TIMEOUT)

        def by_value(x: np.ndarray) -> Any:
            return ray.get(remote.remote(x), timeout=TIMEOUT)

        put.run, plain.run = with_put, by_value
        processes = Processes(lambda: descendants(os.getpid(), "ray::"))
        measure([put, plain], processes, sizes, runs)
    finally:
        ray.shutdown()
        shutil.rmtree(temp, ignore_errors=True)


# -- report -----------------------------------------------------------------------
HEADER = (
    "contender",
    "runs",
    "median s",
    "best s",
    "MB/s",
    "CPU s",
    "celerynb/that",
    "kernel peak",
    "worker peak",
    "Redis peak",
)


def peak(values: list[int] | None, nbytes: int) -> str:
    if not values:
        return "-"
    grown = max(statistics.median(values), 0)  # a process may end smaller than it began
    return f"{grown / MB:,.0f} MB ({grown / nbytes:.1f}x)"


def row(contender: Contender, size: str, ours: float) -> tuple[str, ...]:
    nbytes = SIZES[size]
    if not contender.seconds.get(size):
        return (contender.name, "-", contender.note or "not run", *[""] * (len(HEADER) - 3))
    median = contender.median(size)
    return (
        contender.name,
        str(len(contender.seconds[size])),
        f"{median:.3f}",
        f"{contender.best(size):.3f}",
        f"{nbytes / MB / median:,.0f}",
        f"{statistics.median(contender.cpu[size]):.3f}" if contender.cpu.get(size) else "-",
        "-" if math.isnan(ours) else f"{median / ours:.2f}x",
        peak(contender.kernel.get(size), nbytes),
        peak(contender.worker.get(size), nbytes),
        peak(contender.redis.get(size), nbytes),
    )


def report(everyone: Table, sizes: dict[str, int], quick: bool, rounds: int) -> None:
    ours = everyone[SUBMIT]
    print()
    print(
        f"celerynb {celerynb.__version__} ({os.path.dirname(celerynb.__file__)}), "
        f"Python {platform.python_version()}, numpy {np.__version__}, {os.cpu_count()} CPUs, "
        f"{'--quick' if quick else 'full run'}, {rounds} rounds; f(x) = x + 1 on float64 "
        "arrays, 2 worker processes each; celerynb/that = that's median time / celerynb "
        "submit's (> 1: celerynb is faster); peaks: growth above the start of a run, "
        "x the array size"
    )
    rivals = [c for c in everyone.values() if c.name.startswith(("dask", "ipyparallel"))]
    for size in sizes:
        mine = ours.median(size)
        print()
        print(f"{size} ({SIZES[size]:,} bytes)")
        print_table(HEADER, [row(c, size, mine) for c in everyone.values()])
        print(goals_line(everyone, rivals, size, mine))


def goals_line(
    everyone: dict[str, Contender], rivals: list[Contender], size: str, mine: float
) -> str:
    """Issue 15's goals at ``size``: ahead of dask and ipyparallel, >= 1/4 of raw Redis."""
    if math.isnan(mine):
        return f"goals at {size}: celerynb not measured"
    measured = [c for c in rivals if c.seconds.get(size)]
    behind = [
        f"{c.name} (celerynb takes {mine / c.median(size):.2f}x its time)"
        for c in measured
        if c.median(size) <= mine
    ]
    ahead = (
        "not measured"
        if not measured
        else "yes"
        if not behind
        else f"NO, behind {'; '.join(behind)}"
    )
    raws = [everyone[name] for name in RAW_REDIS if everyone[name].seconds.get(size)]
    fractions = [(c.name.removeprefix("raw Redis: "), c.median(size) / mine) for c in raws]
    quarter = (
        "not measured"
        if not fractions
        else ("yes" if all(f >= 0.25 for _, f in fractions) else "NO")
        + " ("
        + ", ".join(f"{name}: {fraction:.2f}" for name, fraction in fractions)
        + ")"
    )
    scattered = everyone[SCATTERED].median(size)
    return (
        f"goals at {size}: ahead of dask and ipyparallel: {ahead}; celerynb's throughput "
        f">= 0.25 of raw Redis: {quarter}"
        + (
            ""
            if math.isnan(scattered)
            else f"; scatter + submit: {scattered / mine:.2f}x submit's time"
        )
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="10 and 100 MB only, 2 rounds")
    parser.add_argument(
        "--sizes", default="", help="comma-separated sizes to run: 10MB, 100MB, 1GB"
    )
    parser.add_argument(
        "--only",
        default="",
        help="comma-separated groups to run: limits, celerynb, dask, ipyparallel, ray",
    )
    parser.add_argument("--rounds", type=int, default=None, help="rounds (default 3; 2 quick)")
    args = parser.parse_args()
    runs = QUICK_RUNS if args.quick else RUNS
    rounds = args.rounds or (QUICK_ROUNDS if args.quick else ROUNDS)
    wanted = {s.replace(" ", "") for s in args.sizes.split(",") if s}
    runs = {size: n for size, n in runs.items() if not wanted or size.replace(" ", "") in wanted}
    sizes = {size: SIZES[size] for size in runs}
    groups = [g for g in args.only.split(",") if g] or list(GROUPS)
    started = time.perf_counter()
    table: Table = {}
    with tempfile.TemporaryDirectory(prefix="bench-data-") as tmp:
        directory = Path(tmp)
        # Keep the benchmark's jobs out of the user's job store.
        os.environ.setdefault("CELERYNB_STORE", str(directory / "jobs.sqlite3"))
        runners: dict[str, Callable[[], None]] = {
            "limits": lambda: run_limits(table, sizes, runs, directory),
            "celerynb": lambda: run_celerynb(table, sizes, runs),
            "dask": lambda: run_dask(table, sizes, runs, directory),
            "ipyparallel": lambda: run_ipyparallel(table, sizes, runs, directory),
            "ray": lambda: run_ray(table, sizes, runs),
        }
        for round_ in range(rounds):  # each round in another order: drifting load weighs alike
            order = groups[round_ % len(groups) :] + groups[: round_ % len(groups)]
            print(f"-- round {round_ + 1} of {rounds}: {', '.join(order)}", flush=True)
            for group in order:
                runners[group]()
    for name in (SUBMIT, SCATTERED, *RAW_REDIS):
        table.setdefault(name, Contender(name, None, note="not run (--only)"))
    report(table, sizes, args.quick, rounds)  # rows in the first round's order
    print(f"total time: {time.perf_counter() - started:.0f} s")


if __name__ == "__main__":
    sys.exit(main())
