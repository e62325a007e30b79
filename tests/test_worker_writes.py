"""Worker side: how many round trips to the result backend a shipped run's states cost.

Every state a key-value backend stores is preceded by a read of the stored state
(Celery's guard: never overwrite a SUCCESS). The run holding a shipped call's claim
skips that read for its STARTED, PROGRESS and SUCCESS writes, and its SUCCESS closes its
claim in the same MULTI/EXEC; an outcome written by anyone else reads once (the
forged-SUCCESS check and the guard share the read). Against the cluster's real Redis.
"""

import uuid

import pytest
import redis
from celery import states

from celerynb._claims import (
    DONE,
    Closing,
    Holder,
    LeaseKeeper,
    LocalClaimStore,
    close_with_outcome,
    holding_claim,
    store_for,
)
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


@pytest.fixture
def transactions(session, monkeypatch):
    """How many MULTI/EXEC pipelines this thread's result backend client runs."""
    client = session.app.backend.client
    made = []
    real_pipeline = client.pipeline

    def counting_pipeline(*args, **kwargs):
        made.append(1)
        return real_pipeline(*args, **kwargs)

    monkeypatch.setattr(client, "pipeline", counting_pipeline)
    return made


def a_returned_run(session, task_id):
    """What run_shipped leaves when its call returned: the claim, to close on SUCCESS."""
    claims = store_for(session.app)
    key = f"celerynb-claim-test-{task_id}"
    assert claims.try_claim(key, "holder", lease=10)
    closing = Closing(task_id, claims, key, keep=60)
    close_with_outcome(closing)
    return claims, key


def test_the_runs_success_reads_nothing_and_closes_its_claim_in_the_same_transaction(
    session, reads, transactions, monkeypatch
):
    backend = ShippedTaskBackend(session.app, lambda: session.secret)
    task_id = str(uuid.uuid4())
    session.app.backend.client.set(session.app.backend.get_key_for_task(task_id), b"{forged")
    claims, key = a_returned_run(session, task_id)
    monkeypatch.setattr(claims, "finish", lambda *a, **k: pytest.fail("a round trip more"))
    result = as_json(seal(b"\x80\x05K\x07.", secret=session.secret, purpose="result",
                          task_id=task_id))  # fmt: skip
    backend.mark_as_done(task_id, result)
    assert reads == [], "the claim holder's SUCCESS reads nothing (a forged entry is overwritten)"
    assert len(transactions) == 1, "SUCCESS, its publication and the claim: one MULTI/EXEC"
    assert claims.current(key) == DONE
    assert session.app.backend.get_task_meta(task_id)["status"] == states.SUCCESS


def test_a_claim_whose_success_could_not_be_stored_is_closed_all_the_same(session, monkeypatch):
    backend = ShippedTaskBackend(session.app, lambda: session.secret)
    task_id = str(uuid.uuid4())
    claims, key = a_returned_run(session, task_id)

    real_pipeline = session.app.backend.client.pipeline

    def refusing_pipeline(*args, **kwargs):  # Redis refuses the transaction at EXEC
        pipe = real_pipeline(*args, **kwargs)

        def refused(*args, **kwargs):
            pipe.reset()
            raise redis.ResponseError("string exceeds maximum allowed size")

        pipe.execute = refused
        return pipe

    monkeypatch.setattr(session.app.backend.client, "pipeline", refusing_pipeline)
    with pytest.raises(redis.ResponseError):
        backend.mark_as_done(task_id, {"big": "result"})
    monkeypatch.undo()
    assert claims.current(key) == DONE, "a replay must still be refused"


def test_a_claim_no_success_write_closed_closes_when_celery_cleans_up_after_the_task(session):
    task_id = str(uuid.uuid4())
    claims, key = a_returned_run(session, task_id)
    ShippedTaskBackend(session.app, lambda: session.secret).process_cleanup()  # Celery's
    assert claims.current(key) == DONE


def test_a_returned_runs_claim_is_renewed_until_its_outcome_closes_it(session, caplog):
    """A slow outcome write (a backend retrying) must not let the claim expire: a replay
    would then take it and run the call again."""
    claims = store_for(session.app)
    task_id = str(uuid.uuid4())
    key = f"celerynb-claim-test-{task_id}"
    me = Holder.this_process()
    assert claims.try_claim(key, me.encode(key, session.secret), lease=1)
    lease = LeaseKeeper(claims, key, me, session.secret, lease=30).hold()
    close_with_outcome(Closing(task_id, claims, key, keep=60, lease=lease))
    LeaseKeeper.renew_all()  # a round of the renewing thread, while the write waits
    assert session.app.backend.client.pttl(key) > 10_000, "renewed, not left to expire"
    backend = ShippedTaskBackend(session.app, lambda: session.secret)
    result = as_json(seal(b"\x80\x05K\x07.", secret=session.secret, purpose="result",
                          task_id=task_id))  # fmt: skip
    backend.mark_as_done(task_id, result)
    assert claims.current(key) == DONE
    LeaseKeeper.renew_all()  # closed: no longer renewed, and no "lost the claim" warning
    assert claims.current(key) == DONE
    assert "lost the claim" not in caplog.text


def test_a_claim_kept_elsewhere_closes_before_the_success_is_written(session, monkeypatch):
    """Claims not on the backend's Redis (rpc://, a database backend): closed first, so a
    process killed between the two writes leaves no claim a replay could take."""
    claims = LocalClaimStore()
    task_id = str(uuid.uuid4())
    key = f"celerynb-claim-test-{task_id}"
    assert claims.try_claim(key, "holder", lease=10)
    close_with_outcome(Closing(task_id, claims, key, keep=60))
    seen_at_write = []
    real_pipeline = session.app.backend.client.pipeline

    def watching_pipeline(*args, **kwargs):  # the backend stores in a MULTI/EXEC
        pipe = real_pipeline(*args, **kwargs)
        real_execute = pipe.execute

        def watched_execute(*args, **kwargs):
            seen_at_write.append(claims.current(key))
            return real_execute(*args, **kwargs)

        pipe.execute = watched_execute
        return pipe

    monkeypatch.setattr(session.app.backend.client, "pipeline", watching_pipeline)
    backend = ShippedTaskBackend(session.app, lambda: session.secret)
    result = as_json(seal(b"\x80\x05K\x07.", secret=session.secret, purpose="result",
                          task_id=task_id))  # fmt: skip
    backend.mark_as_done(task_id, result)
    assert seen_at_write == [DONE]
