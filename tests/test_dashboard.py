"""The dashboard against real servers: a LocalCluster's workers report CPU and memory
with their heartbeats, queue depths on Redis and RabbitMQ, and the live dashboard
(in this process) showing workers, queues, jobs and a task stream, cancelling, and
costing nothing once closed."""

from __future__ import annotations

import os
import re
import signal
import threading
import time
import uuid

import kombu
import pytest
from celery import states
from conftest import wait_for
from services import AMQP_URL, private_amqp_queue, require_rabbitmq

import celerynb
import celerynb._dashboard as dashboard_module
from celerynb._dashboard import Dashboard
from celerynb._queues import declared_queues, queue_depths
from celerynb._worker_report import REPORT_EVENT
from celerynb._workers import inspect_workers

pytestmark = pytest.mark.needs_server


def slow(steps, pause=0.1):
    from celerynb import tqdm

    for _ in tqdm(range(steps), desc="slow"):
        time.sleep(pause)
    return steps


def test_workers_report_the_cpu_and_memory_of_each_process_with_their_heartbeats():
    with celerynb.LocalCluster(processes=2) as cluster:  # its own: no test kills its pool
        check_reports(cluster)


def check_reports(cluster):
    from celery import Celery

    probe = Celery("probe", broker=cluster.broker_url, set_as_current=False)
    reports: list[dict] = []
    receivers: list = []

    def heard(event):
        reports.append(event)
        if len(reports) >= 2:
            receivers[0].should_stop = True

    def listen():
        with probe.connection_for_read() as connection:
            receivers.append(probe.events.Receiver(connection, handlers={REPORT_EVENT: heard}))
            receivers[0].capture(limit=None, timeout=None, wakeup=True)

    thread = threading.Thread(target=listen, daemon=True)
    thread.start()
    try:
        assert wait_for(lambda: len(reports) >= 2, timeout=30), "no report heard in 30 s"
    finally:
        if receivers:
            receivers[0].should_stop = True
        thread.join(10)
    (pool,) = inspect_workers(probe, expected=1)
    probe.close()
    report = reports[-1]
    assert report["hostname"] == cluster.worker_name
    rows = report["celerynb_processes"]
    main_pid = cluster.pids[-1]
    assert rows[0][0] == main_pid
    assert set(pool.pids) <= {row[0] for row in rows}  # every pool process is reported
    assert all(row[1] is not None and row[1] >= 0 for row in rows)  # a second report: CPU %
    assert all(row[2] > 5_000_000 for row in rows)  # resident memory of a Python process
    assert report["celerynb_memory_total"] > 100_000_000


def test_queue_depths_count_the_messages_waiting_in_redis_lists(cluster):
    from celery import Celery

    app = Celery("probe", broker=cluster.broker_url, set_as_current=False)
    name = f"dash-{uuid.uuid4().hex[:8]}"
    try:
        with app.connection_for_write() as connection:
            producer = connection.Producer()
            queue = kombu.Queue(name, kombu.Exchange(name), routing_key=name)  # as Celery does
            for priority in (0, 5, 9):  # kombu keeps a list per priority step
                producer.publish(
                    {}, exchange=name, routing_key=name, declare=[queue], priority=priority
                )
        with app.connection_for_read() as connection:
            depths = queue_depths(connection, [name, "never-declared-" + name])
            assert depths == {name: 3, "never-declared-" + name: 0}
            many = queue_depths(connection, [f"{name}-{i}" for i in range(60)])
            assert len(many) == 50  # bounded
            # A queue another client sent to is found on the broker (kombu's bindings);
            # Celery's event and remote-control queues are not listed.
            declared = declared_queues(connection)
        assert name in declared
        assert not [q for q in declared if q.startswith("celeryev.") or "pidbox" in q]
    finally:
        with app.connection_for_write() as connection:
            kombu.Queue(name)(connection.default_channel).delete()
        app.close()


def test_queue_depths_on_rabbitmq_count_ready_messages_and_survive_a_missing_queue():
    require_rabbitmq()
    from celery import Celery

    app = Celery("probe", broker=AMQP_URL, set_as_current=False)
    with private_amqp_queue() as name:
        with app.connection_for_write() as connection:
            producer = connection.Producer()
            for _ in range(2):
                producer.publish({}, routing_key=name, declare=[kombu.Queue(name)])
        missing = f"celerynb-test-missing-{uuid.uuid4().hex[:8]}"
        # The missing queue first: RabbitMQ closes the channel, the next one still answers.
        with app.connection_for_read() as connection:
            assert queue_depths(connection, [missing, name]) == {missing: 0, name: 2}
            assert declared_queues(connection) == []  # RabbitMQ does not list its queues
    app.close()


@pytest.fixture
def board(session):
    opened = Dashboard(session)
    yield opened
    opened.close()


def test_the_dashboard_shows_workers_queues_jobs_and_the_task_stream_and_cancels(
    board, session, cluster
):
    stranded_queue = f"nobody-{uuid.uuid4().hex[:6]}"
    # Heard a worker's event: the listener is bound, the job's task events will be heard.
    heard = lambda: any(w.last_heard for w in board._cluster.workers.values())  # noqa: E731
    assert wait_for(heard, timeout=30)
    job = celerynb.submit(slow, 600)
    waiting = celerynb.apply_async(slow, (1,), queue=stranded_queue)
    try:
        assert wait_for(lambda: cluster.worker_name in board.html, timeout=30), board.html
        assert wait_for(lambda: job.state == "PROGRESS", timeout=30)
        assert wait_for(
            lambda: (
                f"<tr class='celerynb-queue-stranded' style='background:#f8d7da;color:#842029'>"
                f"<td>{stranded_queue}</td><td>1</td>" in board.html
            ),
            timeout=30,
        ), board.html
        # Workers: pool, processes, CPU and memory from the worker's own report.
        assert wait_for(lambda: "prefork" in board.html and "MB (" in board.html, timeout=30)
        # The job's row moves, and its run is on the task stream, by its name.
        assert wait_for(lambda: job.id[:8] in board.html and "<rect class='run'" in board.html)
        assert wait_for(lambda: f"slow {job.id[:8]} RUNNING" in board.html, timeout=10)
        assert board._cluster.task_events  # the board asked the workers for them
        assert "(task events)" in board.html
        # Newest first: the job sent last heads the table.
        ours = lambda: [r.id for r in board._jobs if r.id in (job.id, waiting.id)]  # noqa: E731
        assert wait_for(lambda: ours() == [waiting.id, job.id], timeout=10), ours()
        first = board.html
        assert wait_for(lambda: board.html != first, timeout=10)
        # Cancel as the button does: the job chosen in the dropdown.
        assert wait_for(lambda: job.id in dict((v, k) for k, v in board.choice.options), timeout=15)
        assert board.choice.value == "", "no job is chosen until someone picks one"
        board.cancel_button.click()  # with none chosen: nothing is cancelled
        assert "cancel sent" not in board.refresh() and not job.done()
        board.choice.value = job.id
        board.cancel_button.click()
        assert wait_for(lambda: job.state == states.REVOKED, timeout=30), job.state
        assert wait_for(lambda: f"cancel sent for job {job.id}" in board.html, timeout=10)
        assert wait_for(
            lambda: f"{job.id[:8]} REVOKED" in board.html or ">REVOKED<" in board.html, timeout=30
        )
    finally:
        job.cancel()
        waiting.cancel()


def test_a_worker_killed_whole_is_marked_gone(board, session, cluster, lifeline, tmp_path):
    from conftest import start_worker

    from celerynb._processes import _stop_process

    name = f"doomed-{uuid.uuid4().hex[:6]}@localhost"
    queue = f"doomed-{uuid.uuid4().hex[:6]}"
    worker = start_worker(lifeline, cluster.worker_env(), name, queue, tmp_path / "worker.log")
    try:
        online = f"<tr class='celerynb-worker'><td>{name}</td>"
        assert wait_for(lambda: online in board.html, timeout=30), board.html
        assert wait_for(lambda: f"<td>{queue}</td>" in board.html, timeout=30)  # its queue
        os.killpg(worker.pid, signal.SIGKILL)  # no goodbye: its heartbeats just stop
        gone = f"<td>{name} <span class='celerynb-gone'"
        assert wait_for(lambda: gone in board.html, timeout=30), board.html
        assert re.search(r"Workers: \d+ online, 1 gone<", board.html), board.html
    finally:
        _stop_process(worker)


def test_a_closed_dashboard_stops_its_threads_and_draws_no_more(session):
    board = Dashboard(session)
    assert wait_for(lambda: board.draws > 0, timeout=30)
    assert len(board.alive_threads()) == 2
    started = time.monotonic()
    board.close()
    assert time.monotonic() - started < 5
    assert board.alive_threads() == []
    draws = board.draws
    celerynb.submit(slow, 3, 0.01).result(timeout=60)  # news the listener would have drawn
    assert board.draws == draws


def test_a_redraw_that_changes_nothing_sends_nothing(session, monkeypatch):
    drawn = ["first"]
    # The drawing stands still (other tests change the shared cluster meanwhile).
    monkeypatch.setattr(dashboard_module, "render", lambda data: drawn[0])
    board = Dashboard(session, start=False)  # no threads: the test draws
    sent: list[str] = []
    board.view.observe(lambda change: sent.append(change["new"]), names="value")
    try:
        assert board.refresh() == "first"
        assert board.refresh() == "first"
        assert sent == ["first"] and board.draws == 1
        drawn[0] = "second"
        assert board.refresh() == "second"
        assert sent == ["first", "second"] and board.draws == 2
    finally:
        board.close()


def test_closing_the_connection_stops_its_dashboard(cluster, monkeypatch):
    import celerynb._session

    monkeypatch.setattr(celerynb._session, "_current", celerynb._session._current)
    own = celerynb.connect(cluster)
    board = celerynb.dashboard(own)
    assert wait_for(lambda: board.draws > 0, timeout=30)
    own.close()
    assert wait_for(lambda: board.closed and not board.alive_threads(), timeout=30)


def test_an_idle_cluster_is_asked_rarely(session, monkeypatch):
    calls: list[float] = []

    def counting(*args, **kwargs):
        calls.append(time.monotonic())
        return inspect_workers(*args, **kwargs)

    monkeypatch.setattr(dashboard_module, "inspect_workers", counting)
    monkeypatch.setattr(dashboard_module.Dashboard, "_busy", lambda self: False)
    board = Dashboard(session)
    try:
        # Every worker heard (a worker heard first asks for one round at once) and asked.
        def heard() -> bool:
            workers = list(board._cluster.workers.values())
            return bool(workers) and all(w.last_heard for w in workers)

        assert wait_for(lambda: calls and heard(), timeout=30)
        start = time.monotonic()
        time.sleep(7.5)  # the window observed: idle, one round every 15 s (busy: every 3 s)
        window = [t for t in calls if start <= t <= start + 7.5]
        assert len(window) <= 1, f"{len(window)} inspect rounds in 7.5 s while idle"
    finally:
        board.close()


def test_dashboard_returns_the_live_one_of_the_session(session):
    board = celerynb.dashboard(session)
    try:
        assert celerynb.dashboard(session) is board
        board.close()
        again = celerynb.dashboard(session)
        assert again is not board and not again.closed
        again.close()
    finally:
        board.close()
