"""The Redis push source on a real Redis: woken locally (no PUBLISH per job sent), yet a
state the server pushes, or a dropped connection, still ends a waiting poll at once."""

import threading
import time
import uuid

import pytest
from celery import Celery, states

from celerynb._sources.redis_push import RedisPushSource

pytestmark = pytest.mark.needs_server


@pytest.fixture
def source(cluster):
    app = Celery(broker=cluster.broker_url, backend=cluster.backend_url)
    watched = RedisPushSource(app)
    watched.watch([])  # connected and subscribed, as the watcher leaves it
    yield watched
    watched.close()


def poll_in_thread(source, timeout, until_updates=False):
    """Start ``source.poll(timeout)`` in a thread (again while it returns nothing, with
    ``until_updates``: a subscription's confirmation also ends a poll); return (result
    holder, thread)."""
    got = {}

    def run():
        started = time.monotonic()
        try:
            got["updates"] = source.poll(timeout)
            while until_updates and not got["updates"] and time.monotonic() < started + timeout:
                got["updates"] = source.poll(timeout)
        except Exception as exc:
            got["error"] = exc
        got["seconds"] = time.monotonic() - started

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return got, thread


def test_a_wake_ends_a_waiting_poll_at_once_without_a_round_trip_to_redis(source, monkeypatch):
    def no_publish(*args, **kwargs):
        raise AssertionError("a wake went through Redis")

    monkeypatch.setattr(source._backend.client, "publish", no_publish)
    got, thread = poll_in_thread(source, timeout=20)
    time.sleep(0.2)  # the poll is waiting (it returns only on a wake, or after 20 s)
    source.wake()
    thread.join(10)
    assert got.get("updates") == [] and got["seconds"] < 5, got
    for _ in range(10_000):  # more wakes than the socket holds: never blocks nor raises
        source.wake()
    assert source.poll(timeout=0.1) == []  # every wake taken at once


def test_a_state_pushed_by_the_server_ends_a_waiting_poll(source):
    task_id = str(uuid.uuid4())
    assert source.watch([task_id]) == []
    got, thread = poll_in_thread(source, timeout=20, until_updates=True)
    time.sleep(0.2)
    Celery(backend=source._app.conf.result_backend).backend.store_result(
        task_id, 42, states.SUCCESS
    )
    thread.join(10)
    assert got["seconds"] < 5, got
    ((seen_id, meta),) = got["updates"]
    assert seen_id == task_id and meta["status"] == states.SUCCESS and meta["result"] == 42


def test_a_dropped_connection_ends_a_waiting_poll_with_an_error(source):
    got, thread = poll_in_thread(source, timeout=20)
    time.sleep(0.2)
    # Only this source's connection: the server is the suite's, its other clients go on.
    host, port = source._pubsub.connection._sock.getsockname()[:2]
    assert source._backend.client.client_kill_filter(addr=f"{host}:{port}") == 1
    thread.join(10)
    assert "error" in got and got["seconds"] < 5, got  # the watcher then resyncs
    assert source.resync() == []


def test_a_state_read_along_with_a_subscriptions_confirmation_is_not_kept_waiting(source):
    task_id = str(uuid.uuid4())
    assert source.watch([task_id]) == []  # its confirmation is on its way
    Celery(backend=source._app.conf.result_backend).backend.store_result(
        task_id, 7, states.SUCCESS
    )  # published by then: both sit on the socket, read together by the first poll
    started = time.monotonic()
    updates = []
    while not updates and time.monotonic() - started < 30:
        updates = source.poll(timeout=10)
    assert [seen_id for seen_id, _ in updates] == [task_id]
    assert time.monotonic() - started < 5, "the state waited for the poll's timeout"


def test_a_kernel_with_more_than_1024_files_open_still_polls(cluster):
    """select() cannot watch a descriptor numbered 1024 or more; a kernel may hold that many."""
    import os
    import resource

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and hard < 1200:
        pytest.skip(f"this machine allows {hard} open files")
    resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, 1200), hard))
    held = []
    try:
        null = os.open(os.devnull, os.O_RDONLY)
        held.append(null)
        while held[-1] < 1030:
            held.append(os.dup(null))
        watched = RedisPushSource(Celery(broker=cluster.broker_url, backend=cluster.backend_url))
        try:
            watched.watch([])
            assert watched._woken.fileno() >= 1024
            assert watched.poll(timeout=0.2) == []  # waited, not a ValueError from select()
        finally:
            watched.close()
    finally:
        for fd in held:
            os.close(fd)
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
