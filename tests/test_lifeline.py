"""The watchdog that stops a cluster's processes when their owner dies (``Lifeline``)."""

import signal
import subprocess
import sys

import psutil
from conftest import wait_for

from celerynb._lifeline import Lifeline, _start_time, stop_tied


def sleeper():
    return subprocess.Popen(
        [sys.executable, "-c", "import time; time.sleep(60)"], start_new_session=True
    )


def test_a_released_lifeline_exits_and_signals_nothing():
    lifeline = Lifeline()
    process = lifeline.popen(
        [sys.executable, "-c", "import time; time.sleep(60)"], stop_signal=signal.SIGKILL
    )
    try:
        lifeline.release()
        assert lifeline.watchdog.poll() is not None, "the watchdog is still running"
        assert process.poll() is None, "a released lifeline signalled its process"
        lifeline.release()  # idempotent
    finally:
        process.kill()
        process.wait(10)


def test_an_owner_that_dies_takes_its_tied_process_groups_along():
    owner_script = (
        "import signal, subprocess, sys, time\n"
        "from celerynb._lifeline import Lifeline\n"
        "line = Lifeline()\n"
        "child = line.popen([sys.executable, '-c', 'import time; time.sleep(60)'],"
        " stop_signal=signal.SIGTERM)\n"
        "print(child.pid, line.watchdog.pid, flush=True)\n"
        "time.sleep(60)\n"
    )
    owner = subprocess.Popen([sys.executable, "-c", owner_script], stdout=subprocess.PIPE)
    try:
        child, watchdog = map(int, owner.stdout.readline().split())
        assert psutil.pid_exists(child)
    finally:
        owner.kill()
        owner.wait(10)
        owner.stdout.close()
    assert wait_for(lambda: not psutil.pid_exists(child), timeout=10)
    assert wait_for(lambda: not psutil.pid_exists(watchdog), timeout=10)


def test_a_pid_reused_by_another_process_is_not_signalled():
    process = sleeper()
    try:
        started = _start_time(process.pid)
        assert started is not None
        stop_tied({process.pid: (signal.SIGKILL, "not-" + started)}, grace=0)
        assert process.poll() is None, "a process that merely reuses a tied pid was killed"
        stop_tied({process.pid: (signal.SIGTERM, started)}, grace=0.2)
        assert process.wait(10) == -signal.SIGTERM
    finally:
        process.kill()
        process.wait(10)


def test_what_ignores_its_stop_signal_is_killed_after_the_grace_period():
    stubborn = subprocess.Popen(
        [sys.executable, "-c",
         "import signal, sys, time\n"
         "signal.signal(signal.SIGTERM, signal.SIG_IGN)\n"
         "print('ready', flush=True)\n"
         "time.sleep(60)\n"],
        start_new_session=True, stdout=subprocess.PIPE,
    )  # fmt: skip
    try:
        assert stubborn.stdout.readline() == b"ready\n"
        stop_tied({stubborn.pid: (signal.SIGTERM, _start_time(stubborn.pid))}, grace=0.3)
        assert stubborn.wait(10) == -signal.SIGKILL
    finally:
        stubborn.kill()
        stubborn.wait(10)
        stubborn.stdout.close()
