"""Worker side: celerynb.tqdm and celerynb.report."""

import io
import json
import time

import redis
import tqdm.auto

import celerynb
from celerynb._schema import PROGRESS


def test_outside_a_task_it_is_plain_tqdm_auto():
    out = io.StringIO()
    bar = celerynb.tqdm(range(3), desc="local", file=out)
    assert isinstance(bar, tqdm.auto.tqdm)
    assert list(bar) == [0, 1, 2]
    assert "local" in out.getvalue() and "3/3" in out.getvalue()
    assert celerynb.report(1, 2) is False


def tight_loop(seconds, max_writes=None):
    import time

    from celerynb import tqdm

    kwargs = {} if max_writes is None else {"max_writes_per_second": max_writes}
    bar = tqdm(desc="tight", total=None, mininterval=0, miniters=1, **kwargs)
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        bar.update(1)
    bar.close()
    return bar.n


def nested(outer, inner):
    from celerynb import tqdm

    for _ in tqdm(range(outer), desc="outer"):
        for _ in tqdm(range(inner), desc="inner", leave=False):
            pass
    return "done"


def reports(steps):
    import celerynb

    for i in range(1, steps + 1):
        celerynb.report(i, steps, "phase", force=True)
    return steps


def progress_messages(cluster, job_factory):
    """Submit a job and collect the PROGRESS metas it publishes (Celery's own channel)."""
    client = redis.Redis.from_url(cluster.backend_url)
    pubsub = client.pubsub(ignore_subscribe_messages=True)
    pubsub.psubscribe("celery-task-meta-*")  # our private Redis: only this suite's tasks
    job = job_factory()
    job.result(timeout=60)
    key = f"celery-task-meta-{job.id}".encode()
    metas, finished, deadline = [], False, time.monotonic() + 10
    while not finished and time.monotonic() < deadline:
        message = pubsub.get_message(timeout=0.2)
        if message is None or message["channel"] != key:
            continue
        stored = json.loads(message["data"])
        if stored["status"] == PROGRESS:
            metas.append(stored["result"])
        finished = stored["status"] == "SUCCESS"
    assert finished, "never saw the task's SUCCESS message"
    pubsub.close()
    client.close()
    return job, metas


def test_throttle_bounds_backend_writes(session, cluster):
    seconds = 1.5
    job, metas = progress_messages(cluster, lambda: celerynb.submit(tight_loop, seconds))
    assert job.result() > 10_000  # the loop really spun
    # default: at most 10 writes/s, plus the first and the final write
    assert 3 <= len(metas) <= seconds * 10 + 3, len(metas)


def test_throttle_is_configurable(session, cluster):
    job, metas = progress_messages(cluster, lambda: celerynb.submit(tight_loop, 1.0, 2))
    # 2 writes/s instead of 10 (which would make ~12), plus the first and the final write
    assert 2 <= len(metas) <= 1.0 * 2 + 3, len(metas)
    assert metas[-1]["n"] == job.result(), "the final write carries the final count"


def test_nested_bars_are_all_reported(session):
    job = celerynb.submit(nested, 3, 50)
    assert job.result(timeout=30) == "done"
    descs = [bar.desc for bar in job.progress.bars]
    assert descs[0] == "outer" and "inner" in descs
    assert job.progress.n == 3 and job.progress.total == 3


def test_report_writes_progress_for_non_loop_code(session, cluster):
    job, metas = progress_messages(cluster, lambda: celerynb.submit(reports, 4))
    assert [(m["n"], m["total"], m["desc"]) for m in metas] == [
        (i, 4, "phase") for i in (1, 2, 3, 4)
    ]
    assert job.result(timeout=30) == 4
    assert job.progress.desc == "phase" and job.progress.n == 4 and job.progress.total == 4


def test_a_kernel_that_heard_no_progress_shows_the_last_bars_with_the_result(session):
    """A quick job can finish before the watcher subscribes: its final state brings the
    bars it reported, so the finished bar is not empty."""
    from celerynb._job import Job

    job = celerynb.submit(reports, 4)
    assert job.result(timeout=30) == 4
    late = Job(job.id, "reports", session, shipped=True)  # heard nothing but the end
    late._apply_meta(session.app.backend.get_task_meta(job.id, cache=False))
    assert late.result(timeout=5) == 4
    assert (late.progress.desc, late.progress.n, late.progress.total) == ("phase", 4, 4)
