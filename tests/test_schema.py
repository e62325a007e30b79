"""The PROGRESS meta schema: what workers write, what the kernel reads."""

import json

from celerynb._schema import SCHEMA, ProgressSnapshot, bar_meta, parse_meta, task_meta


def test_task_meta_carries_celerynb_and_celery_progress_keys():
    meta = task_meta([bar_meta(25, 100, "outer", rate=5.0, elapsed=5.0)], hostname="w1", pid=7)
    assert meta["schema"] == SCHEMA
    assert (meta["n"], meta["total"], meta["desc"]) == (25, 100, "outer")
    assert (meta["current"], meta["percent"], meta["description"]) == (25, 25.0, "outer")
    assert (meta["hostname"], meta["pid"]) == ("w1", 7)
    json.dumps(meta)  # must travel as JSON


def test_parse_reads_every_bar_outermost_first():
    meta = task_meta([bar_meta(1, 3, "outer"), bar_meta(40, 50, "inner", rate=10.0)])
    snap = parse_meta("PROGRESS", meta)
    assert [b.desc for b in snap.bars] == ["outer", "inner"]
    assert snap.desc == "outer" and snap.n == 1 and snap.total == 3
    assert snap.bars[1].eta == 1.0


def test_parse_reads_celery_progress_recorder_meta():
    meta = {"pending": False, "current": 3, "total": 12, "percent": 25.0, "description": "rows"}
    snap = parse_meta("PROGRESS", meta)
    assert (snap.n, snap.total, snap.desc, snap.percent) == (3, 12, "rows", 25.0)


def test_states_without_progress_meta_keep_the_last_bars():
    progressed = parse_meta("PROGRESS", task_meta([bar_meta(9, 10, "x")]))
    finished = parse_meta("SUCCESS", 42, progressed)
    assert finished.state == "SUCCESS" and finished.n == 9 and finished.desc == "x"


def test_started_meta_gives_worker_identity():
    snap = parse_meta("STARTED", {"pid": 123, "hostname": "celery@box"})
    assert (snap.pid, snap.hostname, snap.bars) == (123, "celery@box", ())


def test_non_finite_and_garbage_numbers_become_none():
    meta = bar_meta(float("nan"), float("inf"), rate=float("nan"))
    assert meta["n"] is None and meta["total"] is None and meta["rate"] is None
    snap = parse_meta("PROGRESS", {"current": "lots", "total": None})
    assert snap.n == 0 and snap.total is None and snap.percent is None


def test_unknown_total_has_no_percent_or_eta():
    snap = parse_meta("PROGRESS", task_meta([bar_meta(5, None, rate=2.0)]))
    assert snap.percent is None and snap.eta is None
    assert ProgressSnapshot().n == 0


def test_a_final_state_brings_the_last_bars_when_none_were_heard():
    from celery import states

    from celerynb._schema import FINAL_BARS_KEY, ProgressSnapshot, bar_meta, parse_meta

    final = {FINAL_BARS_KEY: [bar_meta(4, 4, "phase"), "junk", {"n": "lots"}]}
    snapshot = parse_meta(states.SUCCESS, final, ProgressSnapshot())
    assert (snapshot.state, snapshot.desc, snapshot.n, snapshot.total) == ("SUCCESS", "phase", 4, 4)
    heard = parse_meta("PROGRESS", {"current": 2, "total": 9, "description": "live"})
    assert parse_meta(states.SUCCESS, final, heard).desc == "phase"  # their last state
    assert parse_meta(states.SUCCESS, {}, heard).desc == "live"  # a task of another kind
    assert parse_meta(states.SUCCESS, {FINAL_BARS_KEY: "x"}, ProgressSnapshot()).bars == ()


def test_a_finished_transfers_bar_is_not_the_final_one():
    """A big call's upload showed as its bar while the worker read it; a cell with no
    bar of its own ended showing "receiving the call: SUCCESS 100% ... 88.8GB/s"."""
    from celery import states

    from celerynb._schema import FINAL_BARS_KEY

    transfer = bar_meta(210, 210, "receiving the call", unit="B")
    moving = parse_meta("PROGRESS", task_meta([transfer]))
    assert moving.desc == "receiving the call"
    assert parse_meta(states.SUCCESS, {FINAL_BARS_KEY: []}, moving).bars == ()
