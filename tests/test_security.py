"""Shipped pickles run only when signed; results are verified before unpickling."""

import base64
import os
import pickle
import uuid

import pytest
from conftest import wait_for

import celerynb
from celerynb._config import SHIPPED_TASK_NAME
from celerynb._errors import PayloadRefusedError
from celerynb._signing import seal
from celerynb._wire import SERIALIZER


class LeavesAMark:
    """Unpickling this object creates a file: proof that a pickle was loaded."""

    def __init__(self, path):
        self.path = path

    def __reduce__(self):
        return (open, (self.path, "w"))


def marker_pickle(path):
    return base64.b64encode(pickle.dumps(LeavesAMark(path))).decode()


def send_raw(session, envelope_for):
    task_id = str(uuid.uuid4())
    session.app.send_task(
        SHIPPED_TASK_NAME, args=[envelope_for(task_id)], task_id=task_id, serializer=SERIALIZER
    )
    return session.app.AsyncResult(task_id)


def call_frame(data, secret, task_id):
    return seal(data, secret=secret, purpose="call", task_id=task_id).tobytes()


@pytest.mark.parametrize(
    "attack", ["unsigned", "wrong-secret", "tampered", "truncated", "replayed"]
)
def test_worker_refuses_bad_payloads_without_unpickling(session, tmp_path, attack):
    mark = tmp_path / "unpickled"
    evil = base64.b64decode(marker_pickle(str(mark)))
    good = call_frame(b"harmless", session.secret, "another-task")

    def envelope_for(task_id):
        harmless = b"h" * len(evil)  # signed, then its bytes swapped for the evil pickle
        signed = call_frame(harmless, session.secret, task_id)
        if attack == "unsigned":
            return evil
        if attack == "wrong-secret":
            return call_frame(evil, b"attacker", task_id)
        if attack == "tampered":
            return signed.replace(harmless, evil)
        if attack == "truncated":
            return signed[: signed.index(harmless) + 5]
        return good  # a valid frame replayed under a new task id

    result = send_raw(session, envelope_for)
    assert wait_for(lambda: result.state == "FAILURE", timeout=30), result.state
    assert isinstance(result.result, PayloadRefusedError)
    assert "refused" in str(result.result)
    assert not mark.exists(), "the payload was unpickled"


def sleeper(seconds):
    import time

    time.sleep(seconds)
    return "real"


def test_kernel_ignores_a_forged_result_without_unpickling_and_the_real_one_wins(session, tmp_path):
    mark = tmp_path / "unpickled-in-kernel"
    job = celerynb.submit(sleeper, 3)
    assert wait_for(lambda: job.state in ("STARTED", "PROGRESS"), timeout=20)
    forged = {"data": marker_pickle(str(mark)), "purpose": "result", "task_id": job.id}
    session.app.backend.store_result(job.id, forged, "SUCCESS")
    assert wait_for(lambda: job.note is not None, timeout=10)
    assert "unsigned SUCCESS" in job.note and "refused" in job.note
    assert job.result(timeout=30) == "real"
    assert not mark.exists()


def test_secret_does_not_appear_in_reprs(session, cluster):
    job = celerynb.submit(lambda: 1)
    job.result(timeout=30)
    for text in (repr(job), repr(session), repr(cluster), job.status_line()):
        assert cluster.secret not in text
        assert session.secret.decode() not in text
    assert os.environ.get("CELERYNB_SECRET") != cluster.secret  # the kernel's env is untouched


def test_a_forged_progress_entry_is_only_data(session, tmp_path):
    mark = tmp_path / "unpickled-from-progress"
    job = celerynb.submit(sleeper, 2)
    assert wait_for(lambda: job.state in ("STARTED", "PROGRESS"), timeout=20)
    forged = {
        "schema": "celerynb.progress/1",
        "bars": [{"n": "lots", "total": {"__reduce__": marker_pickle(str(mark))}}, "junk"],
        "current": marker_pickle(str(mark)),
        "total": None,
        "updated": "not a time",
    }
    session.app.backend.store_result(job.id, forged, "PROGRESS")
    assert job.result(timeout=30) == "real"  # the real run still wins
    assert not mark.exists(), "something in a progress entry was executed"


def test_a_shipped_calls_message_shows_no_repr_of_its_payload(session):
    """Flower, task events and worker logs show a message's ``argsrepr``: a short line for a
    shipped call, never Celery's repr of the sealed bytes (its pickled arguments)."""
    secret_argument = "do-not-show-" + uuid.uuid4().hex
    call = session._prepare(len, (secret_argument,), {}, str(uuid.uuid4()), None, None)
    assert call.options["argsrepr"].startswith("(<signed call of len, ")
    assert call.options["kwargsrepr"] == "{}"
    assert secret_argument not in call.options["argsrepr"]
