"""Forged backend entries, written the way an attacker who can reach the result backend
would (a SET of the task's key and a PUBLISH on its channel): none runs script in the
page, none is taken as a state, and for shipped jobs none finishes the job — the real,
signed outcome still wins."""

import json
import os
import signal
import time
import uuid

import pytest
from conftest import wait_for
from shipped import gated

import celerynb
from celerynb._display import WidgetRenderer
from celerynb._errors import ShippedTaskError
from celerynb._job import Job
from celerynb._schema import acceptable_state
from celerynb._signing import as_json, seal, verify_envelope
from celerynb._tables import JobTable, WorkerTable
from celerynb._workers import WorkerInfo

XSS = '<img src=x onerror="window.__pwned=1">'


# A frame as a forger without the secret makes it: well-formed, signed with another key.
FORGED_FRAME = as_json(seal(b"\x80\x04K\x01.", secret=b"forger", purpose="result", task_id="x"))[
    "frame"
]


def forge(session, task_id, meta):
    """Write ``meta`` as the task's stored state and publish it, as Celery would."""
    backend = session.app.backend
    key = backend.get_key_for_task(task_id)
    raw = json.dumps({"task_id": task_id, **meta})
    backend.client.set(key, raw)
    backend.client.publish(key, raw)


def widget_html(job):
    renderer = WidgetRenderer(job)
    renderer.draw()
    return renderer.view.value


@pytest.mark.parametrize("status", [XSS, "PROGRESS\n<script>", 5, None, "LOST"])
def test_a_forged_state_name_is_not_taken_as_a_state(session, status):
    job = celerynb.attach(str(uuid.uuid4()))
    forge(session, job.id, {"status": status, "result": None})
    assert wait_for(lambda: job.note is not None, timeout=10), job.status_line()
    assert job.state == "PENDING" and not job.done()
    assert "ignored a state that is not a Celery state" in job.note
    assert "<img" not in widget_html(job)


def test_an_undecodable_entry_fails_its_own_attached_job_only(session, tmp_path):
    broken, garbage, healthy = (celerynb.attach(str(uuid.uuid4())) for _ in range(3))
    forge(session, broken.id, {"status": ["SUCCESS"], "result": None})
    key = session.app.backend.get_key_for_task(garbage.id)
    session.app.backend.client.set(key, b"\x80\x04garbage")
    session.app.backend.client.publish(key, b"\x80\x04garbage")
    forge(session, healthy.id, {"status": "PROGRESS", "result": {"current": 1, "total": 2}})
    assert wait_for(lambda: broken.done() and garbage.done(), timeout=10)
    for job in (broken, garbage):
        with pytest.raises(celerynb.UndecodableResultError, match="cannot be decoded"):
            job.result(timeout=0)
    assert wait_for(lambda: healthy.progress.n == 1, timeout=10)  # the others go on
    shipped = celerynb.submit(gated, str(tmp_path / "gate"), "real")
    assert wait_for(lambda: shipped.state == "STARTED", timeout=30)
    forge(session, shipped.id, {"status": ["SUCCESS"], "result": None})
    assert wait_for(lambda: shipped.note is not None, timeout=10)
    assert not shipped.done()  # anyone can write garbage: not an outcome of a shipped job
    (tmp_path / "gate").touch()
    assert shipped.result(timeout=30) == "real"


def test_only_celery_states_and_an_apps_plain_custom_states_are_states():
    assert acceptable_state("PROGRESS", custom=False)
    assert acceptable_state("SUCCESS", custom=False)
    assert acceptable_state("DOWNLOADING", custom=True)
    assert not acceptable_state("DOWNLOADING", custom=False)  # shipped jobs: Celery's only
    for bad in (XSS, "lower", "A" * 33, "UNKNOWN", "LOST", "REQUEUED", "", 3, None, b"SUCCESS"):
        assert not acceptable_state(bad, custom=True), bad


def test_every_string_from_the_backend_is_escaped_in_widgets_and_tables(session):
    job = celerynb.attach(str(uuid.uuid4()), name=XSS)
    bar = {"n": 3, "total": 10, "desc": XSS, "unit": XSS, "postfix": XSS, "rate": 1, "elapsed": 1}
    progress = {
        "schema": "celerynb.progress/1", **bar, "bars": [bar, bar],
        "hostname": XSS, "pid": 1, "updated": 1.0,
    }  # fmt: skip
    forge(session, job.id, {"status": "PROGRESS", "result": progress})
    assert wait_for(lambda: job.progress.n == 3, timeout=10)
    shown = widget_html(job)
    assert "<img" not in shown and "&lt;img" in shown
    failure = {"exc_type": "ValueError", "exc_message": [XSS], "exc_module": "builtins"}
    forge(session, job.id, {"status": "FAILURE", "result": failure, "traceback": XSS})
    assert wait_for(job.done, timeout=10)  # an attached plain task: its FAILURE is its own
    shown = widget_html(job)
    assert "<img" not in shown and shown.count("&lt;img") >= 3, shown
    saved = WidgetRenderer(job).mimebundle()  # what a saved notebook keeps of the finished job
    assert "<img" not in saved["text/html"] and saved["text/html"].count("&lt;img") >= 3
    tables = JobTable([job])._repr_html_() + WorkerTable([WorkerInfo(XSS, XSS)])._repr_html_()
    assert "<img" not in tables and "&lt;img" in tables


def test_a_custom_state_of_a_users_app_is_shown(session):
    job = celerynb.attach(str(uuid.uuid4()))
    forge(session, job.id, {"status": "DOWNLOADING", "result": {"current": 2, "total": 4}})
    assert wait_for(lambda: job.state == "DOWNLOADING", timeout=10)
    assert job.progress.n == 2 and not job.done() and job.note is None


@pytest.mark.parametrize(
    "state, result",
    [
        ("FAILURE", {"exc_type": "ValueError", "exc_message": ["forged"],
                     "exc_module": "builtins"}),
        ("REVOKED", {"exc_type": "TaskRevokedError", "exc_message": ["forged"],
                     "exc_module": "celery.exceptions"}),
        ("SUCCESS", {"celerynb": 3, "frame": FORGED_FRAME}),
        ("FAILURE", {"exc_type": "ShippedTaskError", "exc_module": "celerynb._errors",
                     "exc_message": ["ValueError: forged", {"celerynb": 3,
                                                            "frame": FORGED_FRAME}]}),
    ],
    ids=["plain-failure", "revoked", "forged-success", "forged-signed-failure"],
)  # fmt: skip
def test_an_unsigned_final_state_never_finishes_a_shipped_job(session, tmp_path, state, result):
    gate = tmp_path / "gate"
    job = celerynb.submit(gated, str(gate), "real")
    assert wait_for(lambda: job.state == "STARTED", timeout=30), job.state
    forge(session, job.id, {"status": state, "result": result, "traceback": "forged"})
    assert wait_for(lambda: job.note is not None, timeout=10), job.status_line()
    assert not job.done() and f"ignored an unsigned {state}" in job.note
    gate.touch()
    assert job.result(timeout=30) == "real"  # the real, signed result still wins


def test_an_unsigned_retry_does_not_move_a_shipped_job(session, tmp_path):
    gate = tmp_path / "gate"
    job = celerynb.submit(gated, str(gate), "real")
    assert wait_for(lambda: job.state == "STARTED", timeout=30), job.state
    failure = {"exc_type": "ValueError", "exc_message": [XSS], "exc_module": "builtins"}
    forge(session, job.id, {"status": "RETRY", "result": failure, "traceback": XSS})
    assert wait_for(lambda: job.note is not None, timeout=10), job.status_line()
    assert job.state == "STARTED" and "ignored an unsigned RETRY" in job.note
    assert "<img" not in widget_html(job)
    gate.touch()
    assert job.result(timeout=30) == "real"


def test_a_cancel_stores_a_revoked_that_another_kernel_accepts(session, tmp_path):
    job = celerynb.submit(gated, str(tmp_path / "never"), "never")
    assert wait_for(lambda: job.state == "STARTED", timeout=30)
    assert job.cancel()
    backend = session.app.backend
    assert wait_for(lambda: backend.get_task_meta(job.id, cache=False)["status"] == "REVOKED")
    meta = backend.get_task_meta(job.id, cache=False)
    assert isinstance(meta["result"], ShippedTaskError)
    verify_envelope(meta["result"].envelope, secret=session.secret, purpose="error", task_id=job.id)
    elsewhere = Job(job.id, "gated", session, shipped=True)  # as a restarted kernel sees it
    elsewhere._apply_meta(meta)
    assert elsewhere.cancelled() and elsewhere.note is None


def test_a_killed_pool_process_ends_a_shipped_job_with_a_signed_failure(session, tmp_path):
    job = celerynb.submit(gated, str(tmp_path / "never"), "never")
    assert wait_for(lambda: job.state == "STARTED" and job.progress.pid, timeout=30)
    os.kill(job.progress.pid, signal.SIGKILL)
    assert wait_for(job.done, timeout=15), job.status_line()
    assert type(job.exception(timeout=0)).__name__ == "WorkerLostError", job.status_line()
    meta = session.app.backend.get_task_meta(job.id, cache=False)
    assert isinstance(meta["result"], ShippedTaskError)  # signed by the worker's main process
    verify_envelope(meta["result"].envelope, secret=session.secret, purpose="error", task_id=job.id)


def test_a_queued_shipped_job_revoked_by_another_client_ends_cancelled(session, tmp_path):
    """Celery's revoke command stores an unsigned REVOKED for a task still queued; the
    worker signs the REVOKED it writes when the task reaches it: the job ends cancelled."""
    gates = [str(tmp_path / f"gate{i}") for i in range(2)]
    busy = [celerynb.submit(gated, gate, "busy") for gate in gates]  # both processes taken
    assert wait_for(lambda: all(job.state == "STARTED" for job in busy), timeout=30)
    queued = celerynb.submit(gated, gates[0], "never")
    session.app.control.revoke(queued.id)  # as `celery control revoke ID` does
    for gate in gates:
        open(gate, "w").close()
    assert wait_for(queued.done, timeout=30), queued.status_line()
    assert queued.cancelled() and queued.note is None
    assert [job.result(timeout=30) for job in busy] == ["busy", "busy"]


def test_a_shipped_job_attached_again_by_id_still_needs_a_signed_outcome(session, tmp_path):
    """As after a kernel restart: the job store says the task was shipped, so an
    unsigned SUCCESS does not finish the job attached again by its id."""
    from celerynb._registry import registry

    gate = tmp_path / "gate"
    first = celerynb.submit(gated, str(gate), "real")
    assert wait_for(lambda: first.state == "STARTED", timeout=30)
    with registry._lock:
        registry._jobs.pop(first.id)  # this kernel forgets it, as a new kernel would
    again = celerynb.attach(first.id)
    assert again is not first and again._shipped is True
    forge(session, first.id, {"status": "SUCCESS", "result": {"attacker": "chosen value"}})
    assert wait_for(lambda: again.note is not None, timeout=10), again.status_line()
    assert not again.done()
    gate.touch()
    assert again.result(timeout=30) == "real"


def test_a_forged_progress_entry_naming_a_dead_worker_does_not_make_a_shipped_job_lost(
    session, tmp_path
):
    """Liveness of a shipped job is judged by the run its worker signed, not by whatever
    worker a progress entry names (that one answers no ping: it would be judged LOST)."""
    from celerynb._liveness import LOST_AFTER, NOT_HEARD_GRACE

    gate = tmp_path / "gate"
    job = celerynb.submit(gated, str(gate), "real")
    assert wait_for(lambda: job.worker_run is not None, timeout=30)
    ghost = {"current": 1, "total": 2, "hostname": "celery@ghost-host", "pid": 99999}
    forge(session, job.id, {"status": "PROGRESS", "result": ghost})
    assert wait_for(lambda: job.progress.hostname == "celery@ghost-host", timeout=10)
    deadline = time.monotonic() + LOST_AFTER + NOT_HEARD_GRACE + 4  # past any verdict
    while time.monotonic() < deadline:
        assert not job.done(), job.status_line()
        time.sleep(0.2)
    gate.touch()
    assert job.result(timeout=30) == "real"


def test_an_ignored_entry_is_named_by_its_beginning_not_cut_in_its_middle():
    from celerynb._job_states import SHORT_REPR, short_repr

    refusal = (
        "refused a call payload for task dcfaf1c2-0a4b-4c55-9a43-5b1e2d9e7f10: "
        "it was signed with another CELERYNB_SECRET (the worker's differs from the kernel's)"
    )
    shown = short_repr(refusal)
    assert "signed with another CELERYNB_SECRET" in shown
    assert len(short_repr(refusal * 5)) == SHORT_REPR and short_repr(refusal * 5).endswith("…")
