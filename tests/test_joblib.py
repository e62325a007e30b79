"""joblib's Parallel (and scikit-learn through it) on real Celery workers: backend "celerynb"."""

import contextlib
import gc
import logging
import os
import threading
import time
import weakref

import joblib
import numpy as np
import psutil
import pytest
from conftest import wait_for
from joblib import Parallel, delayed

import celerynb
import celerynb._joblib
from celerynb._joblib import CelerynbBackend, NoWorkersError


def square(x):
    return x * x


def pid_and_value(x):
    import os

    return os.getpid(), x


def nap_then(x, seconds):
    import time

    time.sleep(seconds)
    return x


def fails_at_zero(x):
    import time

    if x == 0:
        raise ValueError("item zero is bad")
    time.sleep(1.0)
    return x


def fails_at_13(x):
    if x == 13:
        raise ZeroDivisionError("x is 13")
    return x


def nested_backend_and_sum(n):
    from joblib import Parallel, delayed
    from joblib.parallel import get_active_backend

    backend, _ = get_active_backend()
    return type(backend).__name__, sum(Parallel(n_jobs=2)(delayed(abs)(-i) for i in range(n)))


def an_array(i):
    import numpy as np

    return np.full(1000, i)


def total_of(array, offset):
    return float(array.sum()) + offset


@pytest.fixture
def shown(monkeypatch):
    """The JobGroups the backend displays, one per Parallel call."""
    groups = []
    monkeypatch.setattr(celerynb._joblib, "_show", groups.append)
    return groups


def test_parallel_runs_every_call_on_the_workers_in_order(session, cluster, shown):
    with joblib.parallel_config(backend="celerynb"):
        out = Parallel(n_jobs=-1)(delayed(pid_and_value)(i) for i in range(500))
    assert [value for _, value in out] == list(range(500))
    pids = {pid for pid, _ in out}
    assert os.getpid() not in pids, "no call ran in the kernel"
    assert pids <= {p.pid for p in psutil.Process().children(recursive=True)}, "the workers'"
    (group,) = shown
    assert group.done() and group.state == "SUCCESS"
    assert group.progress.n == 500 and group.progress.total == 500
    assert group.name == "pid_and_value" and group in celerynb.jobs()
    assert group.short_result_repr() == "500 results", "joblib has them, not the bar: no None"


def test_a_later_call_sends_its_first_calls_one_per_batch_then_resumes_its_size(
    session, cluster, shown, monkeypatch
):
    """A call after one that learned a big batch size still sends its first 2 x n_jobs
    calls (joblib's pre-dispatch) one per batch, two per worker process: each has a batch
    queued behind the one it runs (cut to the learned size, they made one per process).
    Then the learned size: no ramp from 1 again."""
    sizes: list[int] = []
    submit = CelerynbBackend.submit

    def recorded_submit(self, func, callback=None):
        sizes.append(len(func))
        return submit(self, func, callback)

    monkeypatch.setattr(CelerynbBackend, "submit", recorded_submit)
    with joblib.parallel_config(backend="celerynb"):
        assert Parallel(n_jobs=-1)(delayed(square)(i) for i in range(2_000))[-1] == 1999**2
        sizes.clear()
        assert Parallel(n_jobs=-1)(delayed(square)(i) for i in range(2_000))[-1] == 1999**2
    # Its first dispatch takes half the pre-dispatched calls: two batches of one (one of
    # two, cut to the learned size); the next two follow alike unless a batch is back first.
    assert sizes[:2] == [1, 1], sizes
    assert max(sizes) > 1, sizes


def test_n_jobs_minus_one_means_the_online_worker_processes(session, cluster):
    assert CelerynbBackend().effective_n_jobs(-1) == cluster.processes
    assert CelerynbBackend().effective_n_jobs(-2) == max(cluster.processes - 1, 1)
    assert CelerynbBackend().effective_n_jobs(3) == 3
    with pytest.raises(NoWorkersError, match="no online worker consumes queue 'nobody-here'"):
        CelerynbBackend(queue="nobody-here").effective_n_jobs(-1)


def test_a_call_on_a_queue_no_worker_consumes_fails_at_once_whatever_its_n_jobs(session):
    """A Parallel call blocks the cell: on a queue nobody consumes it would wait forever."""
    for n_jobs in (-1, 2):
        started = time.monotonic()
        with (
            joblib.parallel_config(backend="celerynb", queue="nobody-here"),
            pytest.raises(NoWorkersError, match="no online worker consumes queue 'nobody-here'"),
        ):
            Parallel(n_jobs=n_jobs)(delayed(square)(i) for i in range(4))
        assert time.monotonic() - started < 15, n_jobs


def test_one_live_bar_per_call_moves_while_the_kernel_is_free(session, monkeypatch):
    seen, shown = [], []

    def show(group):  # watched from its start (a loaded machine may run it all at once)
        shown.append(group)
        group.add_listener(lambda g: seen.append(g.progress.n))

    monkeypatch.setattr(celerynb._joblib, "_show", show)
    with joblib.parallel_config(backend="celerynb"):
        parallel = Parallel(n_jobs=-1, batch_size=1, return_as="generator")
        out = parallel(delayed(nap_then)(i, 0.05) for i in range(40))
        first = next(out)  # the call runs; this thread is free between results
        (group,) = shown
        rest = list(out)
    assert [first, *rest] == list(range(40))
    assert wait_for(lambda: group.done())
    assert seen == sorted(seen) and seen[-1] == 40
    assert len({n for n in seen if 0 < n < 40}) >= 3, f"the bar did not move: {seen}"


def test_the_bar_has_a_total_when_joblib_knows_how_many_calls(session, shown):
    bars = []
    with joblib.parallel_config(backend="celerynb"):
        calls = [delayed(nap_then)(i, 0.05) for i in range(20)]  # a list: 20 calls, known
        parallel = Parallel(n_jobs=-1, batch_size=1, return_as="generator")
        out = parallel(calls)
        (group,) = shown
        group.add_listener(lambda g: bars.append(g.progress.bars[0]))
        assert group.progress.total == 20, "the total is known before the calls are done"
        assert list(out) == list(range(20))
    assert wait_for(lambda: group.done())
    assert {bar.total for bar in bars} == {20}
    eta_while_running = [bar.eta for bar in bars if 0 < bar.n < 20 and bar.rate]
    assert eta_while_running and all(eta is not None for eta in eta_while_running)


def test_over_a_generator_the_bar_counts_calls_without_a_total_until_the_end(session, shown):
    bars = []
    with joblib.parallel_config(backend="celerynb"):
        parallel = Parallel(n_jobs=-1, batch_size=1, return_as="generator")
        out = parallel(delayed(nap_then)(i, 0.05) for i in range(20))  # how many: unknown
        (group,) = shown
        group.add_listener(lambda g: bars.append(g.progress.bars[0]))
        assert list(out) == list(range(20))
    assert wait_for(lambda: group.done())
    counted = [bar for bar in bars if 0 < bar.n < 20]
    # Not "n of the calls sent so far": joblib sends only a few ahead, so that bar
    # would look nearly full all along and its ETA would be wrong.
    assert counted and all(bar.total is None and bar.eta is None for bar in counted), counted
    assert group.progress.total == 20 and group.progress.n == 20


def test_generators_ordered_and_unordered(session, shown):
    with joblib.parallel_config(backend="celerynb"):
        ordered = Parallel(n_jobs=-1, return_as="generator")(delayed(square)(i) for i in range(50))
        assert list(ordered) == [i * i for i in range(50)]
        unordered = Parallel(n_jobs=-1, return_as="generator_unordered")(
            delayed(square)(i) for i in range(50)
        )
        assert sorted(unordered) == [i * i for i in range(50)]


def test_an_error_aborts_the_call_and_revokes_the_queued_batches(session, shown):
    started = time.monotonic()
    with (
        joblib.parallel_config(backend="celerynb"),
        pytest.raises(ValueError, match="item zero is bad"),
    ):
        Parallel(n_jobs=-1, batch_size=1)(delayed(fails_at_zero)(i) for i in range(30))
    assert time.monotonic() - started < 15, "the call waited for every batch"
    (group,) = shown
    assert wait_for(lambda: group.done())
    counts = group.counts
    assert counts.failed >= 1 and counts.cancelled >= 1, counts
    assert group.state == "FAILURE", "its bar ends failed, not cancelled: an item failed"
    with pytest.raises(ValueError, match="item zero is bad"):
        group.result(timeout=0)
    with pytest.raises(RuntimeError, match="its joblib call has ended"):
        group.retry_failed()  # joblib waits for it no more; its call kept the Parallel


def test_a_failed_call_fails_alone_and_the_calls_after_it_in_its_batch_did_not_run(session, shown):
    with (
        joblib.parallel_config(backend="celerynb"),
        pytest.raises(ZeroDivisionError, match="x is 13"),
    ):
        Parallel(n_jobs=2, batch_size=4)(delayed(fails_at_13)(i) for i in range(40))
    (group,) = shown
    assert wait_for(lambda: group.done())
    assert list(group.exceptions) == [13], "one call failed: the 14th"
    counts = group.counts
    assert counts.failed == 1 and counts.cancelled >= 2, counts  # 14 and 15 never ran
    assert "(item 13; 1 of" in group.short_result_repr()


def test_a_failed_calls_traceback_shows_its_source_lines(session, shown):
    def fails_at_3(x):  # defined here: shipped by value, as a notebook's function is
        if x == 3:
            raise ValueError("three is bad")  # the failing line
        return x

    with (
        joblib.parallel_config(backend="celerynb"),
        pytest.raises(ValueError, match="three is bad") as info,
    ):
        Parallel(n_jobs=-1, batch_size=2)(delayed(fails_at_3)(i) for i in range(6))
    (group,) = shown
    assert wait_for(lambda: group.done())
    failed = [job for job in group.jobs if job.done() and not job.cancelled()]
    batch = next(job for job in failed if job.exception(timeout=0))  # a revoked one raises
    traceback = str(batch.exception(timeout=0).__cause__)
    assert 'raise ValueError("three is bad")  # the failing line' in traceback, traceback
    assert info.value is not None


def test_a_call_stopped_with_no_failed_call_ends_cancelled(session, shown):
    def calls_until_bad_input():
        for i in range(30):
            if i == 6:
                raise ValueError("input 6 is unreadable")  # joblib stops the call
            yield delayed(nap_then)(i, 0.5)

    with (
        joblib.parallel_config(backend="celerynb"),
        pytest.raises(ValueError, match="input 6"),
    ):
        Parallel(n_jobs=-1, batch_size=1)(calls_until_bad_input())
    (group,) = shown
    assert wait_for(lambda: group.done())
    assert group.state == "REVOKED" and group.cancelled(), group.counts


def test_a_batch_back_after_its_call_ended_logs_no_error(caplog):
    """A callback that sends the next batch into a call ended meanwhile (a generator
    closed early) gets CancelledError from the cancelled call: nothing failed."""
    import concurrent.futures

    from celerynb._joblib import _logged

    def sends_into_an_ended_call(job):
        raise concurrent.futures.CancelledError("joblib.Parallel(sqrt) was cancelled")

    def broken(job):
        raise KeyError("a real bug")

    with caplog.at_level(logging.DEBUG, logger="celerynb"):
        _logged(sends_into_an_ended_call, None)
        assert [r for r in caplog.records if r.levelno >= logging.WARNING] == []
        _logged(broken, None)
    assert [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR] == [
        "celerynb: a joblib callback failed"
    ]


def test_the_kernel_keeps_no_result_of_a_call_once_joblib_has_them(session, shown):
    """The call's jobs stay in the kernel's job list, not their results nor the Parallel
    that waited for them: a kernel kept every result of every call it had ever run."""
    with joblib.parallel_config(backend="celerynb"):
        parallel = Parallel(n_jobs=-1, batch_size=2)
        out = parallel(delayed(an_array)(i) for i in range(8))
    assert [int(array[0]) for array in out] == list(range(8))
    arrays, call = [weakref.ref(array) for array in out], weakref.ref(parallel)
    (group,) = shown
    del out, parallel

    def let_go() -> bool:
        gc.collect()  # the call's thread may hold its last batch a moment longer
        return call() is None and all(array() is None for array in arrays)

    assert wait_for(let_go, timeout=10)
    assert group in celerynb.jobs() and group.state == "SUCCESS"
    batch = group.jobs[0]
    assert batch.state == "SUCCESS" and batch.short_result_repr() == "(result handed to joblib)"
    with pytest.raises(celerynb.ResultReleasedError, match="handed to joblib"):
        batch.result()
    with pytest.raises(celerynb.ResultReleasedError, match="handed to joblib"):
        group.results()  # None before: as if the call had returned nothing


def test_a_parallel_inside_a_batch_runs_on_threads(session, shown):
    with joblib.parallel_config(backend="celerynb"):
        out = Parallel(n_jobs=-1)(delayed(nested_backend_and_sum)(n) for n in (10, 20))
    assert out == [("ThreadingBackend", 45), ("ThreadingBackend", 190)]


def test_a_big_argument_is_scattered_once_per_call(session, shown, monkeypatch):
    scattered = []
    scatter = session.scatter
    monkeypatch.setattr(session, "scatter", lambda obj: scattered.append(obj) or scatter(obj))
    array = np.arange(200_000, dtype=np.float64)  # 1.6 MB
    with joblib.parallel_config(backend="celerynb"):
        out = Parallel(n_jobs=-1, batch_size=1)(delayed(total_of)(array, i) for i in range(20))
    assert out == [float(array.sum()) + i for i in range(20)]
    assert len(scattered) == 1 and scattered[0] is array


def test_grid_search_on_the_workers_finds_what_a_local_run_finds(session, shown):
    pytest.importorskip("sklearn")
    from sklearn.datasets import load_digits
    from sklearn.model_selection import GridSearchCV
    from sklearn.svm import SVC

    X, y = load_digits(return_X_y=True)
    grid = {"C": [0.1, 1, 10, 100], "gamma": [1e-4, 1e-3, 1e-2]}  # 12 points
    local = GridSearchCV(SVC(), grid, cv=3, n_jobs=1).fit(X, y)
    with joblib.parallel_config(backend="celerynb"):
        remote = GridSearchCV(SVC(), grid, cv=3, n_jobs=-1).fit(X, y)
    assert remote.best_params_ == local.best_params_
    assert remote.best_score_ == pytest.approx(local.best_score_)
    (group,) = shown
    assert group.state == "SUCCESS" and group.progress.n == 36  # 12 points x 3 folds


def in_thread(body, timeout=90.0):
    """Run ``body()`` in a thread; fail (instead of hanging the suite) if it is not done
    within ``timeout`` seconds; return its result or raise its exception."""
    outcome = {}

    def run():
        try:
            outcome["value"] = body()
        except BaseException as exc:
            outcome["error"] = exc

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    thread.join(timeout)
    assert not thread.is_alive(), f"still running after {timeout} s: a call hangs"
    if "error" in outcome:
        raise outcome["error"]
    return outcome["value"]


def test_a_parallel_inside_the_loop_over_another_ones_generator_gets_its_own_bar(session, shown):
    # Both calls use the one backend of the parallel_config block, both in flight at once.
    def body():
        with joblib.parallel_config(backend="celerynb"):
            outer = Parallel(n_jobs=-1, batch_size=1, return_as="generator")(
                delayed(nap_then)(i, 0.01) for i in range(12)
            )
            return [(x, Parallel(n_jobs=-1)(delayed(square)(j) for j in range(3))) for x in outer]

    assert in_thread(body) == [(x, [0, 1, 4]) for x in range(12)]
    outer_bar, *inner_bars = shown
    assert len(inner_bars) == 12
    assert outer_bar.state == "SUCCESS" and outer_bar.progress.n == 12 == len(outer_bar)
    assert all(bar.state == "SUCCESS" and len(bar) == 3 for bar in inner_bars)


def test_two_threads_sharing_one_backend_each_get_their_own_bar(session, shown):
    with joblib.parallel_config(backend="celerynb"):
        backend, _ = joblib.parallel.get_active_backend()
    results: dict[int, list] = {}

    def call(k):
        results[k] = Parallel(n_jobs=-1, backend=backend, batch_size=1)(
            delayed(nap_then)(100 * k + i, 0.01) for i in range(30)
        )

    def body():
        threads = [threading.Thread(target=call, args=(k,)) for k in (1, 2)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()

    in_thread(body)
    assert results == {k: [100 * k + i for i in range(30)] for k in (1, 2)}
    assert wait_for(lambda: all(bar.done() for bar in shown))
    assert sorted((bar.state, len(bar)) for bar in shown) == [("SUCCESS", 30), ("SUCCESS", 30)]


@contextlib.contextmanager
def forged_worker(session, stats, queue):
    """A "worker" on the real broker that answers ``inspect`` with ``stats`` (anyone
    who reaches the broker can): a pidbox node of that name, no Celery worker."""
    name = "forged@nowhere"
    handlers = {
        "stats": lambda state, **kw: stats,
        "active_queues": lambda state, **kw: [{"name": queue}],
        "active": lambda state, **kw: [],
        "reserved": lambda state, **kw: [],
    }
    stop = threading.Event()
    listening = threading.Event()

    def serve():
        connection = session.app.connection_for_write()
        try:
            node = session.app.control.mailbox(connection).Node(name, handlers=handlers)
            node.listen(channel=connection.default_channel)
            listening.set()
            while not stop.is_set():
                try:
                    connection.drain_events(timeout=0.2)
                except TimeoutError:
                    pass
        finally:
            connection.release()

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    assert listening.wait(10)
    try:
        yield name
    finally:
        stop.set()
        thread.join(10)


@pytest.mark.parametrize("concurrency", ["lots", -1000, 2.5, True, [1]])
def test_n_jobs_minus_one_ignores_a_worker_that_answers_a_nonsense_concurrency(
    session, cluster, concurrency
):
    queue = session.app.conf.task_default_queue
    stats = {"pool": {"max-concurrency": concurrency, "implementation": "x:TaskPool"}}
    backend = CelerynbBackend(queue=queue)  # a named queue: the workers are asked
    with forged_worker(session, stats, queue) as name:
        # (its subscription is made by its first wait for a message: ask until it answers)
        assert wait_for(lambda: name in {w.name for w in session.workers()}), "no answer"
        assert backend.effective_n_jobs(-1) == cluster.processes


def test_a_big_sparse_argument_is_scattered_once_per_call(session, shown, monkeypatch):
    sparse = pytest.importorskip("scipy.sparse")
    scattered = []
    scatter = session.scatter
    monkeypatch.setattr(session, "scatter", lambda obj: scattered.append(obj) or scatter(obj))
    matrix = sparse.random(2_000, 2_000, density=0.01, format="csr", random_state=0)  # ~0.5 MB
    with joblib.parallel_config(backend="celerynb"):
        out = Parallel(n_jobs=-1, batch_size=1)(delayed(total_of)(matrix, i) for i in range(10))
    assert out == pytest.approx([float(matrix.sum()) + i for i in range(10)])
    assert len(scattered) == 1 and scattered[0] is matrix


def worker_setting(session, local, name):
    """A setting as the cluster's running worker has it (Celery's ``inspect conf``)."""
    replies = session.app.control.inspect([local.worker_name], timeout=10).conf(True)
    return (replies or {})[local.worker_name][name]


def test_a_prefork_worker_publishes_no_task_events_until_asked(session, cluster):
    """Three events per task took 40% of a prefork worker's main process on tiny tasks;
    a dashboard asks for them when it opens (see test_dashboard)."""
    assert worker_setting(session, cluster, "worker_send_task_events") is False


def test_a_threads_pool_keeps_taking_work_through_many_short_tasks(own_cluster):
    """Without task events, a threads-pool worker stopped fetching messages after a few
    hundred short tasks (the joblib calls below hung with four messages queued)."""
    local, session = own_cluster(processes=2, pool="threads")
    assert worker_setting(session, local, "worker_send_task_events") is True
    with joblib.parallel_config(backend="celerynb", show=False):
        for _ in range(6):
            out = Parallel(n_jobs=-1, timeout=60)(delayed(square)(i) for i in range(10_000))
            assert out == [i * i for i in range(10_000)]
