"""A job waiting in a queue that no online worker consumes says so, and stops saying so
once a worker takes the queue."""

import time
import uuid

from conftest import start_worker, wait_for

import celerynb
from celerynb._processes import _stop_process
from celerynb._queues import ASK_EVERY, CHECK_AFTER, QueueCheck, queue_note


class FakeJob:
    def __init__(self, queue, submitted_at, state="PENDING"):
        self.queue, self._submitted_at, self.state = queue, submitted_at, state
        self.notes = {}

    def done(self):
        return False

    def _set_note(self, topic, text):
        self.notes[topic] = text


def test_the_note_names_the_queue_or_says_no_worker_is_online():
    assert queue_note("gpu", {"celery"}) == "no online worker consumes queue 'gpu'"
    assert queue_note("gpu", None) == "no worker is online to consume queue 'gpu'"
    assert queue_note("gpu", {"gpu", "celery"}) is None


def test_the_workers_are_asked_only_about_jobs_that_waited_and_not_too_often():
    asked = []
    check = QueueCheck(app=None, clock=lambda: 0.0, ask=lambda app: asked.append(1) or {"a"})
    fresh, waiting = FakeJob("b", 100.0), FakeJob("b", 100.0 - CHECK_AFTER)
    check.check([fresh], now=100.0)
    assert not asked  # waited less than CHECK_AFTER
    check.check([fresh, waiting], now=100.0)
    assert wait_for(lambda: waiting.notes.get("queue"), timeout=5)
    assert "queue 'b'" in waiting.notes["queue"] and "queue" not in fresh.notes
    check.check([waiting], now=100.0 + ASK_EVERY / 2)
    time.sleep(0.1)
    assert len(asked) == 1  # not again before ASK_EVERY
    waiting.state = "STARTED"
    check.check([waiting], now=100.0 + ASK_EVERY)
    assert waiting.notes["queue"] is None  # it started: no note


def test_a_job_in_a_queue_nobody_consumes_says_so_until_a_worker_takes_it(
    cluster, session, lifeline, tmp_path
):
    queue = f"nobody-{uuid.uuid4().hex[:6]}"
    job = celerynb.apply_async(sum, ([1, 2],), queue=queue)
    assert wait_for(lambda: job.note, timeout=12), job.status_line()
    assert job.note == f"no online worker consumes queue {queue!r}"
    assert queue in repr(job) and job.state == "PENDING"
    name = f"late-{uuid.uuid4().hex[:6]}@localhost"
    worker = start_worker(lifeline, cluster.worker_env(), name, queue, tmp_path / "worker.log")
    try:
        assert job.result(timeout=60) == 3
        assert job.note is None
    finally:
        _stop_process(worker)
