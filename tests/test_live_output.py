"""Live output with real workers: what a job prints and logs reaches its Job while it runs."""

import json
import time
import uuid

import pytest
import redis
from conftest import wait_for

import celerynb
from celerynb._output import DROPPED
from celerynb._output_log import KEEP_LINES

pytestmark = pytest.mark.needs_server


def prints_slowly(count, gap, release_path):
    """Prints ``count`` lines ``gap`` s apart (each with the time it was printed), then
    waits for ``release_path`` to exist."""
    import os
    import time

    for i in range(count):
        print(f"line {i} at {time.time()}")
        time.sleep(gap)
    deadline = time.monotonic() + 60
    while not os.path.exists(release_path) and time.monotonic() < deadline:
        time.sleep(0.05)
    return "done"


def test_a_print_reaches_the_job_within_seconds_long_before_the_job_ends(session, tmp_path):
    release = tmp_path / "release"
    job = celerynb.submit(prints_slowly, 3, 0.3, str(release))
    arrived = {}
    job.add_listener(lambda j: [arrived.setdefault(t, time.time()) for _, t in j.output.lines])
    try:
        assert wait_for(lambda: len(job.output.lines) == 3, timeout=60), job.output
        assert not job.done(), "the job ended before its output was seen"
        texts = [text for _, text in job.output.lines]
        assert [text.split(" at ")[0] for text in texts] == ["line 0", "line 1", "line 2"]
        for text in texts:  # from the worker's print to this process's Job
            assert arrived[text] - float(text.split(" at ")[1]) < 2.5, (text, arrived[text])
        assert job.output.dropped == 0
    finally:
        release.touch()
    assert job.result(timeout=30) == "done"
    assert [text for _, text in job.output.lines] == texts  # nothing twice once it ended


def mixed_streams():
    import logging
    import sys

    print("out 1")
    print()  # Celery's redirect to its log drops an empty line: the output keeps it
    print("err 1", file=sys.stderr)
    logging.getLogger("fit").warning("slow step %d", 3)
    logging.getLogger("fit").info("a LocalCluster logs INFO")
    sys.stdout.write("partial ")
    sys.stdout.write("line\n")
    print("working", end="\r")  # a redrawn line: only its last version counts
    print("worked")
    print("no newline at the end", end="")
    return 1


def test_stdout_stderr_and_logging_are_told_apart_in_order(session):
    job = celerynb.submit(mixed_streams)
    assert job.result(timeout=60) == 1
    assert wait_for(lambda: len(job.output.lines) >= 8, timeout=10), job.output
    assert job.output.lines == (
        ("stdout", "out 1"),
        ("stdout", ""),
        ("stderr", "err 1"),
        ("log", "WARNING fit: slow step 3"),
        ("log", "INFO fit: a LocalCluster logs INFO"),
        ("stdout", "partial line"),
        ("stdout", "worked"),
        ("stdout", "no newline at the end"),  # the last lines come before the SUCCESS
    )


def test_the_workers_log_still_receives_what_a_job_prints(session, cluster):
    marker = f"for the worker log {uuid.uuid4()}"
    job = celerynb.submit(print, marker)
    job.result(timeout=60)
    assert wait_for(lambda: marker in cluster.log_path.read_text(errors="replace"), timeout=10)
    assert job.output.lines == (("stdout", marker),)


def loops_with_a_bar(n):
    import time

    from celerynb import tqdm

    for i in tqdm(range(n), desc="looping", mininterval=0):
        time.sleep(0.01)
        if i == n // 2:
            print("halfway")
    return n


def test_a_celerynb_tqdm_bar_is_the_jobs_bar_never_lines_of_output(session):
    job = celerynb.submit(loops_with_a_bar, 40)
    assert job.result(timeout=60) == 40
    assert job.progress.desc == "looping" and job.progress.n == 40
    assert wait_for(lambda: job.output.lines == (("stdout", "halfway"),), timeout=10), job.output


def test_a_job_watched_only_after_it_ended_still_shows_its_latest_lines(session):
    """As a restarted kernel, or a polling one, sees it: only its stored final state."""
    from celerynb._job import Job

    job = celerynb.submit(floods, 3)
    assert job.result(timeout=60) == 3
    watched_after = Job(job.id, "floods", session, shipped=True)
    watched_after._apply_meta(session.app.backend.get_task_meta(job.id))
    assert watched_after.result(timeout=10) == 3
    assert [text for _, text in watched_after.output.lines] == ["0", "1", "2", "the end"]


def floods(count):
    for i in range(count):
        print(i)
    print("the end")
    return count


def test_a_flood_of_prints_stays_bounded(session):
    job = celerynb.submit(floods, 200_000)
    assert job.result(timeout=120) == 200_000
    assert wait_for(lambda: job.output.lines[-1:] == (("stdout", "the end"),), timeout=10)
    output = job.output
    assert len(output.lines) <= KEEP_LINES
    shown = sum(1 for stream, _ in output.lines if stream != DROPPED)
    dropped = output.dropped + sum(int(t) for s, t in output.lines if s == DROPPED)
    assert shown + dropped == 200_001, (shown, dropped)  # every line shown or counted
    numbers = [int(text) for stream, text in output.lines if stream == "stdout" and text.isdigit()]
    assert numbers == sorted(numbers)  # in order
    sent = sum(len(text) for _, text in output.lines)
    assert sent < 2_000_000


def test_a_cell_streams_its_output_live_and_keeps_its_result_text(session, tmp_path):
    release = tmp_path / "release"
    job = celerynb.submit_cell(
        "import os, time\n"
        "print('cell says hi')\n"
        f"while not os.path.exists({str(release)!r}):\n"
        "    time.sleep(0.05)\n"
        "x = 1\n",
        {},
        outputs="x",
    )
    try:
        assert wait_for(lambda: ("stdout", "cell says hi") in job.output.lines, timeout=30)
        assert not job.done()
    finally:
        release.touch()
    result = job.result(timeout=30)
    assert result.stdout == "cell says hi\n"
    assert job.output.lines == (("stdout", "cell says hi"),)


def test_a_maps_output_shows_under_its_group(session):
    group = celerynb.map(print, range(6), chunksize=3)
    group.results(timeout=60)
    assert wait_for(lambda: len(group.output.lines) == 6, timeout=10), group.output
    assert sorted(text for _, text in group.output.lines) == [str(i) for i in range(6)]


def test_lines_arrive_while_another_thread_of_the_task_prints(session):
    def from_a_thread():
        import threading

        thread = threading.Thread(target=print, args=("from a thread",))
        thread.start()
        thread.join()
        return "ok"

    job = celerynb.submit(from_a_thread)
    assert job.result(timeout=60) == "ok"
    assert wait_for(lambda: ("stdout", "from a thread") in job.output.lines, timeout=10)


def test_a_registered_task_reporting_progress_sends_its_prints_with_it(session, project_worker):
    sent = session.app.send_task("myproject.tasks.chatty", args=[20, 0.05], queue="myproject")
    job = celerynb.attach(sent.id)
    assert wait_for(lambda: ("stdout", "step 0") in job.output.lines, timeout=30), job.output
    assert job.result(timeout=30) == 20
    assert wait_for(lambda: len(job.output.lines) == 20, timeout=10), job.output
    assert [text for _, text in job.output.lines] == [f"step {i}" for i in range(20)]


def test_a_registered_task_that_opts_in_streams_its_output_live(session, project_worker, tmp_path):
    release = tmp_path / "release"
    sent = session.app.send_task("myproject.tasks.talks", args=[str(release)], queue="myproject")
    job = celerynb.attach(sent.id)
    try:
        expected = [("stdout", "hello from my app"), ("log", "WARNING myproject: careful")]
        assert wait_for(lambda: list(job.output.lines) == expected, timeout=30), job.output
        assert not job.done()
    finally:
        release.touch()
    assert job.result(timeout=30) == "talked"
    assert wait_for(lambda: job.output.lines[-1:] == (("stdout", "bye"),), timeout=10)


def test_a_registered_task_that_neither_reports_nor_opts_in_writes_no_progress(
    session, cluster, project_worker
):
    client = redis.Redis.from_url(cluster.backend_url)
    pubsub = client.pubsub(ignore_subscribe_messages=True)
    task_id = str(uuid.uuid4())
    pubsub.subscribe(session.app.backend.get_key_for_task(task_id))
    try:
        session.app.send_task("myproject.tasks.silent_printer", task_id=task_id, queue="myproject")
        states = []
        deadline = time.monotonic() + 30
        while "SUCCESS" not in states and time.monotonic() < deadline:
            message = pubsub.get_message(timeout=1)
            if message is not None:
                states.append(json.loads(message["data"])["status"])
    finally:
        pubsub.close()
        client.close()
    assert "SUCCESS" in states and "PROGRESS" not in states, states


def prints_as(name, count, gate_path):
    """Prints ``count`` lines named ``name`` once both tasks run (``gate_path`` counts them)."""
    import logging
    import os
    import time
    from pathlib import Path

    with open(gate_path, "a") as gate:
        gate.write(name)
    deadline = time.monotonic() + 60
    while len(Path(gate_path).read_text()) < 2 and time.monotonic() < deadline:
        time.sleep(0.01)
    for i in range(count):
        print(f"{name} {i}")
        logging.getLogger("pool").warning("%s logged %d", name, i)
        time.sleep(0.001)
    return os.getpid()


def test_tasks_running_side_by_side_in_threads_keep_their_own_lines(monkeypatch, tmp_path):
    from celerynb import _session as session_module

    monkeypatch.setattr(session_module, "_current", session_module._current)
    with celerynb.LocalCluster(processes=2, pool="threads") as local:
        session = celerynb.connect(local)
        try:
            gate = str(tmp_path / "gate")
            a, b = (session.submit(prints_as, (name, 50, gate)) for name in ("a", "b"))
            assert a.result(timeout=60) == b.result(timeout=60)  # one process, two threads
            for job, name in ((a, "a"), (b, "b")):
                assert wait_for(lambda job=job: len(job.output.lines) == 100, timeout=10)
                expected = []
                for i in range(50):
                    expected += [
                        ("stdout", f"{name} {i}"),
                        ("log", f"WARNING pool: {name} logged {i}"),
                    ]
                assert list(job.output.lines) == expected
            # Cells too: each keeps its own text (no process-wide redirect of sys.stdout).
            cell_gate = str(tmp_path / "cell-gate")
            cells = [
                celerynb.submit_cell(f"pid = prints_as({name!r}, 20, gate)", ns, outputs="pid")
                for name, ns in (
                    ("c", {"prints_as": prints_as, "gate": cell_gate}),
                    ("d", {"prints_as": prints_as, "gate": cell_gate}),
                )
            ]
            results = [cell.result(timeout=60) for cell in cells]
            for result, name in zip(results, "cd", strict=True):
                assert result.stdout == "".join(f"{name} {i}\n" for i in range(20))
            for cell, name in zip(cells, "cd", strict=True):
                assert [t for s, t in cell.output.lines if s == "stdout"] == [
                    f"{name} {i}" for i in range(20)
                ]
        finally:
            session.close()
