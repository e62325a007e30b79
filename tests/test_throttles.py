"""The rates celerynb keeps, with a clock the test controls (no server): progress writes
per task, and polling rounds of a backend that does not push."""

from conftest import FakeClock

from celerynb._reporting import TaskProgress
from celerynb._schema import bar_meta
from celerynb._sources import PollingSource


class Task:
    """The part of a Celery task that TaskProgress uses; records every write."""

    def __init__(self):
        self.request = type("Request", (), {"id": "t1", "hostname": "w@h"})()
        self.writes = []

    def update_state(self, task_id, state, meta):
        self.writes.append((task_id, state, meta["n"]))


def test_progress_writes_are_throttled_per_task_and_the_last_state_is_kept():
    clock, task = FakeClock(), Task()
    progress = TaskProgress(task, max_writes_per_second=10, clock=clock)
    for n in range(100):  # 100 updates within 50 ms: only the first one is written
        progress.update_bar(1, bar_meta(n, 10_000))
        clock.now += 0.0005
    assert [n for _, _, n in task.writes] == [0]
    clock.now += 0.1
    progress.update_bar(1, bar_meta(100, 10_000))
    assert [n for _, _, n in task.writes] == [0, 100]
    progress.close_bar(1, bar_meta(101, 10_000))  # closing always writes
    assert [n for _, _, n in task.writes] == [0, 100, 101]
    assert {state for _, state, _ in task.writes} == {"PROGRESS"}


def test_ten_writes_per_second_at_most_over_a_long_loop():
    clock, task = FakeClock(), Task()
    progress = TaskProgress(task, max_writes_per_second=10, clock=clock)
    for n in range(10_000):  # 10 s of updates every millisecond
        progress.update_bar(1, bar_meta(n, 10_000))
        clock.now += 0.001
    assert 99 <= len(task.writes) <= 101


def test_a_failed_write_is_retried_by_the_next_update_not_raised():
    clock = FakeClock()

    class Failing(Task):
        def update_state(self, task_id, state, meta):
            raise ConnectionError("backend away")

    progress = TaskProgress(Failing(), max_writes_per_second=10, clock=clock)
    progress.update_bar(1, bar_meta(1, 10))
    assert progress.write_failed and progress.writes == 0


def test_a_polled_backend_is_read_at_most_once_per_interval():
    clock, rounds = FakeClock(), []

    def read(backend, task_ids):
        rounds.append((clock.now, list(task_ids)))
        return iter([])

    source = PollingSource(app=type("App", (), {"backend": None})(), clock=clock, read=read)
    source.watch(["a", "b"])  # the catch-up read of new jobs
    for _ in range(40):  # the watcher asks every 25 ms for 1 s
        source.poll(timeout=0)
        clock.now += 0.025
    polls = [at for at, ids in rounds[1:] if ids == ["a", "b"]]
    assert len(polls) == 2, rounds
    assert polls[1] - polls[0] >= 0.5
