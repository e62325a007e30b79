"""The dashboard in real kernels, driven as a frontend drives it: kernel A runs a
LocalCluster and its jobs; kernel B, another notebook on the same cluster, opens
``%celery_dashboard`` and sees A's worker, a queue's depth and A's jobs, live, and
cancels A's job by choosing it in the dropdown and clicking Cancel. The job tables of
``%celery_jobs``/``%celery_workers`` are one HTML output each, escaped."""

from __future__ import annotations

import time

import pytest
from kernel_helpers import WIDGET_MIME, Kernel

pytestmark = pytest.mark.needs_server

XSS = "<img src=x onerror=alert(1)>"
QUEUE = "nobody-consumes-this"

A_SETUP = """
%load_ext celerynb
import celerynb, json, os
cluster = celerynb.LocalCluster(processes=2)
celerynb.connect(cluster)

def slow(steps):
    import time
    from celerynb import tqdm
    for _ in tqdm(range(steps), desc="slow"):
        time.sleep(0.2)
    return steps

def shown():
    return 1
shown.__name__ = shown.__qualname__ = {xss!r}

celerynb.submit(shown).result(timeout=60)
job = celerynb.submit(slow, 600)
stuck = celerynb.apply_async(slow, (1,), queue={queue!r})
urls = dict(broker=cluster.broker_url, backend=cluster.backend_url, secret=cluster.secret)
with os.fdopen(os.open({path!r}, os.O_WRONLY | os.O_CREAT, 0o600), "w") as file:
    json.dump(urls, file)
print(cluster.worker_name, job.id)
"""

B_SETUP = """
%load_ext celerynb
import celerynb, json
connection = json.load(open({path!r}))
celerynb.connect(connection["broker"], backend=connection["backend"], secret=connection["secret"])
"""


def comm_ids(kernel: Kernel, model: str, since: int) -> list[str]:
    """The comms opened for widgets of ``model`` (e.g. HTMLModel) after message ``since``."""
    return [
        m["content"]["comm_id"]
        for m in kernel.messages[since:]
        if m["msg_type"] == "comm_open"
        and m["content"]["data"]["state"].get("_model_name") == model
    ]


def state_update(message: dict, comm_id: str) -> dict:
    """The state a comm_msg sets on ``comm_id`` (empty for any other message)."""
    if message["msg_type"] != "comm_msg" or message["content"]["comm_id"] != comm_id:
        return {}
    data = message["content"]["data"]
    return data.get("state", {}) if data.get("method") == "update" else {}


def send_to_widget(kernel: Kernel, comm_id: str, data: dict) -> None:
    """What a frontend sends: a comm message to the widget's model in the kernel."""
    message = kernel.client.session.msg("comm_msg", {"comm_id": comm_id, "data": data})
    kernel.client.shell_channel.send(message)


def wait_until(kernel: Kernel, code: str, expected: str, timeout: float = 60) -> str:
    """Run ``code`` until its output holds ``expected``, or fail after ``timeout`` s."""
    deadline = time.monotonic() + timeout
    out = ""
    while time.monotonic() < deadline:
        out = kernel.ok(code).stdout
        if expected in out:
            return out
        time.sleep(0.3)
    raise AssertionError(f"{code!r} never printed {expected!r}; last: {out!r}")


def test_a_dashboard_in_one_kernel_sees_and_cancels_the_jobs_of_another(tmp_path):
    path = str(tmp_path / "connection.json")
    (tmp_path / "notebook-a").mkdir()
    (tmp_path / "notebook-b").mkdir()
    a = Kernel(cwd=str(tmp_path / "notebook-a"))
    b = None
    try:
        worker, job_id = a.ok(A_SETUP.format(xss=XSS, queue=QUEUE, path=path), 180).stdout.split()

        # %celery_jobs and %celery_workers: one HTML output each, no widget, escaped.
        for magic in ("%celery_jobs", "%celery_workers"):
            before = len(a.messages)
            cell = a.ok(magic)
            assert len(cell.outputs) == 1 and "text/html" in cell.outputs[0], cell.outputs
            assert not [m for m in a.messages[before:] if m["msg_type"] == "comm_open"]
        jobs_html = a.ok("%celery_jobs").outputs[0]["text/html"]
        assert "&lt;img src=x onerror=alert(1)&gt;" in jobs_html and "<img" not in jobs_html
        assert worker in a.ok("%celery_workers").outputs[0]["text/html"]

        b = Kernel(cwd=str(tmp_path / "notebook-b"))
        b.ok(B_SETUP.format(path=path), 120)
        before = len(b.messages)
        cell = b.ok("%celery_dashboard")
        assert [WIDGET_MIME in data for data in cell.outputs] == [True], cell.outputs
        opened = [m for m in b.messages[before:] if m["msg_type"] == "comm_open"]
        (view,) = comm_ids(b, "HTMLModel", before)
        (choice,) = comm_ids(b, "DropdownModel", before)
        (button,) = comm_ids(b, "ButtonModel", before)
        # As the README says: 5 widgets and 2 looks of its own, plus the 5 looks it shares
        # with the job widgets (made here: this kernel showed no job yet).
        models = sorted(m["content"]["data"]["state"]["_model_name"] for m in opened)
        assert len(models) == 12, models

        def shown(predicate, timeout=60) -> str:
            message = b.wait_for_message(
                lambda m: predicate(state_update(m, view).get("value") or ""), timeout
            )
            return state_update(message, view)["value"]

        # A's worker with its pool and processes, and the queue nobody consumes, 1 waiting.
        html = shown(lambda v: worker in v and "prefork" in v)
        html = shown(lambda v: f"<td>{QUEUE}</td><td>1</td>" in v)
        assert "celerynb-queue-stranded" in html
        # A's jobs, from the job store, named by A's notebook; the XSS name escaped.
        html = shown(lambda v: job_id[:8] in v and "notebook-a" in v and "PROGRESS" in v)
        assert "&lt;img src=x onerror=alert(1)&gt;" in html
        # It updates: A's job moves on (its bar) while B does nothing.
        shown(lambda v: v != html and job_id[:8] in v)
        assert all("<img" not in state_update(m, view).get("value", "") for m in b.messages)

        # Cancel as a user does: choose A's job in the dropdown, click the button.
        labels: list[str] = []

        def offered(message: dict) -> bool:
            labels[:] = state_update(message, choice).get("_options_labels") or labels
            return any(job_id[:8] in label for label in labels)

        if not any(offered(m) for m in b.messages):
            b.wait_for_message(offered, 60)
        index = next(i for i, label in enumerate(labels) if job_id[:8] in label)
        # One shell channel, handled in order: the choice is made before the click.
        send_to_widget(
            b, choice, {"method": "update", "state": {"index": index}, "buffer_paths": []}
        )
        send_to_widget(b, button, {"method": "custom", "content": {"event": "click"}})
        assert "REVOKED" in wait_until(a, "print(job.state)", "REVOKED", 60)
        shown(lambda v: f"cancel sent for job {job_id}" in v, 30)

        # Closed: its threads end.
        assert "dashboard closed" in b.ok("%celery_dashboard --close").stdout
        names = b.ok(
            "import threading; print(sorted(t.name for t in threading.enumerate()))"
        ).stdout
        assert "celerynb-dashboard" not in names, names
    finally:
        if b is not None:
            b.close()
        a.run("cluster.close()", 60)
        a.close()
