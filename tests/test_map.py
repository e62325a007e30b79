"""Many jobs: map, JobGroup, as_completed/wait, attach — real Redis, real workers."""

import concurrent.futures
import logging
import threading
import time
import uuid
from concurrent.futures import CancelledError
from urllib.parse import urlsplit

import pytest
from celery import group
from conftest import wait_for
from kombu.transport.redis import PublishBatch

import celerynb
from celerynb._chunks import MAX_BLOCK, run_chunk
from celerynb._errors import RemoteTraceback
from celerynb._group import ItemCounts, JobGroup, count_items
from celerynb._job import Job
from celerynb._many import auto_chunksize, chunk_spans
from celerynb._remote_errors import exception_from_info


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


def returns_a_lock_for_3(x):
    import threading

    return threading.Lock() if x == 3 else x


def with_its_own_bar(x):
    from celerynb import tqdm

    for _ in tqdm(range(20), desc="inner"):
        time.sleep(0.015)
    return x


def test_chunking_is_pure_arithmetic():
    assert auto_chunksize(10_000, 2) == 1250 and auto_chunksize(3, 8) == 1
    assert chunk_spans(5, 2) == [(0, 2), (2, 4), (4, 5)]
    counts = count_items(
        [(0, 10), (10, 20), (20, 30)],
        ["SUCCESS", "PROGRESS", "PENDING"],
        [10, 4, 0],
        settled=[True, False, False],
        cancelled=[False, False, False],
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


def test_a_maps_chunks_of_a_range_travel_as_ranges_and_wake_the_watcher_once(session, monkeypatch):
    sent, wakes = [], []
    submit, wake = session.submit, session.watcher._wake
    monkeypatch.setattr(
        session, "submit", lambda fn, args, **kw: sent.append(args[1]) or submit(fn, args, **kw)
    )
    monkeypatch.setattr(session.watcher, "_wake", lambda: wakes.append(1) or wake())
    flushes = []
    flush = PublishBatch.flush
    monkeypatch.setattr(PublishBatch, "flush", lambda batch: flushes.append(1) or flush(batch))
    mapped = celerynb.map(square, range(80_000), chunksize=10_000)
    assert sent == [range(start, start + 10_000) for start in range(0, 80_000, 10_000)]
    assert len(wakes) == 1, "one wake of the watcher for all 8 chunks"
    assert len(flushes) == 1, "the 8 chunks leave for the broker together"
    assert mapped.results(timeout=60) == [x * x for x in range(80_000)]


def test_chunks_that_cannot_leave_together_end_cancelled_with_one_line(session, monkeypatch):
    def broker_gone(batch):
        raise ConnectionError("Connection refused")

    monkeypatch.setattr(PublishBatch, "flush", broker_gone)
    watched = []
    watch = session.watcher.watch
    monkeypatch.setattr(
        session.watcher, "watch", lambda job, **how: watched.append(job) or watch(job, **how)
    )
    with pytest.raises(celerynb.BrokerUnreachableError) as info:
        celerynb.map(square, range(40), chunksize=10)
    line = str(info.value)
    assert "could not send 4 calls to the broker at redis://" in line and "refused" in line
    password = urlsplit(session.app.conf.broker_url).password
    assert password and password not in line and "\n" not in line
    assert len(watched) == 4 and all(job.cancelled() for job in watched)


def odd_items_fail(x):
    if x == 500:
        raise StopIteration("an item that raises StopIteration does not end its chunk")
    if x % 7 == 3:
        raise ValueError(f"item {x}")
    return -x


def test_a_chunk_runs_every_item_once_and_keeps_each_failure_at_its_offset():
    ran = []

    def item(x):
        ran.append(x)
        return odd_items_fail(x)

    size = 3 * MAX_BLOCK + 5  # several blocks of the loop, failures in each
    outcome = run_chunk(item, range(size))
    failed = [x for x in range(size) if x == 500 or x % 7 == 3]
    assert ran == list(range(size))
    assert sorted(outcome.errors) == failed
    assert outcome.values == [None if x in failed else -x for x in range(size)]
    assert str(exception_from_info(outcome.errors[10])) == "item 10"
    assert isinstance(exception_from_info(outcome.errors[500]), StopIteration)
    starred = run_chunk(add, [(1, 2), (3, "x"), (5, 6)], star=True)
    assert starred.values == [3, None, 11] and list(starred.errors) == [1]


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
    # The workers were told: every unfinished task ends as REVOKED in the backend, but
    # for the few that finished before the revoke reached their worker (SUCCESS there).
    assert wait_for(
        lambda: {job.async_result.state for job in unfinished} <= {"REVOKED", "SUCCESS"},
        timeout=30,
    ), {job.async_result.state for job in unfinished}
    revoked = [job for job in unfinished if job.async_result.state == "REVOKED"]
    assert len(revoked) > len(unfinished) // 2, len(revoked)
    with pytest.raises(concurrent.futures.CancelledError):
        mapped.results(timeout=1)


def test_as_completed_yields_index_and_item_future_as_chunks_finish(session):
    mapped = celerynb.map(square, range(30), chunksize=7)
    pairs = [(index, item.result()) for index, item in mapped.as_completed(timeout=30)]
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

    # The job store keeps the names learnt: a later kernel lists them by them.
    from celerynb import _store

    _store.RUN_ID, this_kernel = f"{_store.RUN_ID}-later", _store.RUN_ID
    try:
        kept = {r.id: r.name for r in _store.store.previous(session.backend_key)}
    finally:
        _store.RUN_ID = this_kernel
    assert (kept[extended.id], kept[attached.id]) == ("tasks.crunch", "myproject.tasks.crunch")


def test_attach_refuses_what_it_cannot_watch(session):
    with pytest.raises(TypeError, match="attach\\(\\) takes a task id"):
        celerynb.attach(42)
    with pytest.raises(TypeError, match="map\\(\\) needs a callable"):
        celerynb.map(3, [1])
    with pytest.raises(ValueError, match="chunksize must be a positive int"):
        celerynb.map(square, [1], chunksize=0)


def test_counts_tell_cancelled_items_apart_and_a_finished_task_is_never_pending():
    spans = [(0, 10), (10, 20), (20, 30), (30, 40)]
    counts = count_items(
        spans,
        ["SUCCESS", "REVOKED", "SUCCESS", "PENDING"],
        [10, 3, 6, 0],
        # the third: SUCCESS arrived, its values not yet stored (downloading: its bar
        # counts bytes, 6 of them so far): all its items ran
        settled=[True, True, False, False],
        cancelled=[False, True, False, False],
        failed_items=2,
    )
    assert counts == ItemCounts(pending=10, running=0, done=18, failed=2, cancelled=10)
    assert counts.text() == "2 failed, 10 cancelled, 10 pending"


def test_a_batch_one_call_ended_fails_that_call_and_its_later_calls_did_not_run():
    """A joblib batch stops at its first failed call, which the worker marks."""
    from celerynb._group_items import FAILED_CALL, GroupItems

    items = GroupItems([(0, 4), (4, 8), (8, 12)], 3, chunked=False, keep_values=False, batches=True)
    marked, unmarked = ZeroDivisionError("x is 5"), OSError("the whole task")
    setattr(marked, FAILED_CALL, 1)  # the second call of the batch 4..7
    items.record(1, cancelled=False, errors={5: marked})
    items.record(2, cancelled=False, errors=dict.fromkeys(range(8, 12), unmarked))
    assert items.not_run == 2
    assert isinstance(items.item_error(1, 6, "f"), CancelledError)
    assert items.item_error(1, 5, "f") is marked and items.item_error(1, 4, "f") is None
    counts = count_items(
        items.spans,
        ["PENDING", "FAILURE", "FAILURE"],
        [0, 0, 0],
        settled=items.stored,
        cancelled=items.cancelled,
        failed_items=len(items.errors),
        not_run_items=items.not_run,
    )
    assert counts == ItemCounts(pending=4, done=1, failed=5, cancelled=2)
    items.reopen(1, [0, 1, 2, 3])  # retry_failed: the batch runs again, nothing left over
    assert items.not_run == 0


def test_a_groups_rate_after_a_retry_counts_only_the_items_run_again():
    from celerynb._group_progress import items_bar

    counts = ItemCounts(pending=0, running=0, done=95, failed=5, cancelled=0)
    first = items_bar(counts, 100, "f", elapsed=10.0)
    assert (first.n, first.rate) == (100, 10.0)
    retried = items_bar(counts, 100, "f", elapsed=2.0, ran_before=90)  # 10 ran again
    assert (retried.n, retried.rate) == (100, 5.0)
    waiting = items_bar(ItemCounts(pending=10, done=90), 100, "f", elapsed=1.0, ran_before=90)
    assert waiting.rate is None  # none of this run yet: no rate (and no ETA)


def test_a_chunk_running_its_failed_items_again_keeps_the_others_done():
    spans, kept = [(0, 10), (10, 20)], [9, 0]  # chunk 0 runs 1 item again; chunk 1 ran

    def counts(state, partial=0, settled=False):
        return count_items(
            spans, [state, "SUCCESS"], [partial, 0], settled=[settled, True],
            cancelled=[False, False], failed_items=0, kept=kept,
        )  # fmt: skip

    assert counts("PENDING") == ItemCounts(pending=1, done=19)
    assert counts("PROGRESS", partial=0) == ItemCounts(running=1, done=19)
    assert counts("SUCCESS") == counts("PENDING", settled=True) == ItemCounts(done=20)


class LooksUpEverything(Exception):
    """An exception whose ``__getattr__`` raises KeyError (a dict-backed error class)."""

    def __getattr__(self, name):
        return {}[name]


def test_only_a_joblib_batch_reads_the_mark_and_no_exception_can_break_the_count():
    from celerynb._group_items import FAILED_CALL, GroupItems

    chunks = GroupItems([(0, 4)], 1, chunked=True, keep_values=True)  # a map's chunk
    marked = ValueError("item 1")
    setattr(marked, FAILED_CALL, 0)  # a user's exception that happens to carry it
    chunks.record(0, cancelled=False, errors={1: marked})
    assert chunks.not_run == 0 and chunks.item_error(0, 2, "f") is None
    batches = GroupItems([(0, 4)], 1, chunked=False, keep_values=False, batches=True)
    batches.record(0, cancelled=False, errors={2: LooksUpEverything()})
    assert batches.stored == [True] and batches.not_run == 0


def test_a_groups_clock_starts_with_its_first_task():
    first, second = Job("a", "a", None, shipped=True), Job("b", "b", None, shipped=True)
    first._submitted_at, second._submitted_at = 100.0, 103.0  # sent 3 s apart
    group = JobGroup([second, first], name="two")
    group._finished_at = 110.0
    assert group.elapsed == 10.0


def test_a_maps_elapsed_time_and_rate_include_the_time_its_chunks_took_to_send(session):
    started = time.monotonic()
    mapped = celerynb.map(square, range(400), chunksize=1)
    sent_in = time.monotonic() - started  # about a second: 400 tasks to send
    mapped.results(timeout=120)
    took = time.monotonic() - started
    assert took - sent_in / 2 < mapped.elapsed <= took, (sent_in, mapped.elapsed, took)
    assert mapped.progress.rate == pytest.approx(400 / mapped.elapsed)


def test_a_cancelled_map_shows_its_cancelled_items_as_cancelled_never_as_failed(session):
    mapped = celerynb.map(slow_square, range(40), [0.25] * 40, chunksize=1)
    assert wait_for(lambda: sum(job.done() for job in mapped.jobs) >= 2, timeout=30)
    assert mapped.cancel() is True
    assert mapped.cancelled() and mapped.state == "REVOKED"
    counts = mapped.counts
    assert counts.failed == 0 and mapped.exceptions == {}, counts
    assert counts.cancelled >= 20 and counts.done >= 2, counts
    assert counts.done + counts.cancelled == 40 and not counts.running and not counts.pending
    assert mapped.progress.n == counts.done and mapped.progress.percent < 100
    line = mapped.status_line()
    assert f"{counts.cancelled} cancelled" in line and "failed" not in line, line
    values = mapped.results(timeout=1, return_exceptions=True)
    cancelled = [i for i, v in enumerate(values) if isinstance(v, CancelledError)]
    assert len(cancelled) == counts.cancelled
    assert all(values[i] == i * i for i in range(40) if i not in cancelled)
    with pytest.raises(CancelledError):
        mapped.results(timeout=1)
    items = dict(mapped.as_completed(timeout=5))
    assert sorted(items) == list(range(40))
    assert sorted(i for i, item in items.items() if item.cancelled()) == cancelled


def test_cancelling_a_map_while_its_chunks_finish_raises_and_logs_nothing(session, caplog):
    caplog.set_level(logging.WARNING)
    ids: set[str] = set()
    for _attempt in range(3):
        mapped = celerynb.map(square, range(1000), chunksize=1)
        ids |= {job.id for job in mapped.jobs}
        # A slow listener, as a display is: the cancel takes a while, so revokes and
        # results come back while it runs (the race the tester hit with 1,000 chunks).
        mapped.add_listener(lambda _group: time.sleep(0.002))
        assert wait_for(lambda mapped=mapped: mapped.counts.done >= 50, timeout=60)
        assert mapped.cancel() is True
        assert mapped.cancel() is False, "a second cancel is a no-op"
        assert mapped.cancelled() and mapped.state == "REVOKED"
        assert wait_for(lambda mapped=mapped: not mapped.counts.running, timeout=10)
        counts = mapped.counts
        assert counts.failed == 0 and counts.done + counts.cancelled == 1000, counts
        assert counts.cancelled > 0, counts
    # Revokes go out in the background: wait until the last one is recorded (a chunk
    # that ran before its revoke arrived keeps its SUCCESS).
    last = [job for job in mapped.jobs if job.cancelled()][-1]
    assert wait_for(lambda: last.async_result.state in ("REVOKED", "SUCCESS"), timeout=30)
    loud = [
        f"{r.levelname} {r.name}: {r.getMessage()}"
        for r in caplog.records
        if r.levelno >= logging.ERROR
        or r.name == "concurrent.futures"
        or any(task_id in r.getMessage() for task_id in ids)
    ]
    assert not loud, loud[:5]


def test_a_task_is_cancelled_without_its_lock_held_while_the_group_takes_its_output():
    # The watcher tells a group of a task's change holding the group's lock, and asks the
    # task's lock for its output lines (_take_output_of); the group's done callback asks
    # the group's lock. Run under the task's lock, that callback deadlocked with the
    # watcher (the test above hung 1 run in 3).
    job = Job("a", "a", None, shipped=True)
    mapped = JobGroup([job], name="one")
    stuck = []

    def watcher_meanwhile(_job):
        watcher = threading.Thread(target=mapped._on_job_change, args=(job,))
        watcher.start()
        watcher.join(5)
        stuck.append(watcher.is_alive())

    job.add_done_callback(watcher_meanwhile)
    assert job._finish_cancelled() is True
    assert stuck == [False], "the task's lock was held while its done callbacks ran"
    assert job.cancelled() and job.state == "REVOKED" and mapped.cancelled()
    assert job._finish_cancelled() is False, "a second cancel is a no-op"


def test_a_late_outcome_for_a_job_cancelled_meanwhile_changes_nothing(session, caplog):
    # The watcher read a REVOKED or a SUCCESS just before a group's cancel() cancelled
    # the job here: the outcome it then settles comes second and must be a no-op.
    job = celerynb.submit(slow_square, 3, 5.0)
    assert job.cancel() is True
    elapsed = job.elapsed
    job._settle("cancel", None)
    job._settle("value", 9)
    assert job.cancelled() and job.state == "REVOKED" and job.elapsed == elapsed
    assert not [r for r in caplog.records if r.name == "concurrent.futures"]


def test_as_completed_yields_every_item_once_and_a_failure_does_not_end_it(session):
    mapped = celerynb.map(fails_on_17, range(100), chunksize=10)
    items = list(mapped.as_completed(timeout=30))
    assert sorted(index for index, _item in items) == list(range(100))
    by_index = dict(items)
    assert all(item.done() for item in by_index.values())
    error = by_index[17].exception()
    assert isinstance(error, ValueError) and isinstance(error.__cause__, RemoteTraceback)
    with pytest.raises(ValueError, match="item 17 is bad"):
        by_index[17].result()
    assert [by_index[i].result() for i in range(100) if i != 17] == [
        i for i in range(100) if i != 17
    ]


def test_as_completed_says_when_items_are_still_unfinished_after_its_timeout(session):
    mapped = celerynb.map(slow_square, range(4), [2.0] * 4, chunksize=1)
    with pytest.raises(TimeoutError):
        list(mapped.as_completed(timeout=0.5))
    mapped.cancel()


def test_a_task_revoked_elsewhere_ends_its_map_cancelled_not_failed(session):
    mapped = celerynb.map(slow_square, range(6), [0.3] * 6, chunksize=1)
    assert mapped.jobs[-1].cancel() is True  # e.g. %celery_cancel of one chunk
    assert wait_for(mapped.done, timeout=30)
    assert mapped.cancelled() and mapped.state == "REVOKED"
    assert mapped.exceptions == {}
    assert mapped.counts == ItemCounts(done=5, cancelled=1)
    values = mapped.results(timeout=1, return_exceptions=True)
    assert values[:5] == [x * x for x in range(5)]
    assert isinstance(values[5], CancelledError)


def test_a_chunk_whose_results_cannot_travel_fails_its_items_and_the_map_ends(session):
    mapped = celerynb.map(returns_a_lock_for_3, range(10), chunksize=5)
    with pytest.raises(celerynb.SerializationError, match="cannot be pickled.*lock") as info:
        mapped.results(timeout=30)
    assert "item 0 of map(returns_a_lock_for_3, 10 items)" in info.value.__notes__[0]
    assert mapped.state == "FAILURE" and mapped.counts == ItemCounts(done=5, failed=5)
    assert list(mapped.exceptions) == [0, 1, 2, 3, 4]
    assert mapped.results(timeout=1, return_exceptions=True)[5:] == [5, 6, 7, 8, 9]


def test_a_task_given_twice_to_attach_fills_both_places(session):
    job = celerynb.submit(square, 7)
    other = celerynb.submit(square, 8)
    attached = celerynb.attach([job.id, other.id, job.id])
    assert attached.results(timeout=30) == [49, 64, 49]
    assert attached.counts == ItemCounts(done=3)
    assert sorted(i for i, _item in attached.as_completed(timeout=5)) == [0, 1, 2]


def test_items_with_bars_of_their_own_never_pass_for_the_maps_progress(session):
    mapped = celerynb.map(with_its_own_bar, range(8), chunksize=4)
    seen = []
    mapped.add_listener(lambda g: seen.append((g.progress.n, any(j.done() for j in g.jobs))))
    assert mapped.results(timeout=60) == list(range(8))
    before_a_chunk_ended = [n for n, any_done in seen if not any_done]
    assert before_a_chunk_ended and max(before_a_chunk_ended) < 8, seen
    numbers = [n for n, _any_done in seen]
    assert numbers == sorted(numbers), numbers


def test_a_group_says_what_its_tasks_note(session):
    job = celerynb.submit(square, 2)
    attached = celerynb.attach([job.id, str(uuid.uuid4())])
    assert wait_for(lambda: attached.note is not None, timeout=15), attached.status_line()
    assert "no worker has it" in attached.note and attached.note.startswith("1 of 2 tasks: ")
    assert "no worker has it" in attached.status_line()


def test_closing_the_session_ends_an_unfinished_map_instead_of_leaving_it_waiting(
    cluster, monkeypatch
):
    import celerynb._session as session_module

    monkeypatch.setattr(session_module, "_current", session_module._current)
    session = celerynb.connect(cluster)
    sweep = celerynb.map(slow_square, range(8), [0.2] * 8, chunksize=4)  # 0.8 s a chunk
    session.close()
    assert wait_for(sweep.done, timeout=10), sweep.status_line()
    with pytest.raises(celerynb.ConnectionClosedError):
        sweep.result(timeout=0)
