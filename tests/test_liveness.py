"""Judging a job's worker from heartbeats, news and probes, with a clock the test
controls (no server): LOST only when nothing says the worker is alive."""

import os
import signal
import subprocess
import sys

import pytest
from conftest import FakeClock, wait_for

from celerynb._liveness import (
    ALIVE,
    LOST,
    LOST_AFTER,
    NOT_HEARD_GRACE,
    PROBE,
    PROCESS_ALIVE,
    PROCESS_GONE,
    PROCESS_STOPPED,
    WAIT,
    Evidence,
    Probe,
    WorkerMonitor,
    judge,
    process_state,
)


def evidence(**overrides):
    base = dict(listening_for=60.0, heard=True, silent_for=1.0, news_age=None, probe=None)
    return Evidence(**(base | overrides))


def test_a_worker_heard_recently_is_alive():
    assert judge(evidence()) == (ALIVE, None)


def test_news_from_the_job_keeps_its_worker_alive_without_heartbeats():
    """A solo pool sends no heartbeats while its task runs, but the task writes progress."""
    assert judge(evidence(silent_for=60.0, news_age=LOST_AFTER - 1)) == (ALIVE, None)


def test_silence_leads_to_a_probe_never_straight_to_lost():
    assert judge(evidence(silent_for=LOST_AFTER)) == (PROBE, None)


def test_a_worker_never_heard_is_probed_once_the_listener_had_time_to_hear_it():
    assert judge(evidence(heard=False, silent_for=None, listening_for=1.0)) == (ALIVE, None)
    never_heard = evidence(heard=False, silent_for=None, listening_for=NOT_HEARD_GRACE)
    assert judge(never_heard) == (PROBE, None)


def test_nothing_is_judged_while_the_listener_is_not_connected():
    assert judge(evidence(listening_for=0.0, silent_for=60.0)) == (ALIVE, None)


@pytest.mark.parametrize(
    "probe, verdict",
    [
        (Probe(0, answered=True), ALIVE),
        (Probe(0, answered=False, process=PROCESS_STOPPED), WAIT),
        (Probe(0, answered=False, process=PROCESS_ALIVE), WAIT),
        (Probe(0, answered=False, process=PROCESS_GONE), LOST),
        (Probe(0, answered=False, process=None), LOST),  # another machine, no answer
    ],
)
def test_a_probe_decides(probe, verdict):
    decided, note = judge(evidence(silent_for=30.0, probe=probe))
    assert decided == verdict
    assert (note is not None) == (verdict == WAIT)


def test_the_monitor_says_nothing_of_silence_just_after_it_connected():
    clock = FakeClock()
    monitor = WorkerMonitor(app=None, clock=clock)
    monitor._connected_since = clock.now
    monitor._heard({"hostname": "w@h"})
    clock.now += LOST_AFTER - 1  # the broker was away: no beat could come
    monitor._drained()
    assert monitor.silent_for("w@h") is None
    clock.now += 5
    monitor._drained()
    assert monitor.silent_for("w@h") == pytest.approx(LOST_AFTER + 4)
    assert judge(monitor.evidence("w@h", None, clock.now)) == (PROBE, None)


def test_the_monitor_does_not_call_silence_what_it_did_not_drain():
    clock = FakeClock()
    monitor = WorkerMonitor(app=None, clock=clock)
    monitor._connected_since = clock.now - 60
    monitor._heard({"hostname": "w@h"})
    clock.now += 30  # the kernel was too busy to read the connection meanwhile
    assert monitor.silent_for("w@h") is None


def test_an_answered_probe_counts_as_hearing_the_worker():
    clock = FakeClock()

    class Control:
        def ping(self, destination, timeout):
            return [{destination[0]: {"ok": "pong"}}]

    class App:
        control = Control()

    monitor = WorkerMonitor(app=App(), clock=clock)
    monitor._probe("w@h", None)
    assert monitor.heard("w@h")
    assert monitor.evidence("w@h", None, clock.now).probe == Probe(clock.now, True, None)


def test_process_state_tells_alive_stopped_and_gone():
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        assert process_state(child.pid) == PROCESS_ALIVE
        os.kill(child.pid, signal.SIGSTOP)
        assert wait_for(lambda: process_state(child.pid) == PROCESS_STOPPED, timeout=10)
        os.kill(child.pid, signal.SIGCONT)
    finally:
        child.kill()
        child.wait()
    assert process_state(child.pid) == PROCESS_GONE
