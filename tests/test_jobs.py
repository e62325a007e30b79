"""Jobs against a real Redis and real Celery worker processes."""

import asyncio
import concurrent.futures
import sys
import time

import pytest
from conftest import wait_for

import celerynb
from celerynb._config import mask_url
from celerynb._errors import RemoteTraceback


def count_to(n, desc="count"):
    from celerynb import tqdm

    total = 0
    for i in tqdm(range(n), desc=desc):
        total += i
    return total


def slow_steps(steps, pause):
    import time

    from celerynb import tqdm

    for _ in tqdm(range(steps), desc="slow", mininterval=0):
        time.sleep(pause)
    return steps


def fails():
    def inner():
        raise ValueError("bad value 42")

    inner()


def test_notebook_function_result_round_trips(session):
    job = celerynb.submit(count_to, 100_000)
    assert job.result(timeout=30) == sum(range(100_000))
    assert job.state == "SUCCESS" and job.done() and not job.cancelled()
    assert job.progress.n == 100_000 and job.progress.total == 100_000
    assert job.progress.desc == "count"


def test_lambda_and_closure_are_shipped(session):
    offset = 5
    assert celerynb.submit(lambda x: x + offset, 1).result(timeout=30) == 6


def test_registered_task_is_sent_by_name_as_json(session):
    # celery.accumulate is a built-in task returning its positional args
    job = celerynb.submit("celery.accumulate", {"a": [1, 2]}, "b")
    assert job.result(timeout=30) == [{"a": [1, 2]}, "b"]
    assert job.async_result.get(timeout=10) == [{"a": [1, 2]}, "b"]  # plain Celery agrees


def test_submit_returns_before_the_task_finishes(session):
    started = time.perf_counter()
    job = celerynb.submit(slow_steps, 20, 0.1)
    assert time.perf_counter() - started < 1.0
    assert not job.done()
    assert job.result(timeout=30) == 20


def test_workers_answer_inspect_while_shipped_calls_run_and_wait(session):
    """A worker tells its active and reserved tasks with their arguments as JSON: a
    shipped call's binary frame must not break that answer (nor the watcher's questions)."""
    jobs = [celerynb.submit(slow_steps, 20, 0.1) for _ in range(3)]  # two run, one waits
    assert wait_for(lambda: sum(job.state != "PENDING" for job in jobs) == 2, timeout=30)
    busy = {task_id for worker in celerynb.workers() for task_id, _ in worker.active}
    assert busy & {job.id for job in jobs}, "the worker did not answer with its active tasks"
    assert [job.result(timeout=30) for job in jobs] == [20, 20, 20]


def test_progress_snapshots_arrive_and_are_monotonic(session):
    job = celerynb.submit(slow_steps, 15, 0.1)
    seen = []
    job.add_listener(lambda j: seen.append((j.state, j.progress.n)))
    assert job.result(timeout=30) == 15
    progress = [n for state, n in seen if state == "PROGRESS"]
    assert len(progress) >= 5, seen
    assert progress == sorted(progress), seen
    assert progress[-1] == 15
    assert job.progress.rate and job.progress.rate > 0


def test_remote_exception_reraises_with_remote_traceback(session):
    job = celerynb.submit(fails)
    with pytest.raises(ValueError, match="bad value 42") as info:
        job.result(timeout=30)
    cause = info.value.__cause__
    assert isinstance(cause, RemoteTraceback)
    assert "in inner" in cause.tb and 'raise ValueError("bad value 42")' in cause.tb
    assert job.state == "FAILURE"
    assert "in inner" in job.remote_traceback


def test_registered_task_failure_carries_celery_traceback(session):
    job = celerynb.submit("celery.accumulate", 1, index=5)  # args[5]: IndexError on the worker
    with pytest.raises(IndexError, match="out of range") as info:
        job.result(timeout=30)
    assert isinstance(info.value.__cause__, RemoteTraceback)
    assert "Traceback" in info.value.__cause__.tb and "accumulate" in info.value.__cause__.tb


def test_cancel_terminates_a_running_job(session):
    job = celerynb.submit(slow_steps, 600, 0.05)
    assert wait_for(lambda: job.state == "PROGRESS", timeout=20), job.state
    assert job.cancel() is True
    assert job.cancelled() and job.done() and job.state == "REVOKED"
    with pytest.raises(concurrent.futures.CancelledError):
        job.result(timeout=1)
    assert wait_for(lambda: job.async_result.state == "REVOKED", timeout=20)
    assert job.cancel() is False  # already done


def test_jobs_work_with_concurrent_futures_wait_and_as_completed(session):
    jobs = [celerynb.submit(lambda i=i: i * i) for i in range(6)]
    done, pending = concurrent.futures.wait(jobs, timeout=30)
    assert not pending and len(done) == 6
    results = sorted(j.result() for j in concurrent.futures.as_completed(jobs, timeout=30))
    assert results == [i * i for i in range(6)]


def test_done_callback_runs_once_with_the_job(session):
    calls = []
    job = celerynb.submit(lambda: "ok")
    job.add_done_callback(calls.append)
    job.result(timeout=30)
    assert wait_for(lambda: calls == [job], timeout=5)


def test_job_can_be_awaited(session):
    async def main():
        return await celerynb.submit(lambda: 7)

    assert asyncio.run(asyncio.wait_for(main(), 30)) == 7


def test_elapsed_freezes_when_done_and_repr_tells_state(session):
    job = celerynb.submit(count_to, 10)
    job.result(timeout=30)
    first = job.elapsed
    time.sleep(0.05)
    assert job.elapsed == first
    assert "SUCCESS" in repr(job) and job.id in repr(job)


def test_connect_by_url_with_secret(cluster, session, monkeypatch):
    import celerynb._session as session_module

    monkeypatch.setattr(session_module, "_current", session_module._current)
    by_url = celerynb.connect(
        cluster.broker_url, backend=cluster.backend_url, secret=cluster.secret
    )
    assert by_url is celerynb.current_session() and by_url is not session
    assert celerynb.submit(lambda: "via url").result(timeout=30) == "via url"
    by_url.close()
    assert not by_url.watcher.alive()


def test_polling_source_follows_jobs_at_a_bounded_rate(cluster, monkeypatch):
    # The path taken for result backends without pub/sub; run here against real Redis.
    import celerynb._session as session_module
    from celerynb._sources import PollingSource
    from celerynb._watcher import Watcher

    monkeypatch.setattr(session_module, "_current", session_module._current)
    polled = celerynb.connect(
        cluster.broker_url, backend=cluster.backend_url, secret=cluster.secret
    )
    source = PollingSource(polled.app, interval=0.5)
    reads = []
    original_read = source._read
    monkeypatch.setattr(
        source, "_read", lambda ids: reads.append(time.monotonic()) or original_read(ids)
    )
    polled.watcher = Watcher(source)
    try:
        job = celerynb.submit(slow_steps, 20, 0.1)
        seen = []
        job.add_listener(lambda j: seen.append(j.progress.n))
        assert job.result(timeout=30) == 20
        assert len([n for n in seen if 0 < n < 20]) >= 1, seen  # progress seen mid-way
        gaps = [b - a for a, b in zip(reads[1:], reads[2:])]
        assert gaps and min(gaps) >= 0.45, gaps  # at most ~2 reads a second
    finally:
        polled.close()


def test_closing_a_session_finishes_its_running_jobs_instead_of_hanging(cluster, monkeypatch):
    import celerynb._session as session_module

    monkeypatch.setattr(session_module, "_current", session_module._current)
    private = celerynb.connect(
        cluster.broker_url, backend=cluster.backend_url, secret=cluster.secret
    )
    job = private.submit(slow_steps, (30, 0.1))
    assert wait_for(lambda: job.state == "PROGRESS", timeout=20), job.state
    private.close()
    with pytest.raises(celerynb.ConnectionClosedError, match="was closed before job"):
        job.result(timeout=5)
    with pytest.raises(celerynb.NotConnectedError, match="was closed"):
        private.submit(slow_steps, (1, 0))


def test_connect_without_arguments_reads_a_celeryconfig_module(cluster, tmp_path, monkeypatch):
    import celerynb._session as session_module

    monkeypatch.setattr(session_module, "_current", session_module._current)
    for name in ("CELERYNB_BROKER_URL", "CELERY_BROKER_URL", "CELERY_RESULT_BACKEND"):
        monkeypatch.delenv(name, raising=False)
    (tmp_path / "celeryconfig.py").write_text(
        f"broker_url = {cluster.broker_url!r}\nresult_backend = {cluster.backend_url!r}\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    configured = celerynb.connect(secret=cluster.secret)
    try:
        assert configured.broker_url == mask_url(cluster.broker_url)
        assert configured.submit(lambda: "configured").result(timeout=30) == "configured"
    finally:
        configured.close()
        sys.modules.pop("celeryconfig", None)


def raises_timeout():
    raise TimeoutError("the remote call timed out")


def test_result_timeout_names_the_job_its_state_and_the_wait(session):
    import uuid

    import kombu

    nobody = f"celerynb-nobody-{uuid.uuid4().hex[:8]}"  # a queue no worker consumes
    job = session.submit(count_to, (3,), queue=nobody)
    try:
        expected = rf"^count_to\(3\) \(job {job.id}\) is still PENDING after 0.5s$"
        with pytest.raises(TimeoutError, match=expected):
            job.result(timeout=0.5)
        with pytest.raises(TimeoutError, match=expected.replace("0.5s", "0.2s")):
            job.exception(timeout=0.2)
        assert not job.done()
    finally:
        job.cancel()
        with session.app.connection_for_write() as connection:
            kombu.Queue(nobody)(connection.default_channel).delete()
    # A task that raised TimeoutError itself: its own error, as it was.
    failing = session.submit(raises_timeout)
    with pytest.raises(TimeoutError, match="^the remote call timed out$"):
        failing.result(timeout=30)
