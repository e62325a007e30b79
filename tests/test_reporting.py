"""Worker side: celerynb.tqdm and celerynb.report."""

import io
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
    """Submit a job and count the PROGRESS writes it publishes (Celery's own channel)."""
    client = redis.Redis.from_url(cluster.backend_url)
    pubsub = client.pubsub(ignore_subscribe_messages=True)
    pubsub.psubscribe("celery-task-meta-*")  # our private Redis: only this suite's tasks
    job = job_factory()
    job.result(timeout=60)
    key = f"celery-task-meta-{job.id}".encode()
    count, finished, deadline = 0, False, time.monotonic() + 10
    while not finished and time.monotonic() < deadline:
        message = pubsub.get_message(timeout=0.2)
        if message is None or message["channel"] != key:
            continue
        count += b'"PROGRESS"' in message["data"]
        finished = b'"SUCCESS"' in message["data"]
    assert finished, "never saw the task's SUCCESS message"
    pubsub.close()
    client.close()
    return job, count


def test_throttle_bounds_backend_writes(session, cluster):
    seconds = 1.5
    job, writes = progress_messages(cluster, lambda: celerynb.submit(tight_loop, seconds))
    assert job.result() > 10_000  # the loop really spun
    # default: at most 10 writes/s, plus the first and the final write
    assert 3 <= writes <= seconds * 10 + 3, writes


def test_throttle_is_configurable(session, cluster):
    job, writes = progress_messages(cluster, lambda: celerynb.submit(tight_loop, 1.0, 2))
    assert writes <= 1.0 * 2 + 3, writes


def test_nested_bars_are_all_reported(session):
    job = celerynb.submit(nested, 3, 50)
    assert job.result(timeout=30) == "done"
    descs = [bar.desc for bar in job.progress.bars]
    assert descs[0] == "outer" and "inner" in descs
    assert job.progress.n == 3 and job.progress.total == 3


def test_report_writes_progress_for_non_loop_code(session):
    job = celerynb.submit(reports, 4)
    seen = []
    job.add_listener(lambda j: seen.append(j.progress.n) if j.state == PROGRESS else None)
    assert job.result(timeout=30) == 4
    assert job.progress.desc == "phase" and job.progress.n == 4 and job.progress.total == 4
