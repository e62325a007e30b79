"""The brokers and result backends of the seed, on this machine's real servers:
RabbitMQ with ``rpc://``, and the database backend on SQLite and PostgreSQL.
Progress, results, failures, cancel and map work on each."""

import logging
import threading
import time
from contextlib import ExitStack

import pytest
from conftest import wait_for
from services import private_amqp_queue, private_postgres_database, require_rabbitmq

import celerynb
import celerynb._session as session_module


def steps(n, pause):
    from celerynb import tqdm

    for _ in tqdm(range(n), desc="steps"):
        time.sleep(pause)
    return n


def fails(value):
    raise ValueError(f"bad value {value}")  # the failing line


def square(x):
    return x * x


@pytest.fixture(scope="module", params=["rpc", "sqlite", "postgres"])
def backend_session(request, cluster, tmp_path_factory):
    """A LocalCluster's workers on the named broker/backend, and a session to it."""
    kind = request.param
    with ExitStack() as stack:
        if kind == "rpc":
            broker, backend = require_rabbitmq(), "rpc://"
            queue = stack.enter_context(private_amqp_queue())
        else:  # the suite's Redis as the broker, a queue of this module's own
            broker, queue = cluster.broker_url, f"celerynb-{kind}-{cluster.port}"
            if kind == "sqlite":
                backend = f"db+sqlite:///{tmp_path_factory.mktemp('sqlite')}/results.sqlite3"
            else:
                backend = stack.enter_context(private_postgres_database())
        local = stack.enter_context(
            celerynb.LocalCluster(processes=2, broker=broker, backend=backend, queues=[queue])
        )
        previous = session_module._current
        session = celerynb.connect(local)
        session_module._current = previous
        stack.callback(session.close)
        yield kind, session, local


@pytest.fixture
def current(backend_session, monkeypatch):
    kind, session, local = backend_session
    monkeypatch.setattr(session_module, "_current", session)
    return kind, session, local


def test_progress_results_and_failures(current):
    kind, session, _ = current
    job = session.submit(steps, (10, 0.1))
    seen = []
    job.add_listener(lambda j: seen.append((j.state, j.progress.n)))
    assert job.result(timeout=60) == 10
    assert any(state == "PROGRESS" and 0 < n < 10 for state, n in seen), (kind, seen)
    assert job.state == "SUCCESS" and job.progress.n == 10

    failing = session.submit(fails, (7,))
    with pytest.raises(ValueError, match="bad value 7"):
        failing.result(timeout=60)
    assert "the failing line" in failing.remote_traceback


def prints_lines(n, pause, release):
    import os
    import time

    for i in range(n):
        print("line", i)
        time.sleep(pause)
    deadline = time.monotonic() + 60
    while not os.path.exists(release) and time.monotonic() < deadline:
        time.sleep(0.05)
    print("the end", end="")  # the last line, just before the job returns
    return n


def test_every_output_line_arrives_pushed_or_polled(current, tmp_path):
    """A polled backend is read every 0.5 s, and sees only some of the writes: each write
    repeats the lines of the last 1.5 s, and the final result carries the latest ones."""
    kind, session, _ = current
    release = tmp_path / "release"
    job = session.submit(prints_lines, (30, 0.03, str(release)))
    lines = tuple(("stdout", f"line {i}") for i in range(30))
    try:
        assert wait_for(lambda: len(job.output.lines) >= 30, timeout=60), (kind, job.output)
        assert job.output.lines == lines and job.output.dropped == 0, (kind, job.output)
    finally:
        release.touch()
    assert job.result(timeout=60) == 30
    assert job.output.lines == lines + (("stdout", "the end"),), (kind, job.output)


def test_cancel_stops_the_task_on_the_worker(current):
    kind, session, local = current
    job = session.submit(steps, (600, 0.05))
    assert wait_for(lambda: job.state == "PROGRESS", timeout=60), job.state
    assert job.cancel() and job.cancelled()

    def still_running():
        active = session.app.control.inspect(destination=[local.worker_name], timeout=1).active()
        return any(task["id"] == job.id for tasks in (active or {}).values() for task in tasks)

    assert wait_for(lambda: not still_running(), timeout=30), f"{kind}: the task still runs"
    if kind != "rpc":  # a stored backend tells every other observer too
        backend = session.app.backend
        assert wait_for(lambda: backend.get_state(job.id) == "REVOKED", timeout=30)


def test_map_returns_ordered_results(current):
    mapped = celerynb.map(square, range(200), chunksize=25)
    assert mapped.results(timeout=60) == [x * x for x in range(200)]
    assert mapped.progress.n == 200


def test_attach_with_rpc_warns_in_one_line(current, caplog):
    kind, session, _ = current
    if kind != "rpc":
        pytest.skip("rpc:// only")
    other = celerynb.connect(session.app.conf.broker_url, backend="rpc://", check=False)
    try:
        elsewhere = other.app.send_task(
            "celery.accumulate", args=(1,), queue=session.app.conf.task_default_queue
        )
        with caplog.at_level(logging.WARNING, logger="celerynb"):
            job = session.attach(elsewhere.id)
        lines = [r.getMessage() for r in caplog.records if "rpc://" in r.getMessage()]
        assert len(lines) == 1 and "\n" not in lines[0], lines
        assert "only the client that sent a task receives its states" in lines[0]
        assert job.state == celerynb.UNKNOWN and not job.done()
        assert "celerynb did not send this one, so it cannot follow it" in job.note
    finally:
        other.close()


def test_closing_an_rpc_session_says_nothing(current, caplog):
    """Its reply queue is deleted once its consumer is cancelled: amqp warned of the
    broker's cancel arriving while the channel closed (a stray line at every close)."""
    kind, _, local = current
    if kind != "rpc":
        pytest.skip("rpc:// only")
    previous = session_module._current
    other = celerynb.connect(local)
    session_module._current = previous
    try:
        assert other.submit(square, (6,)).result(timeout=60) == 36
    finally:
        with caplog.at_level(logging.WARNING):
            other.close()
    assert [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING] == []


def test_a_group_sent_with_the_apps_own_api_says_at_once_why_it_cannot_be_followed(current, caplog):
    """With rpc://, the states of a group sent with the user's own app go to that app's
    reply queue, which its GroupResult consumes at once: attached, it says so at once
    (it showed PENDING 0/5 forever), and the app's own get() still gets every result."""
    kind, session, _ = current
    if kind != "rpc":
        pytest.skip("rpc:// only")
    from celery import Celery, group

    app = Celery("myapp", broker=session.app.conf.broker_url, backend="rpc://")
    app.conf.task_default_queue = session.app.conf.task_default_queue
    mine = celerynb.connect(app, secret=session.secret)  # the kernel's own app
    try:
        sent = group(app.signature("celery.accumulate", (i,)) for i in range(5)).apply_async()
        with caplog.at_level(logging.WARNING, logger="celerynb"):
            attached = celerynb.attach(sent)
        assert attached.state == celerynb.UNKNOWN, attached.status_line()
        assert attached.note.startswith("5 of 5 tasks: with the rpc:// result backend only")
        assert "5 of 5 tasks: with the rpc://" in attached.status_line()
        lines = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
        assert len(lines) == 1 and "5 task(s) attached" in lines[0], lines
        assert sent.get(timeout=30) == [[i] for i in range(5)]
    finally:
        mine.close()


def test_database_backend_is_polled_in_batches_at_a_bounded_rate(current, monkeypatch):
    kind, session, _ = current
    if kind == "rpc":
        pytest.skip("database backends only")
    from sqlalchemy import event
    from sqlalchemy.engine import Engine

    statements = []

    def record(conn, cursor, statement, parameters, context, executemany):
        if threading.current_thread().name == "celerynb-watcher" and "celery_taskmeta" in statement:
            statements.append((time.monotonic(), statement, len(parameters or ())))

    # When each polling round starts: the rate is bounded there. Its query runs a moment
    # later, sooner or later as the CPU is busy (0.2-0.4 s on a loaded machine).
    source, jobs, round_starts = session.watcher._source, [], []
    polling, poll, read = threading.local(), source.poll, source._read

    def timed_poll(timeout):
        polling.now = True
        try:
            return poll(timeout)
        finally:
            polling.now = False

    def timed_read(task_ids):
        if getattr(polling, "now", False) and len(task_ids) == 40:
            round_starts.append(time.monotonic())
        return read(task_ids)

    monkeypatch.setattr(source, "poll", timed_poll)
    monkeypatch.setattr(source, "_read", timed_read)
    event.listen(Engine, "before_cursor_execute", record)
    try:
        jobs += [session.submit(steps, (200, 0.05)) for _ in range(40)]  # a round: 40 ids

        def polling_rounds():
            """Reads of all 40 tasks. The catch-up reads of new jobs read fewer, or, in one
            batch, all 40 once (hence 4 wanted below, and the last 3 measured)."""
            return [entry for entry in statements if entry[2] == len(jobs)]

        assert wait_for(lambda: len(polling_rounds()) >= 4 and len(round_starts) >= 3, timeout=30)
    finally:
        event.remove(Engine, "before_cursor_execute", record)
        for job in jobs:
            job.cancel()
    rounds = polling_rounds()[-3:]
    assert all(" IN " in statement.upper() for _, statement, _ in rounds), rounds[-1][1]
    gaps = [b - a for a, b in zip(round_starts, round_starts[1:])]
    assert min(gaps) >= 0.45, gaps  # one query per round for 40 tasks, two rounds a second


def test_rpc_jobs_of_earlier_kernels_are_not_reattached_and_say_why(current, caplog, monkeypatch):
    kind, session, _ = current
    if kind != "rpc":
        pytest.skip("rpc:// only")
    from celerynb import _store

    _store.store.record(_store.JobRecord("earlier-job", "f", False), session.backend_key)
    monkeypatch.setattr(_store, "RUN_ID", "a later kernel")
    with caplog.at_level(logging.WARNING, logger="celerynb"):
        assert celerynb.jobs(previous=True) == []
    assert any("cannot be re-attached" in r.getMessage() for r in caplog.records)
