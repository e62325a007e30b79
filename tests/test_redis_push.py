"""The Redis push source on a real Redis: woken locally (no PUBLISH per job sent), yet a
state the server pushes, or a dropped connection, still ends a waiting poll at once; the
calls this kernel sends are covered by one pattern subscription (no command of their own)."""

import threading
import time
import uuid

import pytest
from celery import Celery, states
from conftest import wait_for

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


# -- the pattern that covers this kernel's own calls ---------------------------------
def store(source, task_id, value):
    Celery(backend=source._app.conf.result_backend).backend.store_result(
        task_id, value, states.SUCCESS
    )


def poll_until(source, task_id, timeout=10):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for seen_id, meta in source.poll(timeout=0.5):
            if seen_id == task_id:
                return meta
    raise AssertionError(f"no state of {task_id} within {timeout}s")


def test_own_task_ids_are_uuids_with_this_sources_suffix_and_never_repeat(source):
    ids = {source.new_task_id() for _ in range(10_000)}
    assert len(ids) == 10_000
    assert {task_id[-8:] for task_id in ids} == {source._id_suffix}  # a suffix per source
    assert len({task_id[:8] for task_id in ids}) > 9_900  # told apart by how they begin
    assert all(str(uuid.UUID(task_id)) == task_id for task_id in ids)
    other = RedisPushSource(source._app)
    assert not other.new_task_id().endswith(source._id_suffix)


def test_an_adopted_call_gets_its_states_with_no_command_of_its_own(source, monkeypatch):
    task_id = source.new_task_id()
    covered = source.covering(task_id)
    assert covered is not None and source.covering(str(uuid.uuid4())) is None

    def no_command(*args, **kwargs):
        raise AssertionError("a command for one adopted call")

    monkeypatch.setattr(source._backend.client, "mget", no_command)
    monkeypatch.setattr(source._pubsub, "subscribe", no_command)
    monkeypatch.setattr(source._pubsub, "unsubscribe", no_command)
    source.adopt([task_id])
    store(source, task_id, 5)
    assert poll_until(source, task_id)["result"] == 5
    source.unwatch([task_id])


def test_a_state_of_an_own_call_not_yet_adopted_is_read_all_the_same(source):
    """The watcher hands over a job queued while it polled only after the poll: the
    state that poll read must not be dropped as unknown."""
    task_id = source.new_task_id()
    assert source.stamp(task_id) is not None  # as Watcher.watch does before it is sent
    store(source, task_id, 6)
    assert poll_until(source, task_id)["result"] == 6
    foreign = str(uuid.uuid4())  # another task, never watched: nothing comes of it
    store(source, foreign, 7)
    assert all(seen != foreign for seen, _ in source.poll(timeout=0.5))


def test_a_message_under_the_pattern_for_no_call_of_ours_is_dropped_unread(source, monkeypatch):
    """Anyone who can PUBLISH may send on a channel under the pattern (the suffix shows
    in every task id sent): unless the kernel expects that id, nothing is read for it."""
    from celerynb._schema import STORED_MARKER

    def no_read(*args, **kwargs):
        raise AssertionError("a key read for a channel no job of ours expects")

    monkeypatch.setattr(source._backend.client, "get", no_read)
    monkeypatch.setattr(source._backend, "decode_result", no_read)
    finished = source.new_task_id()  # e.g. a job that ended and was let go
    publisher = source._backend.client
    for _ in range(3):
        publisher.publish(source._key(finished), STORED_MARKER)
    store_less = source._key(source.new_task_id())
    publisher.publish(store_less, b'{"status": "SUCCESS"}')
    assert source.poll(timeout=0.5) == []


def test_own_calls_are_watched_without_a_subscription_each_and_read_back(source):
    own, foreign = source.new_task_id(), str(uuid.uuid4())
    store(source, own, 1)
    store(source, foreign, 2)
    caught_up = dict(source.watch([own, foreign]))
    assert caught_up[own]["result"] == 1 and caught_up[foreign]["result"] == 2
    channels = set(source._pubsub.channels)
    assert source._key(foreign) in channels and source._key(own) not in channels
    source.unwatch([own, foreign])
    assert source._key(foreign) not in source._subscribed


def test_a_new_connection_covers_anew_and_reads_every_call_back(source):
    task_id = source.new_task_id()
    before = source.covering(task_id)
    source.adopt([task_id])
    store(source, task_id, 3)  # as if published while the connection was down
    caught_up = dict(source.resync())
    assert caught_up[task_id]["result"] == 3
    after = source.covering(task_id)
    assert after is not None and after != before  # a job stamped before: caught up


def test_a_task_subscribed_alone_is_subscribed_again_after_a_failed_subscribe(source):
    foreign = str(uuid.uuid4())  # e.g. attached: its channel is subscribed alone

    def dropped(*channels):
        raise ConnectionError("Connection reset by peer")

    source._pubsub.subscribe = dropped
    with pytest.raises(ConnectionError):
        source.watch([foreign])
    source.resync()  # what the watcher does next
    assert source._key(foreign) in source._pubsub.channels
    store(source, foreign, 4)
    assert poll_until(source, foreign)["result"] == 4


def test_a_backend_with_another_key_layout_has_every_task_subscribed_alone(source):
    plain_key = source._key
    source._key = lambda task_id: plain_key(task_id) + b":meta"
    source._key_prefix = source._probe_key_prefix()  # as a source of such a backend probes
    own = source.new_task_id()
    assert source.covering(own) is None and source.stamp(own) is None
    assert source._pattern() is None


def test_a_closed_source_covers_nothing(cluster):
    closed = RedisPushSource(Celery(broker=cluster.broker_url, backend=cluster.backend_url))
    closed.watch([])
    own = closed.new_task_id()
    assert closed.covering(own) is not None
    closed.close()
    assert closed.covering(own) is None


def test_states_read_while_a_subscription_is_confirmed_wait_for_the_next_poll(source):
    foreign = str(uuid.uuid4())
    source.watch([foreign])
    pubsub = source._pubsub
    channel = source._key(foreign)
    assert wait_for(lambda: dict(source._backend.client.pubsub_numsub(channel)).get(channel))
    store(source, foreign, 9)  # published: it sits in the socket before the PONG
    source._confirm(pubsub)
    assert [message["channel"] for message in source._early] == [source._key(foreign)]
    assert poll_until(source, foreign)["result"] == 9


def test_a_call_sent_costs_the_backend_no_subscription_or_read_back_of_its_own(session):
    """The kernel's own calls are covered by one pattern subscription: submitting and
    following 40 of them adds no SUBSCRIBE, MGET or UNSUBSCRIBE at the server."""
    client = session.app.backend.client

    def counts():
        stats = client.info("commandstats")
        return {c: stats.get(f"cmdstat_{c}", {}).get("calls", 0) for c in COUNTED}

    session.submit(abs, (-1,)).result(timeout=60)  # connected and subscribed already
    before = counts()
    jobs = [session.submit(abs, (-i,)) for i in range(40)]
    assert [job.result(timeout=60) for job in jobs] == list(range(40))
    let_go = lambda: not any(job.id in session.watcher._jobs for job in jobs)  # noqa: E731
    assert wait_for(let_go, timeout=10)  # their UNSUBSCRIBE, if any, was sent by then
    after = counts()
    assert {c: after[c] - before[c] for c in COUNTED} == dict.fromkeys(COUNTED, 0)


COUNTED = ("subscribe", "unsubscribe", "mget")
