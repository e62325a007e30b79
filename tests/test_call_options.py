"""Celery's calling options: checking them (pure), and what they do on real workers."""

import time
from datetime import datetime, timedelta, timezone

import pytest
from conftest import wait_for
from shipped import fails_first_times, gated

import celerynb
from celerynb._call_options import CallOptions, time_limit_note, waiting_note

NOW = datetime(2026, 11, 30, 12, 0, 0, tzinfo=timezone.utc)


def test_options_become_send_task_options_and_expires_an_instant():
    options = CallOptions.of(
        countdown=30, expires=60, priority=5, time_limit=2, soft_time_limit=1,
        headers={"team": "ml"}, queue="gpu", now=NOW,
    )  # fmt: skip
    assert options.queue == "gpu"
    assert options.send_options() == {
        "countdown": 30.0,
        "expires": NOW + timedelta(seconds=60),
        "priority": 5,
        "time_limit": 2.0,
        "soft_time_limit": 1.0,
        "headers": {"team": "ml"},
    }
    assert CallOptions.of().send_options() == {}
    naive = datetime(2026, 12, 1, 8, 0)
    assert CallOptions.of(eta=naive).eta == naive.replace(tzinfo=timezone.utc)


@pytest.fixture
def new_york(monkeypatch):
    """This machine's local time is New York's (UTC-5 in winter) for the test."""
    monkeypatch.setenv("TZ", "America/New_York")
    time.tzset()
    yield
    monkeypatch.undo()
    time.tzset()


def test_a_naive_datetime_is_local_time_as_datetime_now_gives_it(new_york):
    local_eight = datetime(2026, 12, 1, 8, 0)  # 8:00 in New York is 13:00 UTC
    options = CallOptions.of(eta=local_eight, expires=local_eight + timedelta(minutes=5))
    assert options.eta == datetime(2026, 12, 1, 13, 0, tzinfo=timezone.utc)
    assert options.expires == datetime(2026, 12, 1, 13, 5, tzinfo=timezone.utc)
    soon = CallOptions.of(eta=datetime.now() + timedelta(seconds=30))
    now = datetime.now(timezone.utc)
    assert waiting_note(soon, now, now).startswith(("starts in 30 s", "starts in 29 s"))


def test_a_soft_limit_the_call_let_out_is_told_apart_from_the_hard_one():
    from celery.exceptions import SoftTimeLimitExceeded, TimeLimitExceeded

    both = CallOptions.of(soft_time_limit=1, time_limit=5)
    assert time_limit_note(both, SoftTimeLimitExceeded()) == "soft time limit 1 s exceeded"
    assert time_limit_note(both, TimeLimitExceeded(5.0)) == "time limit 5 s exceeded"
    soft = CallOptions.of(soft_time_limit=2)
    assert time_limit_note(soft, SoftTimeLimitExceeded()) == "soft time limit 2 s exceeded"
    assert time_limit_note(None, SoftTimeLimitExceeded()) == "its soft time limit was exceeded"
    assert time_limit_note(both, ValueError("no")) is None


@pytest.mark.parametrize(
    ("options", "error", "message"),
    [
        ({"countdown": 3, "eta": NOW}, ValueError, "countdown or eta, not both"),
        ({"countdown": -1}, ValueError, "countdown must be a positive number"),
        ({"countdown": "3"}, TypeError, "countdown takes seconds"),
        ({"expires": 0}, ValueError, "expires must be a positive number"),
        ({"expires": float("nan")}, TypeError, "expires takes seconds"),
        ({"eta": "tomorrow"}, TypeError, "eta takes a datetime"),
        ({"priority": 256}, ValueError, "priority must be an int from 0 to 255"),
        ({"priority": True}, ValueError, "priority must be an int"),
        ({"time_limit": 2, "soft_time_limit": 2}, ValueError, "must be less than time_limit"),
        ({"headers": {"task": "evil"}}, ValueError, "may not set Celery's own task"),
        ({"headers": ["x"]}, TypeError, "headers takes a dict"),
        ({"headers": {"x": object()}}, TypeError, r"headers\['x'\] must be JSON data"),
        ({"queue": " padded"}, ValueError, "queue"),
    ],
)
def test_a_bad_option_is_one_clear_line(options, error, message):
    with pytest.raises(error, match=message) as info:
        CallOptions.of(**options)
    assert "\n" not in str(info.value)


def test_a_waiting_job_says_when_it_starts_and_when_it_expired():
    sent = NOW
    delayed = CallOptions.of(countdown=30, now=NOW)
    assert waiting_note(delayed, sent, NOW + timedelta(seconds=10)).startswith("starts in 20 s")
    assert waiting_note(delayed, sent, NOW + timedelta(seconds=31)) is None
    expiring = CallOptions.of(expires=5, now=NOW)
    assert waiting_note(expiring, sent, NOW + timedelta(seconds=4)) is None
    assert waiting_note(expiring, sent, NOW + timedelta(seconds=6)).startswith("expired at")
    assert waiting_note(None, sent, NOW) is None


# -- on real workers -------------------------------------------------------------------
def wall_clock():
    import time

    return time.time()


def sleepy(seconds):
    import time

    time.sleep(seconds)
    return seconds


def test_countdown_starts_no_sooner_and_the_job_says_when(session):
    sent = time.time()
    job = celerynb.apply_async(wall_clock, countdown=3)
    assert wait_for(lambda: "starts in" in (job.note or ""), timeout=2), job.note
    assert "countdown=3" in job.call_repr
    assert job.result(timeout=30) >= sent + 3 - 0.05
    chunks = celerynb.map(wall_clock_of, range(4), chunksize=2, countdown=2)
    assert min(chunks.results(timeout=30)) >= sent + 2 - 0.05


def wall_clock_of(_item):
    import time

    return time.time()


def test_a_time_limit_stops_a_long_call_with_celerys_error_in_the_widget(session):
    started = time.monotonic()
    job = celerynb.apply_async(sleepy, (60,), time_limit=2)
    with pytest.raises(Exception, match="TimeLimitExceeded") as info:
        job.result(timeout=30)
    assert time.monotonic() - started < 20
    assert "TimeLimitExceeded" in type(info.value).__name__ + str(info.value)
    assert job.state == "FAILURE" and "TimeLimitExceeded" in job.short_result_repr()
    assert "time limit 2 s exceeded" in job.note


def naps_unless_told(seconds):
    import time

    from celery.exceptions import SoftTimeLimitExceeded

    try:
        time.sleep(seconds)
    except SoftTimeLimitExceeded:
        return "told"
    return "slept"


def test_a_soft_time_limit_alone_warns_the_call_which_may_catch_it(session):
    caught = celerynb.apply_async(naps_unless_told, (60,), soft_time_limit=1)
    let_out = celerynb.apply_async(sleepy, (60,), soft_time_limit=1)
    assert caught.result(timeout=30) == "told"
    with pytest.raises(Exception, match="SoftTimeLimitExceeded") as info:
        let_out.result(timeout=30)
    assert type(info.value).__name__ == "SoftTimeLimitExceeded"
    assert let_out.note == "soft time limit 1 s exceeded"


def test_an_expired_call_is_dropped_unrun_and_the_job_says_so(session, cluster, tmp_path):
    gate = tmp_path / "gate"
    busy = [celerynb.submit(gated, str(gate), i) for i in range(cluster.processes)]
    assert wait_for(lambda: all(b.state in ("STARTED", "PROGRESS") for b in busy), timeout=30)
    late = celerynb.apply_async(wall_clock, expires=1)
    assert wait_for(lambda: "expired at" in (late.note or ""), timeout=5), late.note
    gate.touch()
    assert wait_for(late.done, timeout=30) and late.cancelled(), late.state
    assert "expired at" in late.note and "do not run it" in late.note
    assert [b.result(timeout=30) for b in busy] == list(range(cluster.processes))


def fails_once_per_item(x, _seen=set()):  # noqa: B006 - the set lives as long as the chunk
    if x not in _seen:
        _seen.add(x)
        raise ValueError(f"item {x} fails once")
    return x * 10


def test_retries_run_a_failed_call_again_as_the_same_job(session, tmp_path):
    counter = tmp_path / "runs"
    job = celerynb.apply_async(fails_first_times, (str(counter), 2), retries=2, retry_delay=0.2)
    seen = []
    job.add_listener(lambda j: seen.append(j.state))
    assert job.result(timeout=30) == 2
    assert "RETRY" in seen and job.state == "SUCCESS"
    counter.unlink()
    job = celerynb.apply_async(fails_first_times, (str(counter), 5), retries=1)
    with pytest.raises(ValueError, match="run 1 fails"):  # the last run's error stands
        job.result(timeout=30)
    assert counter.read_text() == "2"


def test_map_retries_an_item_that_fails_in_its_chunk(session):
    mapped = celerynb.map(fails_once_per_item, range(40), chunksize=10, retries=1)
    assert mapped.results(timeout=30) == [x * 10 for x in range(40)]
    assert mapped.exceptions == {}
    without = celerynb.map(fails_once_per_item, range(4), chunksize=2)
    assert without.results(timeout=30, return_exceptions=True)[0].args == ("item 0 fails once",)


def test_retries_are_for_shipped_calls(session):
    with pytest.raises(ValueError, match="retries= re-runs the calls celerynb ships"):
        celerynb.apply_async("celery.accumulate", (1,), retries=1)
    with pytest.raises(ValueError, match="retries must be an int from 0 to 100"):
        celerynb.apply_async(wall_clock, retries=-1)
