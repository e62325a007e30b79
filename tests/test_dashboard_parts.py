"""The dashboard's pure parts with fixed inputs: what events and inspect answers make
of the cluster, the worker report read from a /proc of the test's own, the jobs of
other kernels, the HTML (everything escaped, sizes bounded) and its timing (a clock
the tests control)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from celery import states
from conftest import FakeClock

from celerynb._cluster_view import ENDED, RUNNING, ClusterView, TaskSpan, WorkerRow, WorkerState
from celerynb._dashboard import MIN_REDRAW_SECONDS, POLL_INTERVALS
from celerynb._dashboard_html import (
    LABEL_WIDTH,
    MAX_DRAWN,
    MAX_JOB_ROWS,
    MAX_LANES,
    DashboardData,
    QueueRow,
    jobs_html,
    place,
    queues_html,
    render,
)
from celerynb._dashboard_jobs import (
    MAX_AGE,
    MAX_ROWS,
    NOT_STORED,
    JobRow,
    JobsReader,
    group_state,
    row_of_kept,
)
from celerynb._pacing import PollSchedule, RedrawPacer
from celerynb._store import JobRecord, JobStore, KeptJob
from celerynb._worker_report import REPORT_EVENT, ProcessReport, children, parse_stat
from celerynb._workers import RunningTask, WorkerInfo

HOST = "w1@box"
XSS = "<img src=x onerror=alert(1)>"


def heartbeat(hostname=HOST, **fields):
    return {"type": "worker-heartbeat", "hostname": hostname, "active": 1, **fields}


# -- the cluster from events ------------------------------------------------------------
def test_heartbeats_and_reports_fill_a_worker_and_a_silent_one_is_marked_gone():
    view = ClusterView()  # as the README says: gone after 6 s, forgotten 5 minutes later
    view.listening_since = 0.0
    assert view.on_event(heartbeat(loadavg=[0.5, 0.25, 0.125]), now=10.0)
    report = {
        "type": REPORT_EVENT,
        "hostname": HOST,
        "celerynb_processes": [[100, 2.5, 1000], [101, None, 2000], ["bad", 1, 1], [102, "x", -5]],
        "celerynb_memory_total": 10_000,
    }
    assert view.on_event(report, now=11.0)
    (row,) = view.worker_rows(now=12.0)
    assert not row.gone
    assert row.worker.loadavg == (0.5, 0.25, 0.125)
    assert [(p.pid, p.cpu, p.rss) for p in row.worker.processes] == [
        (100, 2.5, 1000),
        (101, None, 2000),
        (102, None, None),  # nonsense numbers dropped, the process kept
    ]
    assert row.worker.memory_total == 10_000
    # 6 s without a word from it: gone; still listed until forgotten.
    assert not view.worker_rows(now=16.9)[0].gone
    (row,) = view.worker_rows(now=17.5)
    assert row.gone
    assert view.worker_rows(now=17.5 + 299) != []
    assert view.worker_rows(now=17.5 + 301) == []


def test_a_worker_is_not_judged_gone_while_the_listener_has_just_connected():
    view = ClusterView(gone_after=6.0)
    view.on_event(heartbeat(), now=10.0)
    view.listening_since = None  # the connection dropped: silence means nothing
    assert not view.worker_rows(now=60.0)[0].gone
    view.listening_since = 58.0  # back for 2 s only
    assert not view.worker_rows(now=60.0)[0].gone
    assert view.worker_rows(now=64.5)[0].gone


def test_a_worker_that_says_goodbye_is_gone_at_once():
    view = ClusterView()
    view.on_event(heartbeat(), now=1.0)
    view.on_event({"type": "worker-offline", "hostname": HOST}, now=2.0)
    assert view.worker_rows(now=2.0)[0].gone


def test_task_events_make_spans_with_names_ends_and_bounds():
    view = ClusterView(max_spans=3)
    view.on_event({"type": "task-received", "hostname": HOST, "uuid": "a", "name": "t.a"}, 1.0)
    view.on_event({"type": "task-started", "hostname": HOST, "uuid": "a", "pid": 7}, 2.0)
    (span,) = view.spans(now=3.0)
    assert (span.name, span.state, span.end, span.pid) == ("t.a", RUNNING, None, None)
    assert view.running_count() == 1
    view.on_event({"type": "task-failed", "hostname": HOST, "uuid": "a"}, 4.0)
    # Its start was missed (the listener came later): drawn from its runtime.
    view.on_event({"type": "task-succeeded", "hostname": HOST, "uuid": "b", "runtime": 1.5}, 5.0)
    # Revoked before it ran: nothing to draw.
    assert not view.on_event({"type": "task-revoked", "hostname": HOST, "uuid": "c"}, 5.0)
    spans = {s.task_id: s for s in view.spans(now=6.0)}
    assert (spans["a"].state, spans["a"].end) == (states.FAILURE, 4.0)
    assert (spans["b"].start, spans["b"].end, spans["b"].state) == (3.5, 5.0, states.SUCCESS)
    for task_id in "defg":
        view.on_event({"type": "task-started", "hostname": HOST, "uuid": task_id}, 7.0)
    assert [s.task_id for s in view.spans(now=8.0)] == ["e", "f", "g"]  # the latest 3
    assert view.task_events
    # A span ended longer ago than the window is let go.
    view.on_event({"type": "task-succeeded", "hostname": HOST, "uuid": "g"}, 9.0)
    assert "g" not in [s.task_id for s in view.spans(now=9.0 + view.window + 1)]


def test_events_from_workers_are_checked_and_cut():
    view = ClusterView()
    assert not view.on_event({"type": "worker-heartbeat"}, 1.0)  # no hostname
    assert not view.on_event({"type": 5, "hostname": HOST}, 1.0)
    assert not view.on_event({"type": "task-started", "hostname": HOST, "uuid": 5}, 1.0)
    view.on_event(heartbeat(hostname="h" * 10_000, active="many", loadavg="high"), 1.0)
    (worker,) = view.workers.values()
    assert len(worker.hostname) == 200 and worker.active is None and worker.loadavg == ()
    for i in range(500):
        view.on_event(heartbeat(hostname=f"w{i}"), 1.0)
    assert len(view.workers) == 100  # a flood of made-up workers is bounded


def info(name=HOST, running=(), **fields):
    return WorkerInfo(
        name=name,
        pool="prefork",
        concurrency=2,
        queues=("celery",),
        active=tuple((t.id, t.name) for t in running),
        pids=(11, 12),
        running=tuple(running),
        **fields,
    )


def test_without_task_events_inspect_rounds_draw_the_stream_coarsely():
    view = ClusterView()
    view.on_inspect([info(running=[RunningTask("a", "t.a", 11, 95.0)])], now=100.0)
    (row,) = view.worker_rows(now=100.0)
    assert (row.worker.pool, row.worker.concurrency, row.worker.pids) == ("prefork", 2, (11, 12))
    assert row.worker.queues == ("celery",) and row.worker.active == 1
    (span,) = view.spans(now=100.0)
    assert (span.start, span.pid, span.polled, span.state) == (95.0, 11, True, RUNNING)
    view.on_inspect([info(running=[RunningTask("b", "t.b", 12, 1e12)])], now=103.0)
    spans = {s.task_id: s for s in view.spans(now=103.0)}
    assert (spans["a"].end, spans["a"].state) == (103.0, ENDED)
    assert spans["b"].start == 103.0  # a start time from the future is not believed
    # An answer without the worker: a worker never heard by heartbeat is gone.
    view.on_inspect([], now=106.0)
    assert view.worker_rows(now=106.0)[0].gone
    assert view.spans(now=106.0)[-1].end == 106.0


def test_with_task_events_inspect_only_tells_which_process_runs_a_task():
    view = ClusterView()
    view.on_event({"type": "task-started", "hostname": HOST, "uuid": "a"}, 1.0)
    view.on_inspect([info(running=[RunningTask("a", "t.a", 12, 0.5)])], now=2.0)
    (span,) = view.spans(now=2.0)
    assert (span.pid, span.start, span.name, span.polled) == (12, 1.0, "t.a", False)


# -- the worker report -------------------------------------------------------------------
STAT = (
    "4242 (celery: worker (x)) S 1 4242 4242 0 -1 4194560 100 0 0 0 250 50 0 0 20 0 3 0 1 1 900 0"
)


def test_a_proc_stat_line_gives_cpu_seconds_and_resident_bytes():
    cpu, rss = parse_stat(STAT, ticks=100, page=4096)
    assert cpu == pytest.approx(3.0)  # (250 + 50) ticks
    assert rss == 900 * 4096


def fake_proc(root: Path, pid: int, ticks: int, kids: list[int]) -> None:
    (root / str(pid) / "task" / str(pid)).mkdir(parents=True, exist_ok=True)
    name, _, rest = STAT.rpartition(")")
    fields = rest.split()
    fields[11], fields[12] = str(ticks), "0"  # utime, stime
    (root / str(pid) / "stat").write_text(f"{pid} (celery) " + " ".join(fields))
    (root / str(pid) / "task" / str(pid) / "children").write_text(" ".join(map(str, kids)))


def test_the_report_gives_each_process_its_cpu_share_between_two_reports(tmp_path, monkeypatch):
    monkeypatch.setattr("celerynb._worker_report._TICKS", 100)
    clock = FakeClock(0.0)
    (tmp_path / "meminfo").write_text("MemTotal:       2048 kB\nMemFree: 1 kB\n")
    fake_proc(tmp_path, 1, ticks=0, kids=[2, 3])
    fake_proc(tmp_path, 2, ticks=0, kids=[])
    assert children(1, tmp_path) == [2, 3]
    report = ProcessReport(1, clock=clock, proc=tmp_path)
    first = report.fields()
    assert first["celerynb_memory_total"] == 2048 * 1024
    assert [row[:2] for row in first["celerynb_processes"]] == [[1, None], [2, None]]  # 3: gone
    clock.sleep(2.0)
    fake_proc(tmp_path, 1, ticks=int(0.2 * 100 * 2), kids=[2])  # 0.4 s of CPU in 2 s
    fake_proc(tmp_path, 2, ticks=int(1.0 * 100 * 2), kids=[])  # a busy pool process
    rows = report.fields()["celerynb_processes"]
    assert [row[:2] for row in rows] == [[1, 20.0], [2, 100.0]]


# -- jobs of other kernels ---------------------------------------------------------------
def kept(task_ids=(), name="simulate", notebook="/home/u/analysis.ipynb"):
    return KeptJob(JobRecord("j1", name, True, tuple(task_ids), None, 50.0), notebook, "run-b")


def test_another_kernels_job_shows_its_stored_state_and_progress():
    meta = {"status": "PROGRESS", "result": {"current": 5, "total": 20}}
    row = row_of_kept(kept(), {"j1": meta}, readable=True)
    assert (row.state, row.percent, row.where, row.done) == (
        "PROGRESS",
        25.0,
        "analysis.ipynb",
        False,
    )
    assert row_of_kept(kept(), {}, readable=True).state == states.PENDING
    assert row_of_kept(kept(), {"j1": {"status": "SUCCESS"}}, readable=True).percent == 100.0
    forged = row_of_kept(kept(), {"j1": {"status": XSS}}, readable=True)
    assert forged.state == NOT_STORED  # not a state: shown as unknown
    assert row_of_kept(kept(), {}, readable=False).state == NOT_STORED  # rpc:// stores none


def test_a_group_of_another_kernel_counts_its_tasks():
    metas = {"a": {"status": "SUCCESS"}, "b": {"status": "STARTED"}}
    row = row_of_kept(kept(task_ids=("a", "b", "c")), metas, readable=True)
    assert (row.tasks, row.finished_tasks, row.state) == (3, 1, "PROGRESS")
    assert row.percent == pytest.approx(33.33)
    assert group_state(["SUCCESS", "FAILURE", "REVOKED"]) == "FAILURE"
    assert group_state(["SUCCESS", "REVOKED"]) == "REVOKED"
    assert group_state(["PENDING", "PENDING"]) == "PENDING"
    assert group_state(["SUCCESS", "PENDING"]) == "PROGRESS"


class NoStatesSession:
    """A session whose backend stores no states (rpc://): nothing is read from it."""

    backend_key = "backend-a"
    stores_states = False
    app = None


def test_the_jobs_of_other_kernels_are_the_latest_of_the_last_day_on_this_backend(
    tmp_path, monkeypatch
):
    import celerynb._dashboard_jobs as jobs_module
    import celerynb._store as store_module

    kept_jobs = JobStore(tmp_path / "jobs.sqlite3")
    monkeypatch.setattr(jobs_module, "store", kept_jobs)
    monkeypatch.setattr(store_module, "RUN_ID", "another-kernel")
    now = 1_000_000.0
    for i in range(MAX_ROWS + 10):
        kept_jobs.record(JobRecord(f"new-{i}", "simulate", True, submitted=now - i), "backend-a")
    kept_jobs.record(JobRecord("old", "simulate", True, submitted=now - MAX_AGE - 1), "backend-a")
    kept_jobs.record(JobRecord("elsewhere", "simulate", True, submitted=now), "backend-b")
    rows = JobsReader(NoStatesSession()).read(now=now)
    assert [row.id for row in rows] == [f"new-{i}" for i in range(MAX_ROWS)]  # newest first
    assert {row.state for row in rows} == {NOT_STORED}
    assert not any(row.this_kernel for row in rows)
    kept_jobs.close()


# -- HTML ---------------------------------------------------------------------------------
def worker_row(hostname=HOST, gone=False, pids=(11, 12)) -> WorkerRow:
    return WorkerRow(
        WorkerState(hostname, pool="prefork", concurrency=len(pids) or 2, pids=pids), gone
    )


def job_row(i=0, name="simulate", state="PROGRESS", this_kernel=True) -> JobRow:
    return JobRow(f"id-{i:04d}", name, state, 40.0, "this kernel", this_kernel, False, 1.0)


def data(**fields) -> DashboardData:
    base = dict(
        workers=[], queues=[], jobs=[], spans=[], now=1000.0, window=300.0, task_events=True
    )
    base.update(fields)
    return DashboardData(**base)


def test_every_string_from_workers_the_broker_and_the_store_is_escaped():
    span = TaskSpan("t1", XSS, XSS, None, 900.0, 950.0, states.SUCCESS)
    text = render(
        data(
            workers=[worker_row(hostname=XSS)],
            queues=[QueueRow(XSS, 3, ())],
            jobs=[job_row(name=XSS, state=XSS)],
            spans=[span],
            notes=[XSS],
            names={"t1": XSS},
        )
    )
    assert "<img" not in text
    assert text.count("&lt;img src=x onerror=alert(1)&gt;") >= 6


def test_a_queue_with_messages_and_no_consumer_stands_out():
    text = queues_html(
        [QueueRow("celery", 0, (HOST,)), QueueRow("gpu", 4, ()), QueueRow("idle", 0, ())]
    )
    assert "1 with messages and no consumer" in text
    assert text.count("celerynb-queue-stranded") == 1
    stranded = re.search(r"<tr class='celerynb-queue-stranded'.*?</tr>", text).group(0)
    assert ">gpu<" in stranded and ">4<" in stranded and "no consumer" in stranded


def test_the_jobs_table_counts_every_job_and_shows_the_latest():
    rows = [job_row(i, state="SUCCESS" if i % 2 else "PENDING") for i in range(45)]
    text = jobs_html(rows)
    assert "Jobs: 45 (23 PENDING, 22 SUCCESS); the latest 20 shown" in text
    assert text.count("celerynb-job-row") == MAX_JOB_ROWS


def test_a_worker_that_sends_no_report_shows_unknown_cpu_and_memory():
    text = render(data(workers=[worker_row()]))
    cells = re.search(r"<tr class='celerynb-worker'>(.*?)</tr>", text).group(1)
    assert re.findall(r"<td>(.*?)</td>", cells)[4:6] == ["<span title=''>?</span>", "?"]


def test_a_gone_worker_is_marked_and_drawn_faded():
    text = render(data(workers=[worker_row("a@x"), worker_row("b@x", gone=True)]))
    assert "Workers: 1 online, 1 gone" in text
    assert "b@x <span class='celerynb-gone'" in text and "opacity:0.55" in text


def test_spans_go_on_their_process_or_on_the_first_free_lane():
    spans = [
        TaskSpan("known", "t", HOST, 12, 10.0, 20.0),
        TaskSpan("a", "t", HOST, None, 10.0, 15.0),
        TaskSpan("b", "t", HOST, None, 16.0, None),  # lane 11 is free again at 15
        TaskSpan("c", "t", HOST, None, 17.0, 18.0),  # both busy: the lowest lane
        TaskSpan("x", "t", "gone@y", None, 1.0, 2.0),  # a worker no longer listed
    ]
    lanes, where = place(spans, [worker_row(pids=(12, 11))])
    assert [(lane.hostname, lane.pid) for lane in lanes] == [
        (HOST, 11),
        (HOST, 12),
        ("gone@y", None),
    ]
    assert where == {"known": 1, "a": 0, "b": 0, "c": 0, "x": 2}
    # Unknown pids: one slot per process of the pool.
    lanes, _ = place([], [WorkerRow(WorkerState(HOST, concurrency=3), False)])
    assert [lane.label for lane in lanes] == [f"{HOST} · #1", f"{HOST} · #2", f"{HOST} · #3"]


def test_the_task_stream_draws_at_most_its_bound_of_spans():
    spans = [
        TaskSpan(f"t{i}", "t", HOST, 11, 900.0 + i * 0.01, 900.5 + i * 0.01) for i in range(2000)
    ]
    text = render(data(workers=[worker_row()], spans=spans))
    assert text.count("<rect ") == MAX_DRAWN
    assert f"{2000 - MAX_DRAWN} tasks not drawn" in text
    assert len(text) < 50_000  # one redraw: one message of a few tens of kilobytes


def test_the_task_stream_shows_at_most_its_bound_of_process_rows():
    many = WorkerRow(WorkerState(HOST, concurrency=30, pids=tuple(range(100, 130))), False)
    text = render(data(workers=[many]))
    assert text.count(f"{HOST} · pid") == MAX_LANES
    assert f"{30 - MAX_LANES} more processes not shown" in text


def test_a_running_span_reaches_now_and_an_old_one_is_clipped_to_the_window():
    spans = [TaskSpan("r", "t", HOST, 11, 940.0), TaskSpan("o", "t", HOST, 12, 100.0, 800.0)]
    svg = render(data(workers=[worker_row()], spans=spans, now=1000.0))
    rects = re.findall(r"<rect class='\w+' x='([\d.]+)' y='\d+' width='([\d.]+)'", svg)
    (x_run, w_run), (x_old, w_old) = [(float(x), float(w)) for x, w in rects]
    assert x_run + w_run == pytest.approx(1000.0)  # the right edge is "now"
    assert x_old == pytest.approx(LABEL_WIDTH)  # starts before the window: at its left edge


# -- timing --------------------------------------------------------------------------------
def test_redraws_are_at_most_two_a_second_and_none_without_news():
    clock = FakeClock(0.0)
    assert MIN_REDRAW_SECONDS == 0.5  # the README's "at most twice a second"
    pacer = RedrawPacer(min_interval=MIN_REDRAW_SECONDS)
    assert pacer.wait(clock(), dirty=True) == 0.0
    pacer.drawn(clock())
    assert pacer.wait(clock(), dirty=True) == pytest.approx(0.5)
    clock.sleep(0.1)
    assert pacer.wait(clock(), dirty=True) == pytest.approx(0.4)
    assert pacer.wait(clock(), dirty=False) is None  # idle: nothing to draw, no wake-ups
    draws = 0
    for _ in range(1000):  # news every 10 ms for 10 s
        clock.sleep(0.01)
        if pacer.wait(clock(), dirty=True) == 0.0:
            pacer.drawn(clock())
            draws += 1
    assert 19 <= draws <= 20
    # A moving task stream: one redraw per `every` without news, never quicker than the cap.
    pacer.drawn(clock())
    assert pacer.wait(clock(), dirty=False, every=1.0) == pytest.approx(1.0)
    assert pacer.wait(clock(), dirty=False, every=0.01) == pytest.approx(0.5)


def test_polls_come_at_their_pace_quicker_when_busy_and_at_once_when_asked():
    clock = FakeClock(0.0)
    # The README's pace: inspect every 3 s busy / 15 s idle, queues and jobs 2 s / 10 s.
    assert POLL_INTERVALS == {"inspect": (3.0, 15.0), "queues": (2.0, 10.0), "jobs": (2.0, 10.0)}
    schedule = PollSchedule({"inspect": (3.0, 15.0), "queues": (2.0, 10.0)})
    assert schedule.due(clock(), busy=False) == ["inspect", "queues"]  # never done: now
    for name in ("inspect", "queues"):
        schedule.done(name, clock())
    assert schedule.due(clock(), busy=False) == []
    assert schedule.wait(clock(), busy=False) == pytest.approx(10.0)
    assert schedule.wait(clock(), busy=True) == pytest.approx(2.0)
    clock.sleep(3.0)
    assert schedule.due(clock(), busy=True) == ["inspect", "queues"]
    assert schedule.due(clock(), busy=False) == []
    schedule.soon("inspect")
    assert schedule.due(clock(), busy=False) == ["inspect"]
