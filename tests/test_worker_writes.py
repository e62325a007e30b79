"""Worker side: how many round trips to the result backend a shipped run's states cost.

Every state a key-value backend stores is preceded by a read of the stored state
(Celery's guard: never overwrite a SUCCESS). The run holding a shipped call's claim
skips that read for its STARTED and PROGRESS writes, and its outcome reads once (the
forged-SUCCESS check and the guard share the read). Against the cluster's real Redis.
"""

import uuid

import pytest
from celery import states

from celerynb._claims import holding_claim
from celerynb._outcomes import ShippedTaskBackend
from celerynb._signing import as_json, seal


@pytest.fixture
def reads(session, monkeypatch):
    """Keys this thread's result backend reads from Redis, in order."""
    backend = session.app.backend
    seen: list[str] = []
    real_get = backend.get

    def counting_get(key):
        seen.append(key)
        return real_get(key)

    monkeypatch.setattr(backend, "get", counting_get)
    return seen


def test_the_run_holding_the_claim_writes_without_reading_and_its_outcome_reads_once(
    session, reads
):
    backend = ShippedTaskBackend(session.app, lambda: session.secret)
    task_id = str(uuid.uuid4())
    with holding_claim(task_id, {"signed": "run"}):
        backend.store_result(task_id, {"pid": 1}, states.STARTED)
        backend.store_result(task_id, {"current": 3, "total": 10}, "PROGRESS")
        assert reads == [], "STARTED and PROGRESS of the claim holder read nothing"
        assert session.app.backend.get_task_meta(task_id)["status"] == "PROGRESS"
        reads.clear()
        result = as_json(seal(b"\x80\x05K\x07.", secret=session.secret, purpose="result",
                              task_id=task_id))  # fmt: skip
        backend.mark_as_done(task_id, result)
    assert len(reads) == 1, reads
    assert session.app.backend.get_task_meta(task_id)["status"] == states.SUCCESS


def test_a_write_by_anyone_else_still_never_overwrites_a_success(session, reads):
    backend = ShippedTaskBackend(session.app, lambda: session.secret)
    task_id = str(uuid.uuid4())
    result = as_json(seal(b"\x80\x05K\x07.", secret=session.secret, purpose="result",
                          task_id=task_id))  # fmt: skip
    backend.mark_as_done(task_id, result)
    backend.store_result(task_id, {"current": 1}, "PROGRESS")  # no claim held: a replay
    assert reads, "a write outside the claim reads the stored state first"
    assert session.app.backend.get_task_meta(task_id)["status"] == states.SUCCESS


def test_a_known_state_is_this_threads_and_this_tasks_only(session, reads):
    from celerynb._outcomes import knowing_state

    backend = session.app.backend
    with knowing_state(backend, "known-task", {"status": "STARTED"}):
        assert backend._get_task_meta_for("known-task")["status"] == "STARTED"
        assert reads == []
        backend._get_task_meta_for("another-task")  # read, as Celery would
        assert reads and reads[-1].endswith(b"another-task")
    reads.clear()
    backend._get_task_meta_for("known-task")  # outside: read again
    assert reads
