"""Live output in a real kernel: a print in a running job reaches the frontend (iopub) as an
update of the job's display within 2.5 s, long before the job ends, and once."""

import time

import pytest
from conftest import celery_user_env
from kernel_helpers import Kernel

pytestmark = pytest.mark.needs_server

LATENCY = 2.5  # seconds from a print on the worker to the frontend


@pytest.fixture(scope="module")
def kernel(cluster, tmp_path_factory):
    env = celery_user_env(cluster)
    started = Kernel(cwd=str(tmp_path_factory.mktemp("live-output")), env=env)
    try:
        started.ok("%load_ext celerynb")
        started.ok("%celery_connect")
        yield started
    finally:
        started.close()


def widget_update_with(kernel, text, timeout):
    """The first comm message (a job widget's redraw) whose value shows ``text``, and
    when it was received."""
    message = kernel.wait_for_message(
        lambda m: (
            m["msg_type"] == "comm_msg"
            and text in str(m["content"].get("data", {}).get("state", {}).get("value", ""))
        ),
        timeout,
    )
    return message, time.time()


PRINTING_CELL = """%%celery_submit
import os, sys, time
print("started at", time.time(), flush=True)
time.sleep(1)
print("and <b>then</b> at", time.time(), file=sys.stderr)
while not os.path.exists({release!r}):
    time.sleep(0.05)
print("last words")
"""


def printed_at(message, marker):
    """The worker's time printed after ``marker`` in a widget's value."""
    value = message["content"]["data"]["state"]["value"]
    return float(value.split(marker, 1)[1].split("<", 1)[0].split()[0])


def test_a_cells_print_reaches_iopub_within_seconds_while_the_job_runs(kernel, tmp_path):
    release = tmp_path / "release"
    cell = kernel.ok(PRINTING_CELL.format(release=str(release)))
    assert len(cell.widgets) == 1
    try:
        message, received = widget_update_with(kernel, "started at", timeout=60)
        assert received - printed_at(message, "started at ") < LATENCY
        message, received = widget_update_with(kernel, "then", timeout=30)
        assert received - printed_at(message, "&lt;b&gt;then&lt;/b&gt; at ") < LATENCY
        value = message["content"]["data"]["state"]["value"]
        assert "class='celerynb-stderr'" in value and "<b>then</b>" not in value  # escaped
        assert "SUCCESS" not in value  # long before the job ends: it waits for the release
    finally:
        release.touch()
    final = kernel.final_text("SUCCESS", timeout=60)
    assert final.count("started at") == 1 and final.count("last words") == 1, final
    assert "[stderr] and <b>then</b> at" in final  # text/plain: stderr told apart
    updates = [
        m["content"]["data"]
        for m in kernel.messages
        if m["msg_type"] == "update_display_data"
        and "SUCCESS" in m["content"]["data"].get("text/plain", "")
    ]
    assert "last words" in updates[0]["text/html"]  # the saved notebook keeps the tail


SHIPPED = """
import celerynb
def counts_down(n, release):
    import os, time
    for i in range(n, 0, -1):
        print("countdown", i, time.time(), flush=True)
        time.sleep(0.5)
    while not os.path.exists(release):
        time.sleep(0.05)
    return "liftoff"
job = celerynb.submit(counts_down, 3, {release!r})
job
"""


def test_a_shipped_functions_prints_reach_iopub_in_order(kernel, tmp_path):
    release = tmp_path / "release"
    kernel.ok(SHIPPED.format(release=str(release)))
    try:
        message, received = widget_update_with(kernel, "countdown 1 ", timeout=60)
        assert received - printed_at(message, "countdown 1 ") < LATENCY
        value = message["content"]["data"]["state"]["value"]
        assert value.index("countdown 3") < value.index("countdown 2") < value.index("countdown 1")
    finally:
        release.touch()
    cell = kernel.ok("print(job.result(timeout=60), len(job.output.lines))")
    assert cell.stdout == "liftoff 3\n"
