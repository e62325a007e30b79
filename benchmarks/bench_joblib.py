"""celerynb's joblib backend against joblib's local loky, dask's and ipyparallel's backends.

Two workloads through joblib, the same code for every contender, only the backend
chosen by ``joblib.parallel_config`` differing:

1. Grid search: ``GridSearchCV(SVC(), GRID, cv=3, n_jobs=N_JOBS).fit(X, y)`` on
   ``sklearn.datasets.load_digits()`` (1,797 images of 64 pixels), 6 values of C times 3
   of gamma: 18 candidates x 3 folds = 54 fits of about 0.05 s each, then the refit of
   the best candidate in this process (part of ``fit``, so timed too). Every contender
   must find the same ``best_params_`` and ``best_score_`` as loky (checked, not timed).
2. Tiny calls: ``Parallel(n_jobs=N_JOBS)(delayed(tiny)(i) for i in range(10_000))``,
   ``tiny(i) = i * i``; the results are checked; reported in items/s.

The contenders, each with exactly two worker processes (equal settings):

- loky, joblib's default: ``parallel_config(backend="loky", n_jobs=2)``, and N_JOBS=2
  (-1 would mean every core of the machine; on 2 cores it is the same). The physical
  reference: the same machine's processes with nothing between them but a pipe.
- celerynb: ``LocalCluster(processes=2)`` + ``celerynb.connect(cluster)``, then
  ``parallel_config(backend="celerynb")`` (registered by ``import celerynb``), N_JOBS=-1:
  the online worker processes. Its default live bar per ``Parallel`` call is on (outside
  Jupyter a text bar: drawn into a captured stderr, so the costs of the bar are counted).
- dask: ``distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True)``
  + ``Client``, then ``parallel_config(backend="dask")``, N_JOBS=-1: its worker threads.
- ipyparallel: ``ipp.Cluster(n=2)``, ``view = client.load_balanced_view()``,
  ``view.register_joblib_backend()``, then ``parallel_config(backend="ipyparallel")``,
  N_JOBS=-1: its engines. The engines use cloudpickle (``client[:].use_cloudpickle()``,
  what ipyparallel's backend does for a cluster it starts itself), else ``tiny``, defined
  in this script's ``__main__``, could not reach them.

The "workers" column is ``joblib.effective_n_jobs(N_JOBS)`` under each backend: 2 for all.

The run goes in rounds (3; 2 with ``--quick``), one contender at a time (never
concurrently: the machine has 2 cores): in each round, every contender in turn starts
its cluster, warms up (a grid of 2 candidates, 6 fits, and 1,000 tiny calls), does its
timed runs (2 grid searches and 3 x 10,000 tiny calls; 2 and 2 with ``--quick``) and
stops its cluster, loky's worker processes included. The next round takes the
contenders in another order, so that the machine's drifting load weighs on all alike.
Reported: median and best seconds (grid) or items/s (tiny calls) over all rounds, and
celerynb's median against each contender's, with the load average at the start and the
end; then the same ratios round by round (each round's medians: the same minutes of the
machine's drifting load for all), to show how steady the pooled ones are. Goals (the
joblib issue): the grid search within 1.15x of loky's time, and
celerynb ahead of dask and ipyparallel on both workloads.

Needs scikit-learn and the contenders: ``pip install -e '.[bench]'`` (rows say so when
one is missing, or when this celerynb has no joblib backend). Run from the repository
root:

    .venv/bin/python benchmarks/bench_joblib.py            # full run, about 2.5 min
    .venv/bin/python benchmarks/bench_joblib.py --quick    # about 1.5 min: 2 rounds, fewer runs
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
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import joblib
from _report import dask_client, ipp_client, print_table

import celerynb

GRID = {"C": [0.1, 1, 10, 100, 1_000, 10_000], "gamma": [1e-4, 1e-3, 1e-2]}
WARMUP_GRID = {"C": [1, 10], "gamma": [1e-3]}
CV = 3
TINY_CALLS = 10_000
ROUNDS, QUICK_ROUNDS = 3, 2
RUNS = {"grid": 2, "calls": 3}  # timed runs per contender and round, after its warm-up
QUICK_RUNS = {"grid": 2, "calls": 2}
GRID_GOAL = 1.15  # celerynb's grid search time over loky's, at most
NOT_INSTALLED = "not installed (pip install -e '.[bench]')"


class Unavailable(Exception):
    """A contender that cannot run here; its message goes in the table."""


# -- the workloads -----------------------------------------------------------------
def tiny(i: int) -> int:
    return i * i


@dataclass
class Digits:
    """The data and the reference answer every contender's grid search must find."""

    X: Any
    y: Any
    reference: str | None = None  # the contender whose search found them first (loky)
    best_params: dict[str, Any] | None = None
    best_score: float | None = None


def grid_search(digits: Digits, grid: dict[str, list[float]], n_jobs: int) -> tuple[float, Any]:
    """Seconds of one ``GridSearchCV(...).fit`` over ``grid``, and the fitted search."""
    from sklearn.model_selection import GridSearchCV
    from sklearn.svm import SVC

    search = GridSearchCV(SVC(), grid, cv=CV, n_jobs=n_jobs)
    start = time.perf_counter()
    search.fit(digits.X, digits.y)
    return time.perf_counter() - start, search


def tiny_calls(calls: int, n_jobs: int) -> float:
    start = time.perf_counter()
    values = joblib.Parallel(n_jobs=n_jobs)(joblib.delayed(tiny)(i) for i in range(calls))
    end = time.perf_counter()
    expected = [i * i for i in range(calls)]
    if values != expected:
        raise AssertionError(f"tiny calls: wrong results (first: {values[:3]!r}, {expected[:3]!r})")
    return end - start


# -- measurements ------------------------------------------------------------------
@dataclass
class Result:
    """Timed runs of one contender on one workload; ``items`` > 0: reported in items/s."""

    name: str
    items: int = 0
    seconds: list[float] = field(default_factory=list)
    workers: int | None = None
    note: str = ""
    rounds: list[list[float]] = field(default_factory=list)  # the seconds of each round

    def add_round(self, seconds: list[float]) -> None:
        self.seconds += seconds
        self.rounds.append(seconds)

    @property
    def values(self) -> list[float]:
        return [self.items / s for s in self.seconds] if self.items else self.seconds

    @property
    def median(self) -> float:
        return statistics.median(self.values) if self.seconds else math.nan

    @property
    def best(self) -> float:
        if not self.seconds:
            return math.nan
        return max(self.values) if self.items else min(self.values)


@dataclass
class Contender:
    """A backend: ``start(directory)`` enters a context, with the backend configured,
    that yields the ``n_jobs`` to pass; it raises Unavailable when it cannot run."""

    name: str
    start: Callable[[Path], contextlib.AbstractContextManager[int]]
    grid: Result = field(init=False)
    calls: Result = field(init=False)

    def __post_init__(self) -> None:
        self.grid = Result(self.name)
        self.calls = Result(self.name, TINY_CALLS)


def measure(contender: Contender, digits: Digits, directory: Path, runs: dict[str, int]) -> None:
    """One round: start the contender's cluster, warm up, time both workloads, stop it."""
    if contender.grid.note:
        return  # found unavailable in an earlier round
    try:
        with contender.start(directory) as n_jobs:
            workers = joblib.effective_n_jobs(n_jobs)
            contender.grid.workers = contender.calls.workers = workers
            print(
                f"{contender.name}: {workers} workers; warm-up, {runs['grid']} grid searches, "
                f"{runs['calls']} x {TINY_CALLS:,} tiny calls ...",
                flush=True,
            )
            grid_search(digits, WARMUP_GRID, n_jobs)
            tiny_calls(1_000, n_jobs)
            searches = []
            for _ in range(runs["grid"]):
                seconds, search = grid_search(digits, GRID, n_jobs)
                check_search(contender.name, search, digits)
                searches.append(seconds)
            contender.grid.add_round(searches)
            calls = [tiny_calls(TINY_CALLS, n_jobs) for _ in range(runs["calls"])]
            contender.calls.add_round(calls)
    except Unavailable as exc:
        contender.grid.note = contender.calls.note = str(exc)
        print(f"{contender.name}: {exc}", flush=True)


def check_search(name: str, search: Any, digits: Digits) -> None:
    """The first search (loky's) sets the reference; every later one must match it."""
    fits = len(search.cv_results_["params"]) * CV
    if fits < 50:
        raise AssertionError(f"{name}: {fits} fits, the benchmark promises at least 50")
    if digits.reference is None:
        digits.reference = name
        digits.best_params, digits.best_score = search.best_params_, search.best_score_
    elif (search.best_params_, search.best_score_) != (digits.best_params, digits.best_score):
        raise AssertionError(
            f"{name}: best {search.best_params_} scoring {search.best_score_!r}, "
            f"{digits.reference} found {digits.best_params} scoring {digits.best_score!r}"
        )


# -- the contenders ----------------------------------------------------------------
@contextlib.contextmanager
def loky_backend(directory: Path) -> Iterator[int]:
    from joblib.externals.loky import get_reusable_executor

    with joblib.parallel_config(backend="loky", n_jobs=2):
        try:
            yield 2
        finally:
            get_reusable_executor().shutdown(wait=True)  # its worker processes stop


@contextlib.contextmanager
def celerynb_backend(directory: Path) -> Iterator[int]:
    from joblib.parallel import BACKENDS  # what register_parallel_backend fills

    if "celerynb" not in BACKENDS:  # looked up, not built: it may need a connection
        raise Unavailable("celerynb backend not available (no joblib backend 'celerynb')")
    print("celerynb: starting LocalCluster(processes=2) ...", flush=True)
    with celerynb.LocalCluster(processes=2) as cluster:
        celerynb.connect(cluster)
        # Its default live bar, drawn as a text bar outside Jupyter: measured, not shown.
        with joblib.parallel_config(backend="celerynb"), contextlib.redirect_stderr(io.StringIO()):
            yield -1


@contextlib.contextmanager
def dask_backend(directory: Path) -> Iterator[int]:
    if importlib.util.find_spec("distributed") is None:
        raise Unavailable(NOT_INSTALLED)
    with dask_client(directory), joblib.parallel_config(backend="dask"):
        yield -1


@contextlib.contextmanager
def ipyparallel_backend(directory: Path) -> Iterator[int]:
    if importlib.util.find_spec("ipyparallel") is None:
        raise Unavailable(NOT_INSTALLED)
    with ipp_client(directory) as client:
        client[:].use_cloudpickle()
        client.load_balanced_view().register_joblib_backend()  # as "ipyparallel"
        with joblib.parallel_config(backend="ipyparallel"):
            yield -1


# -- report ------------------------------------------------------------------------
def row(result: Result, ours: Result) -> tuple[str, ...]:
    """Median and best; the ratio of celerynb's median to this one's (1 on its own row)."""
    if not result.seconds:
        return (result.name, "-", "-", result.note, "", "")
    fmt = "{:,.0f}" if result.items else "{:.2f} s"
    if result is ours:
        ratio = "1"
    else:
        ratio = f"{ours.median / result.median:.2f}x" if ours.seconds else "-"
    return (
        result.name,
        str(result.workers),
        str(len(result.seconds)),
        fmt.format(result.median),
        fmt.format(result.best),
        ratio,
    )


def report(contenders: list[Contender], digits: Digits, how: str, load: float) -> None:
    loky, ours, *rivals = contenders
    print()
    print(
        f"celerynb {celerynb.__version__}, joblib {joblib.__version__}, Python "
        f"{platform.python_version()}, {os.cpu_count()} CPUs, "
        f"{how}; 2 worker processes each; load average {load:.1f} at the start, "
        f"{os.getloadavg()[0]:.1f} at the end"
    )
    candidates = len(GRID["C"]) * len(GRID["gamma"])
    found = (
        f"; every contender found {digits.best_params} (score {digits.best_score:.4f})"
        if digits.best_params
        else ""
    )
    print(f"GridSearchCV(SVC(), cv={CV}) on the digits, {candidates * CV} fits{found}")
    header = ("contender", "workers", "runs", "median", "best", "celerynb time / that")
    print_table(header, [row(c.grid, ours.grid) for c in contenders])
    print("(below 1: celerynb faster)")
    print()
    print(f"Parallel of {TINY_CALLS:,} tiny calls, i -> i * i")
    header = (
        "contender",
        "workers",
        "runs",
        "median items/s",
        "best items/s",
        "celerynb rate / that",
    )
    print_table(header, [row(c.calls, ours.calls) for c in contenders])
    print("(above 1: celerynb faster)")
    print()
    print(rounds_line(ours, [loky, *rivals]))
    print(goals_line(loky, ours, rivals))
    unequal = [c.name for c in contenders if c.grid.workers not in (None, 2)]
    if unequal:
        print(f"WARNING: not 2 workers: {', '.join(unequal)}")


def rounds_line(ours: Contender, others: list[Contender]) -> str:
    """celerynb's median against each contender's, round by round (the same minutes of the
    machine's drifting load for both): how steady each pooled ratio above is."""
    parts = []
    for other in others:
        grid = _round_ratios(ours.grid, other.grid)
        calls = _round_ratios(ours.calls, other.calls)
        if grid or calls:
            parts.append(f"{other.name}: grid {grid or '-'}, tiny calls {calls or '-'}")
    return "round by round, celerynb against " + ("; ".join(parts) or "no one")


def _round_ratios(ours: Result, other: Result) -> str:
    ratios = []
    for mine, theirs in zip(ours.rounds, other.rounds, strict=False):
        if not mine or not theirs:
            continue
        if ours.items:  # rates, as in the table: above 1, celerynb faster
            mine, theirs = [ours.items / s for s in mine], [other.items / s for s in theirs]
        ratios.append(statistics.median(mine) / statistics.median(theirs))  # times: below 1
    return ", ".join(f"{ratio:.2f}x" for ratio in ratios)


def goals_line(loky: Contender, ours: Contender, rivals: list[Contender]) -> str:
    if not ours.grid.seconds:
        return f"goals: not measured, {ours.grid.note}"
    if loky.grid.seconds:
        ratio = ours.grid.median / loky.grid.median
        within = f"{'yes' if ratio <= GRID_GOAL else 'NO'} ({ratio:.2f}x)"
    else:
        within = f"not measured ({loky.grid.note})"
    measured = [c for c in rivals if c.grid.seconds]
    ahead = all(
        ours.grid.median < c.grid.median and ours.calls.median > c.calls.median for c in measured
    )
    missing = [c.name for c in rivals if not c.grid.seconds]
    return (
        f"goals: grid search within {GRID_GOAL}x of loky: {within}; ahead of "
        f"{' and '.join(c.name for c in measured) or 'no one'} on both: {'yes' if ahead else 'NO'}"
        + (f" ({', '.join(missing)} not measured)" if missing else "")
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--quick", action="store_true", help=f"{QUICK_ROUNDS} rounds of fewer runs each"
    )
    parser.add_argument(
        "--rounds", type=int, default=None, help=f"rounds (default {ROUNDS}; {QUICK_ROUNDS} quick)"
    )
    args = parser.parse_args()
    rounds = args.rounds or (QUICK_ROUNDS if args.quick else ROUNDS)
    runs = QUICK_RUNS if args.quick else RUNS
    started, load = time.perf_counter(), os.getloadavg()[0]
    try:
        from sklearn.datasets import load_digits
    except ImportError:
        sys.exit("bench_joblib needs scikit-learn: pip install -e '.[bench]'")
    digits = Digits(*load_digits(return_X_y=True))
    contenders = [
        Contender("loky (local)", loky_backend),
        Contender("celerynb", celerynb_backend),
        Contender("dask", dask_backend),
        Contender("ipyparallel", ipyparallel_backend),
    ]
    with tempfile.TemporaryDirectory(prefix="bench-joblib-") as tmp:
        directory = Path(tmp)
        # Keep the benchmark's jobs out of the user's job store.
        os.environ.setdefault("CELERYNB_STORE", str(directory / "jobs.sqlite3"))
        for round_ in range(rounds):  # each round in another order: drifting load weighs alike
            turn = round_ % len(contenders)
            order = contenders[turn:] + contenders[:turn]  # loky first in the first round
            print(f"-- round {round_ + 1} of {rounds}: {', '.join(c.name for c in order)}")
            for contender in order:
                measure(contender, digits, directory, runs)
    report(
        contenders,
        digits,
        f"{'--quick' if args.quick else 'full run'}, {rounds} round{'s' if rounds > 1 else ''}",
        load,
    )
    print(f"total time: {time.perf_counter() - started:.1f} s")


if __name__ == "__main__":
    sys.exit(main())
