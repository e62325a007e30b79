"""celerynb.Executor: a concurrent.futures.Executor on real Celery workers."""

import asyncio
import concurrent.futures
import gc
import threading
import time
import weakref
from concurrent.futures import CancelledError

import pytest
from conftest import wait_for
from shipped import gated

import celerynb


def square(x):
    return x * x


def add(a, b):
    return a + b


def bad_at(x, bad):
    if x == bad:
        raise ValueError(f"item {x} is bad")
    return x


def test_it_is_a_standard_executor_whose_futures_are_jobs(session):
    with celerynb.Executor() as pool:
        assert isinstance(pool, concurrent.futures.Executor)
        futures = [pool.submit(square, i) for i in range(5)]
        assert all(isinstance(f, celerynb.Job) for f in futures)
        done, not_done = concurrent.futures.wait(futures, timeout=60)
        assert not not_done
        assert sorted(f.result() for f in concurrent.futures.as_completed(futures)) == [
            i * i for i in range(5)
        ]
        assert pool.submit(add, 2, b=3).result(timeout=60) == 5


def test_map_keeps_the_order_zips_iterables_and_raises_at_the_failed_item(session):
    pool = celerynb.Executor()
    assert list(pool.map(square, range(1000), chunksize=100)) == [i * i for i in range(1000)]
    assert list(pool.map(add, [1, 2, 3], [10, 20, 30])) == [11, 22, 33]
    before = set(map(id, celerynb.jobs()))
    results = pool.map(bad_at, range(10), [4] * 10, chunksize=3)
    # Not from pool._pending: the map may have failed already, and left it.
    (group,) = [job for job in celerynb.jobs() if id(job) not in before]
    assert [next(results) for _ in range(4)] == [0, 1, 2, 3]
    with pytest.raises(ValueError, match="item 4 is bad"):
        next(results)
    pool.shutdown()
    assert group.state == "FAILURE", "the map failed: an item raised (the rest cancelled)"


def an_array(i):
    import numpy as np

    return np.full(1000, i)


def test_the_kernel_keeps_no_value_a_map_has_yielded(session):
    """As the standard library's map lets go of each future it has yielded: the map stays
    listed in celerynb.jobs(), its values are the caller's alone."""
    pool = celerynb.Executor()
    # zip() takes the last value and never asks for more: the map's end is not reached.
    values = dict(zip(range(6), pool.map(an_array, range(6), chunksize=2)))
    assert [int(v[0]) for v in values.values()] == list(range(6))
    group = celerynb.jobs()[-1]
    assert isinstance(group, celerynb.JobGroup) and len(group) == 6, group
    held = [weakref.ref(v) for v in values.values()]
    del values

    def let_go() -> bool:
        gc.collect()
        return all(ref() is None for ref in held)

    assert wait_for(let_go, timeout=10)
    assert wait_for(lambda: group.state == "SUCCESS")
    assert group.short_result_repr() == "6 results"
    for read in (group.results, lambda: group.results(return_exceptions=True), lambda: list(group)):
        with pytest.raises(celerynb.ResultReleasedError, match="yielded by Executor.map"):
            read()

    async def awaited():
        return await group

    with pytest.raises(celerynb.ResultReleasedError):  # raised, not left waiting
        asyncio.run(asyncio.wait_for(awaited(), timeout=10))
    pool.shutdown()


def test_map_times_out_from_the_call_and_closing_it_cancels_the_chunks_not_started(
    session, tmp_path
):
    """As the standard library's: the calls not started are cancelled, running ones finish
    (and the executor's exit waits for them)."""
    pool = celerynb.Executor()
    gate = tmp_path / "gate"
    results = pool.map(gated, [str(gate)] * 8, range(8), timeout=0.5, chunksize=1)
    (group,) = pool._pending  # the map's JobGroup, not done: the gate is shut
    assert wait_for(lambda: any(job.state in ("STARTED", "PROGRESS") for job in group.jobs))
    started = time.monotonic()
    with pytest.raises(concurrent.futures.TimeoutError, match=r"item 0 not ready after 0.5 s"):
        next(results)  # not the builtin TimeoutError on 3.10
    assert time.monotonic() - started < 5
    results.close()
    assert wait_for(lambda: sum(job.cancelled() for job in group.jobs) >= 4, timeout=10)
    gate.touch()
    pool.shutdown(wait=True)
    assert group.done() and group.cancelled()
    values = group.results(timeout=0, return_exceptions=True)
    ran = [i for i, value in enumerate(values) if not isinstance(value, CancelledError)]
    assert 0 < len(ran) < 8 and all(values[i] == i for i in ran), "running calls finished"


def test_shutdown_with_cancel_futures_revokes_the_queued_calls_quickly(session, tmp_path):
    gate = tmp_path / "gate"
    pool = celerynb.Executor()
    # More calls than the cluster's processes: some run (held at the gate), the rest queue.
    futures = [pool.submit(gated, str(gate), i) for i in range(8)]
    assert wait_for(lambda: sum(f.state in ("STARTED", "PROGRESS") for f in futures) >= 1)
    started = time.monotonic()
    pool.shutdown(wait=False, cancel_futures=True)
    assert time.monotonic() - started < 5
    gate.touch()
    assert wait_for(lambda: all(f.done() for f in futures), timeout=60)
    cancelled = [f for f in futures if f.cancelled()]
    ran = [f for f in futures if not f.cancelled()]
    assert cancelled, "queued calls were cancelled"
    assert ran and all(f.result() in range(8) for f in ran), "running calls finish"
    with pytest.raises(RuntimeError, match="after shutdown"):
        pool.submit(square, 2)
    with pytest.raises(RuntimeError, match="after shutdown"):
        pool.map(square, [1])


def test_an_executor_given_a_session_sends_its_maps_there_too(session, monkeypatch):
    import celerynb._session

    monkeypatch.setattr(celerynb._session, "_current", None)  # no current connection
    pool = celerynb.Executor(session=session)
    assert pool.submit(square, 3).result(timeout=60) == 9
    assert list(pool.map(square, range(10), timeout=60)) == [i * i for i in range(10)]
    pool.shutdown()


def test_shutdown_waits_for_every_call_a_submit_racing_it_sent(session):
    pool = celerynb.Executor()
    sent: list = []
    refused = threading.Event()

    def keep_submitting():
        while not refused.is_set():
            try:
                sent.append(pool.submit(square, len(sent)))
            except RuntimeError:
                refused.set()

    submitter = threading.Thread(target=keep_submitting)
    submitter.start()
    assert wait_for(lambda: len(sent) >= 20)
    pool.shutdown(wait=True)
    undone = [f for f in sent if not f.done()]
    refused.set()
    submitter.join(30)
    # shutdown refuses new calls, and waits for each call it did not refuse
    assert not undone, f"{len(undone)} calls sent during shutdown were not waited for"
    with pytest.raises(RuntimeError, match="after shutdown"):
        pool.submit(square, 1)
