"""Job.retry() and JobGroup.retry_failed(): what failed runs again, in place, on real workers."""

import pytest
from conftest import wait_for
from shipped import fails_first_times, gated

import celerynb
from celerynb._registry import registry


def test_a_failed_job_runs_again_as_itself(session, tmp_path):
    counter = tmp_path / "runs"
    job = celerynb.submit(fails_first_times, str(counter), 1)
    with pytest.raises(ValueError, match="run 0 fails"):
        job.result(timeout=30)
    task_id = job.id
    assert job.retry() is job and job.id == task_id
    assert not job.done() or job.state == "SUCCESS"
    assert job.result(timeout=30) == 1 and job.state == "SUCCESS"
    assert job.exception() is None and counter.read_text() == "2"
    with pytest.raises(RuntimeError, match="succeeded: nothing to retry"):
        job.retry()


def test_only_a_finished_job_sent_here_can_run_again(session, tmp_path, tmp_path_factory):
    gate = tmp_path / "gate"
    running = celerynb.submit(gated, str(gate), 1)
    with pytest.raises(RuntimeError, match="still running"):
        running.retry()
    gate.touch()
    assert running.result(timeout=30) == 1
    failing = celerynb.submit(fails_first_times, str(tmp_path / "fails"), 5)
    with pytest.raises(ValueError):
        failing.result(timeout=30)
    registry._jobs.pop(failing.id)  # this kernel forgets it, as another kernel never knew it
    other = celerynb.attach(failing.id)
    assert other is not failing and wait_for(other.done)
    with pytest.raises(RuntimeError, match="cannot run again: it was not sent by this kernel"):
        other.retry()


def test_retry_failed_reruns_only_the_failed_items_of_a_map(session, tmp_path):
    marks = str(tmp_path)

    def fails_once_if_multiple_of_3(x, marks=marks):
        import os

        mark = os.path.join(marks, str(x))
        if x % 3 == 0 and not os.path.exists(mark):
            open(mark, "w").close()
            raise ValueError(f"item {x} fails once")
        return x * 10

    mapped = celerynb.map(fails_once_if_multiple_of_3, range(30), chunksize=7)
    with pytest.raises(ValueError):
        mapped.results(timeout=30)
    assert sorted(mapped.exceptions) == list(range(0, 30, 3))
    ids = [job.id for job in mapped.jobs]
    assert mapped.retry_failed() is mapped
    assert mapped.results(timeout=30) == [x * 10 for x in range(30)]
    assert mapped.exceptions == {} and mapped.state == "SUCCESS"
    assert mapped.counts.done == 30 and mapped.progress.n == 30
    bar = mapped.progress.primary  # its rate is of this run: the 10 items run again
    assert bar.rate is not None and round(bar.rate * bar.elapsed) == 10, (bar.rate, bar.elapsed)
    assert [job.id for job in mapped.jobs] == ids, "the same tasks, in place"
    with pytest.raises(RuntimeError, match="nothing of .* failed"):
        mapped.retry_failed()


def test_while_a_retry_runs_the_items_kept_count_done_and_only_the_rest_runs(session, tmp_path):
    marks, gate = str(tmp_path), str(tmp_path / "gate")

    def fails_once_then_waits(x, marks=marks, gate=gate):
        import os
        import time

        if x % 5 == 0:
            mark = os.path.join(marks, str(x))
            if not os.path.exists(mark):
                open(mark, "w").close()
                raise ValueError(f"item {x} fails once")
            deadline = time.monotonic() + 60
            while not os.path.exists(gate) and time.monotonic() < deadline:
                time.sleep(0.01)
        return x

    mapped = celerynb.map(fails_once_then_waits, range(20), chunksize=5)
    with pytest.raises(ValueError):
        mapped.results(timeout=30)
    mapped.retry_failed()
    try:  # two run at once (two worker processes), held by the gate
        assert wait_for(lambda: mapped.counts.running == 2, timeout=30), mapped.counts
        counts = mapped.counts  # the 16 items kept stay done; the 4 run again
        assert (counts.done, counts.pending + counts.running, counts.failed) == (16, 4, 0)
        assert mapped.progress.n == 16 and mapped.progress.primary.rate is None
    finally:
        open(gate, "w").close()  # never leave the workers held for the next tests
    assert mapped.results(timeout=30) == list(range(20))
    bar = mapped.progress.primary
    assert bar.n == 20 and round(bar.rate * bar.elapsed) == 4


def test_a_job_lost_with_its_worker_is_sent_again_when_asked(session, tmp_path):
    gate = tmp_path / "gate"
    job = celerynb.apply_async(gated, (str(gate), 7), retry_lost=1)
    assert wait_for(lambda: job.state in ("STARTED", "PROGRESS"), timeout=30)
    job._lose("gone@host", 5.0)  # what the watcher does when its worker stops heartbeating
    assert wait_for(lambda: "sent again (1 of 1)" in (job.note or ""), timeout=10), job.note
    assert not job.done()
    gate.touch()
    assert job.result(timeout=30) == 7
    second_gate = tmp_path / "second"
    once = celerynb.apply_async(gated, (str(second_gate), 1), retry_lost=1)
    assert wait_for(lambda: once.state in ("STARTED", "PROGRESS"), timeout=30)
    once._lose("gone@host", 5.0)
    assert wait_for(lambda: "sent again" in (once.note or ""), timeout=10)
    once._lose("gone@host", 5.0)  # lost again: no retry left
    with pytest.raises(celerynb.WorkerLostError, match="stopped sending heartbeats"):
        once.result(timeout=10)
    second_gate.touch()  # its two runs (it was not really lost) end on the workers


def test_a_call_that_carried_scattered_data_does_not_keep_it_to_run_again(session):
    array = celerynb.scatter(list(range(10)))
    job = celerynb.submit(fails_on_scattered, array)
    with pytest.raises(ValueError, match="no"):
        job.result(timeout=30)
    with pytest.raises(RuntimeError, match="carried scattered data"):
        job.retry()


def fails_on_scattered(values):
    raise ValueError(f"no: {len(values)} values")


def test_what_cannot_run_again_says_why_and_a_failed_resend_never_leaves_it_waiting(
    session, tmp_path, monkeypatch
):
    cancelled = celerynb.submit(gated, str(tmp_path / "never"), 1)
    cancelled.cancel()
    with pytest.raises(RuntimeError, match="was cancelled: submit it again"):
        cancelled.retry()
    mapped = celerynb.map(fails_first_times, [str(tmp_path / "m")], [1])
    with pytest.raises(ValueError):
        mapped.results(timeout=30)
    with pytest.raises(RuntimeError, match="use its retry_failed"):
        mapped.jobs[0].retry()
    failing = celerynb.submit(fails_first_times, str(tmp_path / "f"), 5)
    with pytest.raises(ValueError):
        failing.result(timeout=30)

    def broker_gone(job):
        raise celerynb.BrokerUnreachableError("could not send: broker gone")

    monkeypatch.setattr(session, "resend", broker_gone)
    with pytest.raises(celerynb.BrokerUnreachableError):
        failing.retry()
    assert failing.done() and isinstance(failing.exception(), celerynb.BrokerUnreachableError)


def test_a_reopened_future_runs_every_done_callback_again(session):
    job = celerynb.Job("not-sent", "local", session, shipped=True)
    job.set_result(1)
    seen = []
    job.add_done_callback(lambda j: seen.append(j.result()))  # after done: runs at once
    job._reopen()
    job.set_result(2)
    assert seen == [1, 2]


def test_a_call_that_would_wait_past_its_signatures_age_is_refused(session):
    with pytest.raises(ValueError, match="past the .* s a signed call stays valid"):
        celerynb.apply_async(fails_first_times, ("x", 0), countdown=2 * 24 * 3600)
    with pytest.raises(ValueError, match="stays valid"):
        celerynb.apply_async(fails_first_times, ("x", 0), retries=100, retry_delay=3600)
