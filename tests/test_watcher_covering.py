"""The watcher and a source that covers the calls this kernel sends (one pattern
subscription): such a call costs no wake, no subscription and no read-back of its own,
yet none of its states is lost, whenever it arrives."""

from __future__ import annotations

import queue
import uuid
from typing import Any

import pytest
from celery import Celery, states
from conftest import wait_for

from celerynb._sources.redis_push import RedisPushSource
from celerynb._watcher import Watcher


class Recorder:
    """The little of a job the watcher needs here: it keeps the states it is given."""

    attached = False
    asked_workers = asked_for_name = False
    worker_run = None

    def __init__(self, task_id: str) -> None:
        self.id = task_id
        self._submitted_at = 0.0
        self.metas: list[tuple[dict[str, Any], bool]] = []

    @property
    def state(self) -> str:
        return self.metas[-1][0]["status"] if self.metas else states.PENDING

    def done(self) -> bool:
        return self.state in states.READY_STATES

    def _apply_meta(self, meta: dict[str, Any], live: bool = False) -> None:
        self.metas.append((meta, live))

    def _notify(self) -> None:
        pass

    def news_age(self, now: float) -> None:
        return None


class CoveringFake:
    """A source that covers ids ending with "-own" while its connection lasts;
    ``poll`` returns what the test queues. Records what the watcher asks of it."""

    sees_every_update = True
    stores_states = True

    def __init__(self) -> None:
        self.connection = 1
        self.during_poll: list[Any] = []  # calls to make in the next poll (other threads')
        self.calls: list[tuple[str, list[str]]] = []
        self.wakes = 0
        self.updates: queue.SimpleQueue[tuple[str, dict[str, Any]]] = queue.SimpleQueue()
        self.stored: dict[str, dict[str, Any]] = {}
        # While the watcher's thread waits in a poll begun with nothing queued: the
        # wakes made before that poll began (then none is on its way to end it).
        self.waiting_after: int | None = None

    def new_task_id(self) -> str:
        return f"{uuid.uuid4()}-own"

    def covering(self, task_id: str) -> int | None:
        return self.connection if task_id.endswith("-own") else None

    def stamp(self, task_id: str) -> int | None:
        return self.covering(task_id)

    def adopt(self, task_ids: list[str]) -> None:
        self.calls.append(("adopt", list(task_ids)))

    def watch(self, task_ids: list[str]) -> list[tuple[str, dict[str, Any]]]:
        self.calls.append(("watch", list(task_ids)))
        return [(t, self.stored[t]) for t in task_ids if t in self.stored]

    def unwatch(self, task_ids: list[str]) -> None:
        self.calls.append(("unwatch", list(task_ids)))

    def poll(self, timeout: float) -> list[tuple[str, dict[str, Any]]]:
        while self.during_poll:
            self.during_poll.pop(0)()
        self.waiting_after = self.wakes if self.updates.empty() else None
        try:
            first = self.updates.get(timeout=timeout)
        except queue.Empty:
            return []
        finally:
            self.waiting_after = None
        got = [first]
        while not self.updates.empty():
            got.append(self.updates.get())
        return got

    def resync(self) -> list[tuple[str, dict[str, Any]]]:
        return []

    def wake(self) -> None:
        self.updates.put(("", {}))  # ends a waiting poll, as the real wake does
        self.wakes += 1

    def close(self) -> None:
        pass


@pytest.fixture
def fake():
    source = CoveringFake()
    watcher = Watcher(source, poll_timeout=0.05)  # type: ignore[arg-type]
    yield source, watcher
    watcher.stop()


def kinds_for(source: CoveringFake, task_id: str) -> list[str]:
    return [kind for kind, ids in source.calls if task_id in ids]


def test_a_covered_call_is_adopted_without_a_wake_or_a_read_back(fake):
    source, watcher = fake
    job = Recorder(watcher.new_task_id())
    watcher.watch(job, before_sending=True)
    assert wait_for(lambda: "adopt" in kinds_for(source, job.id), timeout=10)
    assert source.wakes == 0 and "watch" not in kinds_for(source, job.id)
    source.updates.put((job.id, {"status": states.SUCCESS, "result": 1}))
    assert wait_for(job.done, timeout=10) and job.metas[-1][1] is True  # live news


def test_a_call_stamped_before_its_connection_was_replaced_is_read_back(fake):
    source, watcher = fake
    job = Recorder(watcher.new_task_id())
    source.stored[job.id] = {"status": states.SUCCESS, "result": 2}
    stamp = source.stamp

    def reconnected_after_the_stamp(task_id: str) -> int | None:
        stamped = stamp(task_id)
        source.connection = 2  # the watcher hands it over on the new connection
        return stamped

    source.stamp = reconnected_after_the_stamp  # type: ignore[method-assign]
    watcher.watch(job, before_sending=True)
    assert wait_for(job.done, timeout=10)
    assert kinds_for(source, job.id)[:1] == ["watch"] and job.metas[0][1] is False


def test_an_attached_task_is_read_back_even_where_the_pattern_covers_it(fake):
    source, watcher = fake
    job = Recorder(watcher.new_task_id())  # e.g. attach() of one of this kernel's ids
    source.stored[job.id] = {"status": states.SUCCESS, "result": 3}
    watcher.watch(job)  # not about to be sent: its states may be older than the watch
    assert wait_for(job.done, timeout=10) and kinds_for(source, job.id)[:1] == ["watch"]


def test_a_call_not_covered_is_subscribed_and_read_back(fake):
    source, watcher = fake
    job = Recorder(str(uuid.uuid4()))
    source.stored[job.id] = {"status": states.SUCCESS, "result": 4}
    watcher.watch(job, before_sending=True)
    assert wait_for(job.done, timeout=10) and source.wakes >= 1


def test_a_call_sent_again_while_the_watcher_polls_is_not_let_go(fake):
    """Job.retry() sends the same id again: if an update ended it earlier in the same
    step, the end of that step must not let the new run go."""
    source, watcher = fake
    job = Recorder(str(uuid.uuid4()))  # caught up at once: it ends before the poll
    source.stored[job.id] = {"status": states.FAILURE, "result": "boom"}

    def retried() -> None:
        del source.stored[job.id]
        job.metas.clear()  # the new run: PENDING again
        watcher.watch(job, before_sending=True)

    source.during_poll.append(retried)
    watcher.watch(job)
    assert wait_for(lambda: "watch" in kinds_for(source, job.id) and not source.during_poll)
    assert wait_for(lambda: kinds_for(source, job.id).count("watch") == 2, timeout=10)
    source.updates.put((job.id, {"status": states.SUCCESS, "result": 2}))
    assert wait_for(job.done, timeout=10), kinds_for(source, job.id)
    assert job.metas[-1][0]["result"] == 2


def test_sync_reads_back_a_covered_call_queued_with_it(fake):
    source, watcher = fake
    watcher._poll_timeout = 60  # only a wake ends a poll
    first = Recorder(str(uuid.uuid4()))
    watcher.watch(first)
    # Waiting in a poll: the call and the sync are taken together after it (a call
    # taken alone first is adopted, its states to come by the pattern).
    assert wait_for(lambda: "watch" in kinds_for(source, first.id))
    assert wait_for(lambda: source.waiting_after == source.wakes)
    job = Recorder(watcher.new_task_id())
    source.stored[job.id] = {"status": states.SUCCESS, "result": 5}
    watcher.watch(job, before_sending=True)  # no wake: queued until the sync's
    assert watcher.sync(timeout=10)
    assert job.done() and kinds_for(source, job.id)[:1] == ["watch"]


@pytest.mark.needs_server
def test_a_state_read_while_its_job_waits_to_be_handed_over_reaches_it(cluster):
    """A covered job is queued without waking the watcher; its first state ends the
    watcher's poll, and the watcher hands the job over before it applies that state."""
    app = Celery(broker=cluster.broker_url, backend=cluster.backend_url)
    source = RedisPushSource(app)
    watcher = Watcher(source, poll_timeout=60)  # only a state or a wake ends a poll
    try:
        other = Recorder(str(uuid.uuid4()))
        watcher.watch(other)  # the watcher connects, then waits in its poll
        assert wait_for(lambda: watcher.watched_count == 1 and watcher.status == "watching")
        job = Recorder(watcher.new_task_id())
        watcher.watch(job, before_sending=True)
        Celery(backend=cluster.backend_url).backend.store_result(job.id, 8, states.SUCCESS)
        assert wait_for(job.done, timeout=10), "the state was dropped, or waited for the poll"
        assert job.metas[-1][0]["result"] == 8
    finally:
        watcher.stop()
