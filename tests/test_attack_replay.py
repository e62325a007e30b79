"""Replayed signed calls: a captured message published again runs nothing, under the same
task id or a new one, now or days later; a legitimate redelivery still runs."""

import os
import signal
import time
import uuid
from datetime import datetime, timedelta, timezone

from conftest import start_worker, wait_for

import celerynb
from celerynb._calls import pickle_call
from celerynb._config import SHIPPED_TASK_NAME
from celerynb._signing import seal
from celerynb._wire import SERIALIZER


def record_run(path, label, gate=None):
    """Appends ``label`` to ``path`` (one line per run), then waits for ``gate``."""
    import time

    with open(path, "a") as runs:
        runs.write(label + "\n")
    deadline = time.monotonic() + 60
    while gate and not os.path.exists(gate) and time.monotonic() < deadline:
        time.sleep(0.02)
    return label


def runs_of(path):
    return path.read_text().splitlines() if path.exists() else []


def signed_call(session, fn, args, *, sealed_at=None):
    """A call as the kernel signs it: (task id, frame)."""
    task_id = str(uuid.uuid4())
    sealed = seal(
        pickle_call(fn, args, {}),
        secret=session.secret,
        purpose="call",
        task_id=task_id,
        now=sealed_at,
    )
    return task_id, sealed.tobytes()


def publish(session, task_id, envelope, **options):
    session.app.send_task(
        SHIPPED_TASK_NAME, args=[envelope], task_id=task_id, serializer=SERIALIZER, **options
    )


def refusals(cluster, task_id):
    text = cluster.log_path.read_text(errors="replace")
    return text.count(f"refused to run task {task_id}")


def test_a_replay_of_a_call_that_ran_runs_nothing_and_writes_nothing(session, cluster, tmp_path):
    runs = tmp_path / "runs"
    task_id, envelope = signed_call(session, record_run, (str(runs), "once"))
    publish(session, task_id, envelope)
    assert celerynb.attach(task_id).result(timeout=30) == "once"
    stored = session.app.backend.get_task_meta(task_id, cache=False)
    for _ in range(2):
        publish(session, task_id, envelope)
    assert wait_for(lambda: refusals(cluster, task_id) == 2, timeout=30), refusals(cluster, task_id)
    assert runs_of(runs) == ["once"]
    assert session.app.backend.get_task_meta(task_id, cache=False) == stored  # untouched


BAD_LINK = {"task": "anything", "args": 5, "kwargs": {}, "options": {},
            "subtask_type": None, "immutable": False}  # fmt: skip


def test_a_replay_after_a_delivery_whose_link_failed_runs_nothing(session, cluster, tmp_path):
    """The link header is not signed: a copy published with a malformed one runs the
    call, then Celery fails sending the link and writes FAILURE (no SUCCESS write closes
    the claim). The claim must still be closed: a replay later must not run again."""
    runs = tmp_path / "runs"
    task_id, envelope = signed_call(session, record_run, (str(runs), "once"))
    publish(session, task_id, envelope, link=BAD_LINK)
    state = lambda: session.app.backend.get_task_meta(task_id, cache=False)["status"]  # noqa: E731
    assert wait_for(lambda: state() == "FAILURE", timeout=30), state()
    assert runs_of(runs) == ["once"]
    publish(session, task_id, envelope)  # the captured message, as it was
    assert wait_for(lambda: refusals(cluster, task_id) == 1, timeout=30), runs_of(runs)
    assert runs_of(runs) == ["once"]


def test_a_replay_under_a_forged_retry_count_runs_nothing(session, cluster, tmp_path):
    runs = tmp_path / "runs"
    task_id, envelope = signed_call(session, record_run, (str(runs), "once"))  # no retries
    publish(session, task_id, envelope, retries=3)  # the header says: third retry
    assert wait_for(lambda: refusals(cluster, task_id) == 1, timeout=30)
    assert runs_of(runs) == []
    text = cluster.log_path.read_text(errors="replace")
    assert f"refused to run task {task_id}: retry 3 of a call that allows 0" in text


def test_a_replay_of_a_call_that_may_retry_runs_nothing_once_it_is_over(session, cluster, tmp_path):
    runs = tmp_path / "runs"
    task_id = str(uuid.uuid4())
    sealed = seal(pickle_call(record_run, (str(runs), "once"), {}), secret=session.secret,
                  purpose="call", task_id=task_id, extra={"retries": 2})  # fmt: skip
    publish(session, task_id, sealed.tobytes())
    assert celerynb.attach(task_id).result(timeout=30) == "once"
    publish(session, task_id, sealed.tobytes(), retries=1)  # a retry it never needed
    assert wait_for(lambda: refusals(cluster, task_id) == 1, timeout=30)
    assert runs_of(runs) == ["once"]


def test_a_retry_nobody_asked_for_runs_nothing_even_while_the_call_runs(session, cluster, tmp_path):
    runs, gate = tmp_path / "runs", tmp_path / "gate"
    task_id = str(uuid.uuid4())
    sealed = seal(pickle_call(record_run, (str(runs), "once", str(gate)), {}),
                  secret=session.secret, purpose="call", task_id=task_id,
                  extra={"retries": 3})  # fmt: skip
    publish(session, task_id, sealed.tobytes())
    assert wait_for(lambda: runs_of(runs) == ["once"], timeout=30)  # attempt 0 runs
    for forged in (1, 2, 3, True):  # retry headers of runs no failure asked for
        publish(session, task_id, sealed.tobytes(), retries=forged)
    assert wait_for(lambda: refusals(cluster, task_id) == 4, timeout=30), refusals(cluster, task_id)
    gate.touch()
    assert celerynb.attach(task_id).result(timeout=30) == "once"
    assert runs_of(runs) == ["once"]


def test_a_call_past_its_signed_expiry_runs_nothing_under_a_changed_expires_header(
    session, cluster, tmp_path
):
    runs = tmp_path / "runs"
    signed_at = datetime.now(timezone.utc)
    for label, expires, header in [
        ("no header", signed_at - timedelta(seconds=1), None),  # the header was removed
        ("later header", signed_at - timedelta(seconds=1), signed_at + timedelta(hours=1)),
        ("not expired", signed_at + timedelta(hours=1), None),
    ]:
        task_id = str(uuid.uuid4())
        sealed = seal(pickle_call(record_run, (str(runs), label), {}), secret=session.secret,
                      purpose="call", task_id=task_id,
                      extra={"expires": expires.isoformat()})  # fmt: skip
        publish(session, task_id, sealed.tobytes(), expires=header)
        if label == "not expired":
            assert celerynb.attach(task_id).result(timeout=30) == label
        else:
            assert wait_for(lambda t=task_id: refusals(cluster, t) == 1, timeout=30), label
            text = cluster.log_path.read_text(errors="replace")
            assert f"refused to run task {task_id}: its signed expiry" in text
    assert runs_of(runs) == ["not expired"]


def test_a_replay_while_the_call_runs_is_refused_and_the_run_goes_on(session, cluster, tmp_path):
    runs, gate = tmp_path / "runs", tmp_path / "gate"
    task_id, envelope = signed_call(session, record_run, (str(runs), "original", str(gate)))
    job = celerynb.attach(task_id)
    publish(session, task_id, envelope)
    assert wait_for(lambda: runs_of(runs) == ["original"], timeout=30)
    publish(session, task_id, envelope)  # the other pool process takes it and waits
    assert wait_for(lambda: job.state == "STARTED", timeout=10)
    time.sleep(0.5)  # let the copy reach the claim while the original holds it
    gate.touch()
    assert job.result(timeout=30) == "original"
    assert wait_for(lambda: refusals(cluster, task_id) == 1, timeout=30)
    assert runs_of(runs) == ["original"]


def test_a_call_sealed_too_long_ago_is_refused_unopened(session, tmp_path):
    runs = tmp_path / "runs"
    sealed_at = time.time() - 2 * 24 * 3600
    task_id, envelope = signed_call(session, record_run, (str(runs), "old"), sealed_at=sealed_at)
    publish(session, task_id, envelope)
    result = session.app.AsyncResult(task_id)
    assert wait_for(lambda: result.state == "FAILURE", timeout=30), result.state
    assert isinstance(result.result, celerynb.PayloadRefusedError)
    assert "sealed" in str(result.result) and "CELERYNB_MAX_CALL_AGE" in str(result.result)
    assert runs_of(runs) == []


def dies_once(marker):
    """Kills its own pool process the first time; returns on the run after that."""

    if not os.path.exists(marker):
        open(marker, "w").close()
        os.kill(os.getpid(), signal.SIGKILL)
    return "second run"


def test_a_redelivery_after_a_lost_pool_process_still_runs(cluster, session, lifeline, tmp_path):
    """acks_late + reject_on_worker_lost: the same message comes back after its pool
    process died; the dead run's claim is taken over and the call completes."""
    from celerynb._processes import _stop_process

    name = f"requeue-{uuid.uuid4().hex[:6]}@localhost"
    log = tmp_path / "worker.log"
    worker = start_worker(lifeline, cluster.worker_env(), name, "requeue-on-loss", log,
                          app="requeue_on_loss")  # fmt: skip
    try:
        assert wait_for(lambda: session.app.control.ping([name], timeout=0.5), timeout=60)
        marker = tmp_path / "died-once"
        job = celerynb.apply_async(dies_once, (str(marker),), queue="requeue-on-loss")
        assert job.result(timeout=60) == "second run"
        assert marker.exists()
        log = (tmp_path / "worker.log").read_text(errors="replace")
        assert "refused to run" not in log
    finally:
        _stop_process(worker)
