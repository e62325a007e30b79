"""Many jobs: map, JobGroup, as_completed/wait, attach — real Redis, real workers."""

import concurrent.futures
import time

import pytest
from celery import group
from conftest import wait_for

import celerynb
from celerynb._errors import RemoteTraceback
from celerynb._group import count_items
from celerynb._many import auto_chunksize, chunk_spans


def square(x):
    return x * x


def slow_square(x, pause=0.005):
    time.sleep(pause)
    return x * x


def fails_on_17(x):
    if x == 17:
        raise ValueError(f"item {x} is bad")
    return x


def add(a, b):
    return a + b


def test_chunking_is_pure_arithmetic():
    assert auto_chunksize(10_000, 2) == 1250 and auto_chunksize(3, 8) == 1
    assert chunk_spans(5, 2) == [(0, 2), (2, 4), (4, 5)]
    counts = count_items(
        [(0, 10), (10, 20), (20, 30)],
        ["SUCCESS", "PROGRESS", "PENDING"],
        [10, 4, 0],
        [True, False, False],
        failed_items=1,
    )
    assert (counts.pending, counts.running, counts.done, counts.failed) == (10, 6, 13, 1)


def test_map_of_ten_thousand_tiny_items_returns_them_in_order(session):
    mapped = celerynb.map(square, range(10_000))
    assert mapped.results(timeout=60) == [x * x for x in range(10_000)]
    assert 1 < len(mapped.jobs) < 100, "items travel in chunks, not one task each"
    assert len(mapped) == 10_000 and mapped.state == "SUCCESS"
    assert mapped.progress.n == 10_000 and mapped.progress.percent == 100
    assert list(mapped)[:4] == [0, 1, 4, 9]


def test_map_zips_several_iterables(session):
    assert celerynb.map(add, [1, 2, 3], [10, 20, 30]).results(timeout=30) == [11, 22, 33]


def test_aggregated_progress_is_live_monotonic_and_ends_at_100_percent(session):
    mapped = celerynb.map(slow_square, range(400), chunksize=50)
    seen = []
    mapped.add_listener(lambda g: seen.append(g.progress.n))
    assert mapped.results(timeout=60)[-1] == 399 * 399
    assert seen == sorted(seen), seen
    assert seen[-1] == 400
    assert len([n for n in seen if 0 < n < 400 and n % 50]) >= 1, "no in-task progress seen"


def test_a_failing_item_surfaces_with_its_index_and_traceback_while_others_complete(session):
    mapped = celerynb.map(fails_on_17, range(100), chunksize=10)
    with pytest.raises(ValueError, match="item 17 is bad") as info:
        mapped.results(timeout=30)
    assert "item 17 of map(fails_on_17, 100 items)" in info.value.__notes__[0]
    cause = info.value.__cause__
    assert isinstance(cause, RemoteTraceback) and 'raise ValueError(f"item {x} is bad")' in cause.tb
    assert list(mapped.exceptions) == [17]
    values = mapped.results(timeout=1, return_exceptions=True)
    assert isinstance(values[17], ValueError)
    assert values[:17] + values[18:] == [x for x in range(100) if x != 17]
    assert mapped.state == "FAILURE" and mapped.counts.failed == 1 and mapped.counts.done == 99
    assert "(item 17; 1 of 100 failed)" in mapped.short_result_repr()


def test_cancel_stops_the_rest(session):
    mapped = celerynb.map(slow_square, range(40), [0.25] * 40, chunksize=1)
    assert wait_for(lambda: mapped.counts.done >= 2, timeout=30), mapped.counts
    assert mapped.cancel() is True
    assert mapped.cancelled() and mapped.state == "REVOKED"
    unfinished = [job for job in mapped.jobs if job.cancelled()]
    assert len(unfinished) > 20
    # The workers were told: every unfinished task ends as REVOKED in the backend.
    assert wait_for(
        lambda: all(job.async_result.state == "REVOKED" for job in unfinished), timeout=30
    ), {job.async_result.state for job in unfinished}
    with pytest.raises(concurrent.futures.CancelledError):
        mapped.results(timeout=1)


def test_as_completed_yields_index_and_value_as_chunks_finish(session):
    mapped = celerynb.map(square, range(30), chunksize=7)
    pairs = list(mapped.as_completed(timeout=30))
    assert sorted(pairs) == [(i, i * i) for i in range(30)]


def test_wait_and_as_completed_take_jobs_and_groups(session):
    job = celerynb.submit(square, 3)
    mapped = celerynb.map(square, range(5))
    done, not_done = celerynb.wait([job, mapped], timeout=30)
    assert done == {job, mapped} and not not_done
    finished = list(celerynb.as_completed([job, mapped], timeout=30))
    assert set(finished) == {job, mapped}
    assert celerynb.wait(job, timeout=5).done == {job}


def test_attach_to_a_group_built_by_other_code(session):
    # A canvas built with plain Celery (as a user's app would), not through celerynb.
    result = group(
        session.app.signature("celery.accumulate", args=(i, i + 1)) for i in range(5)
    ).apply_async()
    attached = celerynb.attach(result)
    assert isinstance(attached, celerynb.JobGroup) and len(attached) == 5
    assert attached.results(timeout=30) == [[i, i + 1] for i in range(5)]
    assert attached.state == "SUCCESS" and attached.progress.percent == 100
    assert attached in celerynb.jobs()


def test_attach_by_id_and_async_result_decodes_signed_results(session):
    shipped = celerynb.submit(square, 12)
    shipped.result(timeout=30)
    other_kernel_view = celerynb.attach(shipped.async_result)
    assert other_kernel_view is shipped  # a job of this kernel is returned as is
    raw = session.app.send_task("celery.accumulate", args=(7,))
    attached = celerynb.attach(raw.id, name="accumulate")
    assert attached.result(timeout=30) == [7] and attached.name == "accumulate"
    finished_elsewhere = session.app.send_task("celery.accumulate", args=(8,))
    assert finished_elsewhere.get(timeout=30) == [8]
    late = celerynb.attach(finished_elsewhere.id)
    assert late.done() and late.state == "SUCCESS", "attach returns with the current state"
    # A shipped job's signed result is verified and unpickled for an attached Job too.
    from celerynb._job import Job

    fresh = Job(shipped.id, "again", session, shipped=None)
    session.watcher.watch(fresh)
    assert fresh.result(timeout=30) == 144


def test_an_attached_id_is_named_by_its_stored_state_or_by_the_worker_running_it(
    session, project_worker
):
    """An id attached from elsewhere showed as ``task 1a2b3c4d`` although Celery could tell
    its name: in the stored state (``result_extended``) or from the worker that runs it."""
    import json
    import uuid

    backend = session.app.backend

    def store_state(task_id, meta):  # as a worker of an app with result_extended writes it
        raw = json.dumps({"task_id": task_id, "result": None, **meta})
        key = backend.get_key_for_task(task_id)
        backend.client.set(key, raw)
        backend.client.publish(key, raw)

    extended = celerynb.attach(str(uuid.uuid4()))
    assert extended.name == f"task {extended.id[:8]}", "nothing better is known yet"
    store_state(extended.id, {"status": "STARTED", "name": "two\nlines"})  # not a name
    store_state(extended.id, {"status": "STARTED", "name": "tasks.crunch"})
    assert wait_for(lambda: extended.name == "tasks.crunch", timeout=10), extended.name
    assert extended.call_repr == "tasks.crunch" and "tasks.crunch" in repr(extended)
    store_state(extended.id, {"status": "SUCCESS", "result": 3, "name": "tasks.other"})
    assert extended.result(timeout=10) == 3 and extended.name == "tasks.crunch"

    # No name in the stored state (result_extended is off): the worker running it tells.
    running = session.app.send_task(
        "myproject.tasks.crunch", args=[[1] * 60, 1, 0.05], queue="myproject"
    )
    attached = celerynb.attach(running.id)
    assert wait_for(lambda: attached.name == "myproject.tasks.crunch", timeout=15), attached
    assert attached.result(timeout=30) == 60


def test_attach_refuses_what_it_cannot_watch(session):
    with pytest.raises(TypeError, match="attach\\(\\) takes a task id"):
        celerynb.attach(42)
    with pytest.raises(TypeError, match="map\\(\\) needs a callable"):
        celerynb.map(3, [1])
    with pytest.raises(ValueError, match="chunksize must be a positive int"):
        celerynb.map(square, [1], chunksize=0)
