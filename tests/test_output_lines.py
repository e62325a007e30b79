"""Live output without servers: the worker's line buffer and rate cap (a clock the test
controls), the kernel's merge by number, the capture of a task's streams and logging,
and how displays show the lines (escaped, told apart, bounded, printed once)."""

import io
import logging
import os
import signal
import sys
import threading
import time
import uuid
from types import SimpleNamespace

import pytest
from conftest import FakeClock
from hypothesis import given, settings
from hypothesis import strategies as st

from celerynb import _capture, _reporting
from celerynb._display import TextRenderer
from celerynb._output import (
    BURST_CHARS,
    DROPPED,
    LINE_COST,
    MAX_BATCH_CHARS,
    MAX_LINE_CHARS,
    RATE_CHARS_PER_SECOND,
    OutputBuffer,
)
from celerynb._output_log import OutputLog, OutputTail
from celerynb._output_view import latest_within, output_html, output_text
from celerynb._reporting import TaskProgress
from celerynb._schema import OUTPUT_KEY


def lines_of(batch):
    return [tuple(line) for line in batch["lines"]]


# -- the worker's buffer ---------------------------------------------------------
def test_lines_end_at_newlines_and_keep_their_stream_and_order():
    buffer = OutputBuffer("r1", clock=FakeClock())
    buffer.write("stdout", "a\nb")
    buffer.write("stderr", "oops\n")
    buffer.write("stdout", "c\n")
    buffer.log("WARNING fit: slow")
    batch = buffer.take()
    assert batch["run"] == "r1" and batch["seq"] == 0
    assert lines_of(batch) == [
        ("stdout", "a"),
        ("stderr", "oops"),
        ("stdout", "bc"),
        ("log", "WARNING fit: slow"),
    ]
    assert buffer.take() is None
    buffer.write("stdout", "d\n")
    assert buffer.take()["seq"] == 4  # numbers go on from the last batch


def test_a_redrawn_line_keeps_only_its_last_version_like_a_terminal():
    buffer = OutputBuffer("r", clock=FakeClock())
    for i in range(100):  # a text progress bar redrawn in place
        buffer.write("stderr", f"\r{i}%|###")
    buffer.write("stderr", "\r100%|#####|\n")
    buffer.write("stdout", "abc\r")  # "\r\n" split over two writes ends the line
    buffer.write("stdout", "\nxyz\rX\n")
    assert lines_of(buffer.take()) == [
        ("stderr", "100%|#####|"),
        ("stdout", "abc"),
        ("stdout", "X"),
    ]


def test_an_unfinished_line_is_sent_when_the_task_ends():
    buffer = OutputBuffer("r", clock=FakeClock())
    buffer.write("stdout", "no newline")
    assert buffer.take() is None
    assert buffer.take(final=True) is None  # ending lines is the caller's step
    buffer.end_lines()
    assert lines_of(buffer.take(final=True)) == [("stdout", "no newline")]


def test_a_long_line_is_cut_and_says_how_much():
    buffer = OutputBuffer("r", clock=FakeClock())
    buffer.write("stdout", "x" * 5000 + "\n")
    (stream, text), *_ = lines_of(buffer.take())
    assert text.startswith("x" * MAX_LINE_CHARS) and text.endswith("[4000 characters cut]")


def test_unsent_lines_are_bounded_the_oldest_dropped_and_counted():
    buffer = OutputBuffer("r", clock=FakeClock(), max_pending_lines=10)
    for i in range(25):
        buffer.write("stdout", f"{i}\n")
    assert buffer.dropped_total == 15
    assert lines_of(buffer.take()) == [(DROPPED, "15")] + [
        ("stdout", str(i)) for i in range(15, 25)
    ]


def test_unsent_text_is_bounded_in_characters_too():
    buffer = OutputBuffer("r", clock=FakeClock(), max_pending_chars=10 * (100 + LINE_COST))
    for _ in range(50):
        buffer.write("stdout", "y" * 100 + "\n")
    batch = buffer.take()
    assert lines_of(batch)[0] == (DROPPED, "40") and len(batch["lines"]) == 11


def test_the_rate_cap_holds_back_what_exceeds_the_budget_until_time_refills_it():
    clock = FakeClock()
    buffer = OutputBuffer("r", clock=clock, rate=1000, burst=1000)
    line = "z" * (100 - LINE_COST)  # costs 100
    for _ in range(25):
        buffer.write("stdout", line + "\n")
    assert len(buffer.take()["lines"]) == 10  # the burst: 1000 chars
    assert buffer.take() is None  # nothing left in the bucket
    clock.now += 0.5
    assert len(buffer.take()["lines"]) == 5  # half a second: 500 chars
    clock.now += 100  # the bucket holds at most the burst
    assert len(buffer.take()["lines"]) == 10
    assert buffer.take(final=True) is None  # all 25 sent


def test_the_last_lines_are_sent_at_the_end_whatever_the_rate_cap():
    clock = FakeClock()
    buffer = OutputBuffer("r", clock=clock, rate=1, burst=1)
    for i in range(30):
        buffer.write("stdout", f"{i}\n")
    assert buffer.take() is None
    batches = []
    while (batch := buffer.take(final=True)) is not None:
        batches.append(batch)
    assert [text for b in batches for _, text in b["lines"]] == [str(i) for i in range(30)]


def test_a_batch_stays_within_its_size_and_the_defaults_bound_the_rate():
    clock = FakeClock()
    buffer = OutputBuffer("r", clock=clock)
    sent = 0
    for _second in range(10):  # a flood: 1 MB of lines every second for 10 s
        for _ in range(1000):
            buffer.write("stdout", "w" * 1000 + "\n")
        for _ in range(10):  # ten writes a second, as the throttle allows
            clock.now += 0.1
            batch = buffer.take()
            if batch:
                size = sum(len(text) + LINE_COST for _, text in batch["lines"])
                assert size <= MAX_BATCH_CHARS + LINE_COST
                sent += size
    assert sent <= BURST_CHARS + 10 * RATE_CHARS_PER_SECOND + MAX_BATCH_CHARS


def test_a_batch_the_kernel_missed_still_counts_every_line_it_stood_for():
    """Subscribed late, or reconnected: a PROGRESS carrying "5000 lines dropped" missed
    must not count as one missing line."""
    clock = FakeClock()
    buffer = OutputBuffer("r", clock=clock, max_pending_lines=10)
    log = OutputLog(keep=20)
    written = 0
    for batch_number in range(6):
        for _ in range(1000):  # a flood: most of each thousand are dropped on the worker
            buffer.write("stdout", f"{written}\n")
            written += 1
        batch = buffer.take(final=True)
        assert batch["lines"][0] == [DROPPED, "990"]
        if batch_number not in (1, 3):  # two batches never reach this kernel
            log.merge(batch)
    tail = log.tail()
    kept = sum(int(text) if stream == DROPPED else 1 for stream, text in tail.lines)
    assert kept + tail.dropped == written == 6000


def test_a_write_for_a_polling_kernel_repeats_the_lines_of_the_last_seconds():
    clock = FakeClock()
    buffer = OutputBuffer("r", clock=clock)
    log = OutputLog()
    for i in range(6):
        buffer.write("stdout", f"{i}\n")
        written = buffer.take(again=1.5)
        clock.now += 0.4
        if i % 3 == 2:  # the kernel reads only every third write
            log.merge(written)
    assert written["seq"] == 2 and [t for _, t in written["lines"]] == ["2", "3", "4", "5"]
    assert [t for _, t in log.tail().lines] == [str(i) for i in range(6)]
    assert log.tail().dropped == 0
    assert buffer.recent() == {
        "run": "r",
        "seq": 0,
        "lines": [["stdout", str(i)] for i in range(6)],
        "through": 6,
    }


# -- the kernel's log ------------------------------------------------------------------
def batch(seq, *texts, run="r"):
    return {"run": run, "seq": seq, "lines": [["stdout", text] for text in texts]}


def test_batches_merge_by_number_a_repeated_or_late_one_adds_nothing_twice():
    log = OutputLog()
    assert log.merge(batch(0, "a", "b")) == [("stdout", "a"), ("stdout", "b")]
    assert log.merge(batch(0, "a", "b")) == []  # the same meta read twice
    log.merge(batch(4, "e"))
    assert log.tail() == OutputTail((("stdout", "a"), ("stdout", "b"), ("stdout", "e")), 2)
    log.merge(batch(2, "c", "d"))  # came late (catch-up racing pub/sub): in its place
    assert log.tail().lines == tuple(("stdout", t) for t in "abcde")
    assert log.tail().dropped == 0


def test_the_log_keeps_its_last_lines_and_counts_the_rest_as_dropped():
    log = OutputLog(keep=5)
    log.merge(batch(0, *map(str, range(8))))
    log.merge({"run": "r", "seq": 8, "lines": [[DROPPED, "100"], ["stdout", "8"]]})
    tail = log.tail()
    assert tail.lines == (("stdout", "4"), ("stdout", "5"), ("stdout", "6"), ("stdout", "7"),
                          (DROPPED, "100"), ("stdout", "8"))[-5:]  # fmt: skip
    assert tail.dropped == 5  # lines 0-4 no longer kept
    assert tail.text().splitlines()[0] == "… 5 lines dropped"
    assert "… 100 lines dropped" in tail.text()
    log.merge(batch(1, "old"))  # older than every line kept: not taken again
    assert log.tail() == tail


def test_the_log_keeps_at_most_its_size_in_text_too():
    log = OutputLog(keep=1000, keep_chars=100)
    log.merge(batch(0, *("x" * 30 for _ in range(10))))
    assert len(log.tail().lines) == 3 and log.tail().dropped == 7


def test_a_new_run_of_the_task_follows_the_earlier_ones_lines():
    log = OutputLog()
    log.merge(batch(0, "first try", run="run1"))
    log.merge(batch(0, "second try", run="run2"))  # a retry numbers from 0 again
    log.merge(batch(1, "late from run 1", run="run1"))  # ended: ignored
    assert [text for _, text in log.tail().lines] == ["first try", "second try"]


@pytest.mark.parametrize(
    "garbage",
    [
        None,
        "text",
        {"seq": 0, "lines": [["stdout", "x"]]},  # no run
        {"run": "r", "seq": -1, "lines": [["stdout", "x"]]},
        {"run": "r", "seq": True, "lines": [["stdout", "x"]]},
        {"run": "r", "seq": 0, "lines": "x"},
        {"run": "r" * 100, "seq": 0, "lines": [["stdout", "x"]]},
    ],
)
def test_a_batch_that_is_not_one_is_ignored(garbage):
    log = OutputLog()
    assert log.merge(garbage) == []
    assert not log.tail()


def test_lines_read_from_the_backend_are_checked_and_bounded():
    log = OutputLog()
    added = log.merge(
        {
            "run": "r",
            "seq": 0,
            "lines": [
                ["evil", "x"],
                ["stdout", 42],
                [DROPPED, "lots"],
                [DROPPED, "\u00b2"],  # a digit to str.isdigit, not to int()
                ["stdout"],
                ["stderr", "bell\x07 and \x1b[31mred\x1b[0m\tok"],
                ["stdout", "y" * 100_000],
                *([["stdout", "z"]] * 10_000),
            ],
        }
    )
    assert added[0] == ("stderr", "bell\ufffd and \x1b[31mred\x1b[0m\tok")
    assert len(added[1][1]) < MAX_LINE_CHARS + 50
    assert len(added) <= 5000


def test_a_reader_following_the_log_gets_each_line_once_in_arrival_order():
    log = OutputLog(keep=3)
    log.merge(batch(0, "a", "b"))
    entries, missed = log.since(0)
    assert entries == [("stdout", "a"), ("stdout", "b")] and missed == 0
    mark = log.received
    log.merge(batch(2, *"cdefg"))
    entries, missed = log.since(mark)
    assert [t for _, t in entries] == ["e", "f", "g"] and missed == 2


# -- sending: the task's writes and the flusher --------------------------------------
class Task:
    """The part of a Celery task that TaskProgress uses; records every write."""

    def __init__(self, task_id="t-out"):
        from celery.backends.redis import RedisBackend

        self.request = SimpleNamespace(id=task_id, hostname="w@h")
        self.backend = RedisBackend.__new__(RedisBackend)  # pushes: no line sent twice
        self.metas = []

    def update_state(self, task_id, state, meta):
        self.metas.append(meta)


@pytest.fixture
def captured(monkeypatch):
    """A fake running task whose output is captured in this thread."""
    task = Task(f"t-{uuid.uuid4()}")
    monkeypatch.setattr(_reporting, "running_task", lambda: task)
    output = _capture.start(task.request.id)
    try:
        yield task, output
    finally:
        _capture.stop(task.request.id)
        _reporting._forget_finished_task(task.request.id)  # as task_postrun does


def sent_lines(task):
    return [
        tuple(line) for meta in task.metas for line in meta.get(OUTPUT_KEY, {}).get("lines", [])
    ]


def test_progress_writes_carry_the_lines_waiting(captured):
    task, output = captured
    clock = FakeClock()
    progress = TaskProgress(task, clock=clock)
    output.write("stdout", "hello\n")
    progress.update_bar(1, {"n": 1, "total": 2, "desc": "", "unit": "it"})
    assert sent_lines(task) == [("stdout", "hello")]
    output.write("stdout", "again\n")
    progress.send_output()  # the flusher may not write before capture_output opens it
    assert sent_lines(task) == [("stdout", "hello")]


def test_the_flusher_writes_within_the_throttle_and_never_after_the_close(captured):
    task, output = captured
    clock = FakeClock()
    progress = TaskProgress(task, max_writes_per_second=10, clock=clock)
    progress.open_output()
    output.write("stdout", "one\n")
    progress.send_output()
    output.write("stdout", "two\n")
    progress.send_output()  # within 0.1 s of the last write: waits
    assert sent_lines(task) == [("stdout", "one")]
    clock.now += 0.1
    progress.send_output()
    assert sent_lines(task) == [("stdout", "one"), ("stdout", "two")]
    output.write("stdout", "three")  # unfinished, then the task ends
    progress.close_output()
    assert sent_lines(task)[-1] == ("stdout", "three")
    writes = len(task.metas)
    output.write("stdout", "after the end\n")
    clock.now += 10
    progress.send_output()
    assert len(task.metas) == writes  # the task's outcome is stored now: no PROGRESS after it


def test_one_flusher_thread_serves_short_tasks_one_after_another_then_ends(captured, monkeypatch):
    monkeypatch.setattr(_capture, "_flusher", _capture._Flusher())
    monkeypatch.setattr(_capture, "IDLE_SECONDS", 2.0, raising=False)
    threads = []
    for _ in range(5):  # a map's chunks, joblib's batches: each a short captured task
        with _capture.capture_output():
            threads.append(_capture._flusher._thread)
        threads[-1].join(0.3)  # a thread per task would have ended by its next round
    assert threads[0] is not None and threads[0].is_alive()
    assert all(thread is threads[0] for thread in threads), "a thread started per task"
    threads[0].join(5)  # none comes for IDLE_SECONDS: it ends
    assert not threads[0].is_alive() and _capture._flusher._thread is None


def test_a_tasks_streams_and_logging_records_are_captured_in_its_thread(captured):
    task, output = captured
    _capture._install()
    print("printed")
    print("to stderr", file=sys.stderr)
    logging.getLogger("celerynb.test").warning("logged %s", 1)
    logging.getLogger("celery.redirected").warning("printed")  # Celery's copy of a print
    seen = []

    def elsewhere():
        seen.append(_capture._route())

    thread = threading.Thread(target=elsewhere)
    thread.start()
    thread.join()
    assert seen == [output]  # a thread the task started, while it is the only task
    assert lines_of(output.take()) == [
        ("stdout", "printed"),
        ("stderr", "to stderr"),
        ("log", "WARNING celerynb.test: logged 1"),
    ]


def test_capture_output_outside_a_task_does_nothing(monkeypatch):
    monkeypatch.setattr(_reporting, "running_task", lambda: None)
    from celerynb import capture_output

    @capture_output
    def plain(x):
        print("not captured")
        return x + 1

    assert plain(1) == 2
    with capture_output():
        pass
    assert _capture.output_of("t-out") is None


def test_capture_output_as_a_decorator_sends_the_last_lines_before_returning(captured):
    task, output = captured
    from celerynb import capture_output

    @capture_output
    def body():
        print("last words")
        return "value"

    assert body() == "value"
    assert sent_lines(task) == [("stdout", "last words")]


# -- showing them ----------------------------------------------------------------------
def test_output_html_is_escaped_and_streams_are_told_apart():
    html = output_html(
        [
            ("stdout", "<img src=x onerror=alert(1)>"),
            ("stderr", "err"),
            ("log", "INFO x"),
            (DROPPED, "7"),
        ]  # fmt: skip
    )
    assert "<img" not in html and "&lt;img src=x onerror=alert(1)&gt;" in html
    assert "class='celerynb-stderr'" in html and "class='celerynb-log'" in html
    assert "… 7 lines dropped" in html
    assert output_text([("stdout", "a"), ("stderr", "b"), ("log", "c")]) == "a\n[stderr] b\n[log] c"


def test_a_display_shows_the_latest_lines_within_its_size_and_counts_the_rest():
    entries = [("stdout", str(i) * 10) for i in range(10)]
    shown = latest_within(entries, 35)
    assert shown == [
        (DROPPED, "7"),
        ("stdout", "7" * 10),
        ("stdout", "8" * 10),
        ("stdout", "9" * 10),
    ]
    assert latest_within(entries, 10_000) == entries


def test_the_text_display_prints_each_line_once_then_the_final_line():
    from celerynb._schema import ProgressSnapshot

    log = OutputLog()
    done = threading.Event()

    def since(mark):
        entries, missed = log.since(mark)
        return entries, missed, log.received

    job = SimpleNamespace(
        name="talky",
        progress=ProgressSnapshot("PROGRESS"),
        elapsed=0.4,
        state="PROGRESS",
        note=None,
        done=done.is_set,
        output=log.tail(),
        remote_traceback=None,
        _display_pending=threading.Event,
        _output_since=since,
        short_result_repr=lambda: "42",
    )
    out = io.StringIO()
    renderer = TextRenderer(job, file=out)
    log.merge(batch(0, "first"))
    renderer.draw()
    renderer.draw()
    log.merge(batch(1, "second"))
    done.set()
    job.state, job.output = "SUCCESS", log.tail()
    renderer.draw()
    text = out.getvalue()
    assert text.count("first") == 1 and text.count("second") == 1, text
    assert text.index("first") < text.index("second") < text.index("talky: SUCCESS")


def test_capture_output_as_a_with_block_sends_its_lines_before_it_ends(captured):
    task, output = captured
    from celerynb import capture_output

    with capture_output():
        print("inside")
        logging.getLogger("celerynb.test").warning("logged inside")
    assert sent_lines(task) == [
        ("stdout", "inside"),
        ("log", "WARNING celerynb.test: logged inside"),
    ]


def test_a_group_shows_the_lines_its_tasks_printed_before_it_was_made():
    """A quick task of a map printed (and its lines arrived) before its JobGroup existed."""
    from celerynb._group import JobGroup
    from celerynb._job import Job

    job = Job("t-early", "early", session=None, shipped=True)
    job._output.merge(batch(0, "printed early"))
    group = JobGroup([job], [(0, 1)], name="group")
    assert group.output.lines == (("stdout", "printed early"),)
    job._output.merge(batch(1, "then more"))
    group._on_job_change(job)
    group._on_job_change(job)  # told twice: each line once
    assert [text for _, text in group.output.lines] == ["printed early", "then more"]


@pytest.mark.filterwarnings("ignore:This process .* is multi-threaded:DeprecationWarning")
def test_a_process_a_task_forks_captures_nothing_and_never_blocks_on_a_lock(captured):
    task, output = captured
    _capture._install()
    with output.lock:  # held, as by the flusher taking lines, when the task forks
        pid = os.fork()
        if pid == 0:  # the child: a print must not wait for the parent's lock
            try:
                print("from the child")
                os._exit(0 if _capture._route() is None else 3)
            except BaseException:
                os._exit(2)
    deadline = time.monotonic() + 10
    while (ended := os.waitpid(pid, os.WNOHANG))[0] == 0:
        if time.monotonic() > deadline:
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
            pytest.fail("the forked child blocked on the lock its parent held")
        time.sleep(0.01)
    assert os.waitstatus_to_exitcode(ended[1]) == 0
    assert output.take() is None  # the child's print is not the task's


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=8),
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=6), inner, max_size=4)
    ),
    max_leaves=20,
)
batches = st.fixed_dictionaries(
    {
        "run": st.sampled_from(["r1", "r2"]) | st.text(max_size=3),
        "seq": st.integers(-3, 2**60),
        "lines": st.lists(
            st.tuples(
                st.sampled_from(["stdout", "stderr", "log", DROPPED, "x"]),
                st.text(max_size=12) | st.integers(),
            ).map(list)
            | json_values,
            max_size=6,
        ),
    }
)


@settings(max_examples=200, deadline=None)
@given(st.lists(batches | json_values, max_size=6))
def test_any_batch_read_from_the_backend_is_taken_or_ignored_never_an_error(read):
    """Whatever a backend entry holds (anyone who can write there can write it), merging
    it and showing the job's output never raises, and all of it is escaped."""
    log = OutputLog(keep=5)
    for batch in read:
        log.merge(batch)
    tail = log.tail()
    assert len(tail.lines) <= 5 and tail.dropped >= 0
    tail.text()
    html = output_html(latest_within(tail.entries(), 100))
    assert "<script" not in html
