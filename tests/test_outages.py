"""The broker/backend Redis going away for real: while it is away every unfinished bar
says so and every call fails in one line; a server that comes back empty tells the
queued jobs that were lost with it; a subscriber dropped by a healthy server comes
back without a word."""

import logging
import time

import pytest
import redis
from conftest import wait_for
from services import pings, restartable_port, start_redis

import celerynb
import celerynb._session as session_module
from celerynb._processes import _stop_process

pytestmark = pytest.mark.needs_server


def gated(gate, value):
    import os
    import time

    deadline = time.monotonic() + 90
    while not os.path.exists(gate) and time.monotonic() < deadline:
        time.sleep(0.05)
    return value


def server_said(server, directory):
    """Why a restarted redis-server does not answer: whether it runs, and its log's end."""
    log = directory / "redis.log"
    tail = log.read_text(errors="replace")[-1500:] if log.exists() else "(no log)"
    return f"redis-server exit code {server.poll()}; its log ends:\n{tail}"


def started(session, gate, value):
    """A job of ``gated(gate, value)`` on ``session``, once it runs."""
    job = session.submit(gated, (str(gate), value))
    assert wait_for(lambda: job.state == "STARTED", timeout=60)
    return job


@pytest.fixture
def private_redis(tmp_path, monkeypatch):
    """A redis-server without persistence, that the test can kill and start again, and
    a one-process cluster on it; yields (session, restart, kill)."""
    port = restartable_port()  # it comes back on the same port
    url = f"redis://127.0.0.1:{port}"
    servers = [start_redis(tmp_path, port)]
    client = redis.Redis.from_url(url, socket_connect_timeout=1)
    assert wait_for(lambda: pings(client), timeout=20)

    def kill():
        _stop_process(servers[-1], grace=0)  # returns once signalled, not once gone:
        servers[-1].wait(timeout=20)  # a restart before its socket closes cannot bind

    def restart():
        servers.append(start_redis(tmp_path, port, "--logfile", str(tmp_path / "redis.log")))
        assert wait_for(lambda: pings(client), timeout=20), server_said(servers[-1], tmp_path)

    local = celerynb.LocalCluster(processes=1, broker=f"{url}/0", backend=f"{url}/1")
    monkeypatch.setattr(session_module, "_current", session_module._current)
    session = celerynb.connect(local)
    try:
        yield session, restart, kill
    finally:
        session.close()
        if pings(client) is False:
            restart()
        local.close()
        client.close()
        for server in servers:
            _stop_process(server)


def test_while_the_backend_is_down_bars_say_so_and_calls_fail_in_one_line(
    private_redis, tmp_path, caplog
):
    session, restart, kill = private_redis
    gate = tmp_path / "gate"
    job = started(session, gate, "through")
    with caplog.at_level(logging.INFO, logger="celerynb"):
        kill()
        assert wait_for(lambda: job.note and "unreachable" in job.note, timeout=15), job.note
        assert "unreachable" in job.status_line()
        for call in (celerynb.workers, lambda: celerynb.submit(sum, [1])):
            with pytest.raises(celerynb.BrokerUnreachableError) as refused:
                call()
            message = str(refused.value)
            assert "\n" not in message and "127.0.0.1" in message, message
        restart()
        assert wait_for(lambda: job.note is None, timeout=30), job.note
    warnings = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    assert sum("lost the connection to the result backend" in w for w in warnings) == 1
    gate.touch()
    assert job.result(timeout=60) == "through"


def test_a_server_that_comes_back_empty_tells_the_queued_jobs_they_were_lost(
    private_redis, tmp_path
):
    session, restart, kill = private_redis
    gate = tmp_path / "gate"
    running = started(session, gate, "kept")
    queued = [session.submit(gated, (str(gate), i)) for i in range(5)]  # one process: queued
    time.sleep(0.5)
    kill()
    restart()  # no persistence: the queue went with the data
    assert wait_for(lambda: all(job.done() for job in queued), timeout=30), [
        job.status_line() for job in queued
    ]
    for job in queued:
        assert job.state == celerynb.LOST
        with pytest.raises(celerynb.MessageLostError, match="without its data"):
            job.result(timeout=0)
    gate.touch()
    assert running.result(timeout=90) == "kept"  # the running one was not lost


def test_a_subscriber_dropped_by_a_healthy_server_reconnects_without_a_word(
    private_redis, tmp_path, caplog
):
    session, _restart, _kill = private_redis
    gate = tmp_path / "gate"
    job = started(session, gate, "heard")
    client = session.app.backend.client
    with caplog.at_level(logging.INFO, logger="celerynb"):
        assert client.client_kill_filter(_type="pubsub") >= 1  # as an output buffer limit does
        gate.touch()
        assert job.result(timeout=60) == "heard"
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]
    assert job.note is None


def big_bytes(megabytes):
    return b"x" * (megabytes * 2**20)


def test_a_result_too_big_to_publish_arrives_without_dropping_the_subscriber(session):
    """Redis drops a subscriber whose pub/sub output buffer passes 32 MB; celerynb's
    workers publish a marker for big states and the kernel reads the key."""
    before = session.watcher.reconnects
    job = celerynb.submit(big_bytes, 40)
    assert len(job.result(timeout=120)) == 40 * 2**20
    assert session.watcher.reconnects == before and session.watcher.outage_since is None
    assert job.progress.extra == {}  # the kernel keeps the result once, not in the progress
    assert len(repr(job.progress)) < 500
