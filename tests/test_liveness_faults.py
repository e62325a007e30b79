"""Workers that die, stop or stay silent, for real: a job is LOST only when its worker is
gone, says why it waits otherwise, and a result that comes after LOST still counts."""

import os
import signal
import time
import uuid

import pytest
from conftest import start_worker, wait_for

import celerynb
from celerynb._liveness import LOST_AFTER
from celerynb._processes import _stop_process

pytestmark = pytest.mark.needs_server


def steps(n, pause):
    from celerynb import tqdm

    for _ in tqdm(range(n), desc="steps"):
        time.sleep(pause)
    return n


def quiet(seconds):
    """Works without reporting any progress."""
    import time

    time.sleep(seconds)
    return "done quietly"


def states_seen(job, seconds):
    seen = set()
    deadline = time.monotonic() + seconds
    while not job.done() and time.monotonic() < deadline:
        seen.add(job.state)
        time.sleep(0.05)
    return seen


def test_a_worker_that_died_before_this_kernel_heard_it_leaves_its_job_lost(own_cluster):
    """As after a kernel restart: the worker died while nobody listened; the job is
    re-attached PROGRESS, its worker was never heard, and a ping finds no one."""
    local, session = own_cluster()
    job = session.submit(steps, (2000, 0.05))
    assert wait_for(lambda: job.state == "PROGRESS", timeout=60)
    name = local.worker_name  # its replacement (the cluster supervises) gets another
    os.killpg(local._processes[-1].pid, signal.SIGKILL)  # the whole worker
    session.close()
    later = celerynb.connect(local)  # a new kernel's session: it never heard that worker
    try:
        again = later.attach(job.id)
        assert again is not job and again.state == "PROGRESS"
        assert not later.watcher._monitor.heard(name)
        started = time.monotonic()
        assert wait_for(again.done, timeout=20), again.status_line()
        print(f"never-heard worker: LOST after {time.monotonic() - started:.1f}s")
        assert again.state == celerynb.LOST
        with pytest.raises(celerynb.WorkerLostError, match="answers no ping"):
            again.result(timeout=0)
    finally:
        later.close()


def test_a_solo_worker_busy_without_heartbeats_is_not_lost(own_cluster):
    local, session = own_cluster(pool="solo")
    assert local.memory_limit is None and "no memory limit" in local.summary()
    # Silent for half as long again as the heartbeat limit, and long enough to be probed.
    job = session.submit(quiet, (LOST_AFTER * 1.5,))
    seen = states_seen(job, 60)
    assert job.result(timeout=30) == "done quietly"
    assert celerynb.LOST not in seen, seen


def test_a_stopped_worker_is_said_to_be_stopped_and_its_job_ends_when_it_continues(own_cluster):
    local, session = own_cluster()
    job = session.submit(steps, (30, 0.1))
    assert wait_for(lambda: job.state == "PROGRESS", timeout=60)
    group = local._processes[-1].pid
    os.killpg(group, signal.SIGSTOP)
    try:
        assert wait_for(lambda: job.note and "stopped" in job.note, timeout=20), job.status_line()
        assert job.state == "PROGRESS" and not job.done()
    finally:
        os.killpg(group, signal.SIGCONT)
    assert job.result(timeout=60) == 30
    assert job.note is None or "stopped" not in job.note


def test_a_result_that_comes_after_lost_is_told_and_attach_gets_it(
    cluster, session, lifeline, tmp_path
):
    """A worker on 'another machine' (its node name says so: no process to look at)
    is stopped long enough to be judged LOST, then continues and finishes."""
    name = f"faraway-{uuid.uuid4().hex[:6]}@another-machine"
    queue = f"faraway-{uuid.uuid4().hex[:6]}"
    worker = start_worker(lifeline, cluster.worker_env(), name, queue, tmp_path / "worker.log")
    try:
        assert wait_for(lambda: session.app.control.ping([name], timeout=0.5), timeout=60)
        job = celerynb.apply_async(steps, (30, 0.1), queue=queue)
        assert wait_for(lambda: job.state == "PROGRESS", timeout=30)
        os.killpg(worker.pid, signal.SIGSTOP)
        try:
            assert wait_for(job.done, timeout=30), job.status_line()
            assert job.state == celerynb.LOST
        finally:
            os.killpg(worker.pid, signal.SIGCONT)
        assert wait_for(lambda: job.note and "after it was marked LOST" in job.note, timeout=60)
        again = celerynb.attach(job.id)
        assert again is not job and again.result(timeout=30) == 30
    finally:
        _stop_process(worker)


def test_a_stopped_worker_notice_loses_only_running_jobs_whose_message_is_gone(session, tmp_path):
    """The notice a LocalCluster sends when it stops a worker: a running job ends LOST at
    once; one whose task acknowledges late is left to the liveness checks (its message is
    sent again); one already finished stays as it is."""
    from shipped import gated

    done = session.submit(sum, ([1, 2],))
    assert done.result(timeout=30) == 3
    gate = tmp_path / "gate"
    plain = session.submit(gated, (str(gate), 1))
    late = session.submit(gated, (str(gate), 2))
    late.acks_late = True
    assert wait_for(lambda: plain.worker_run is not None and late.worker_run is not None)
    host = plain.worker_run[0]
    session.watcher.worker_stopped(host, f"worker {host} stopped: a test says so")
    assert wait_for(plain.done, timeout=5), plain.state
    assert plain.state == celerynb.LOST and "a test says so" in str(plain.exception())
    assert session.watcher.sync()
    assert not late.done() and done.state == "SUCCESS"
    gate.touch()
    assert late.result(timeout=30) == 2
