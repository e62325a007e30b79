"""A thousand jobs watched by one real kernel: one Redis connection and one pattern
subscription for all their updates, one aggregated bar, and a kernel that stays
responsive."""

import statistics

import psutil
import redis
from kernel_helpers import Kernel

JOBS = 1000

SUBMIT = f"""
import os, time, celerynb
celerynb.connect()

def gated(gate, x):
    deadline = time.monotonic() + 60
    while not os.path.exists(gate) and time.monotonic() < deadline:
        time.sleep(0.01)
    return x

jobs = [celerynb.submit(gated, GATE, i) for i in range({JOBS})]
sweep = celerynb.attach(jobs)  # one live bar for all of them
sweep
"""


def watched_count_reaches(count, timeout=20):
    """A cell that waits (bounded) until the kernel's watcher follows ``count`` jobs and
    prints how many it follows: a job sent is taken by the watcher with its first state,
    or within a poll's timeout (about 1 s)."""
    return (
        "watcher = celerynb.current_session().watcher\n"
        f"deadline = time.monotonic() + {timeout}\n"
        f"while watcher.watched_count != {count} and time.monotonic() < deadline:\n"
        "    time.sleep(0.02)\n"
        "print(watcher.watched_count)"
    )


def subscribed_connections(redis_client, pid):
    """Connections of process ``pid`` to this Redis that are in pub/sub mode, and all of them."""
    ports = {c.laddr.port for c in psutil.Process(pid).net_connections(kind="tcp") if c.raddr}
    mine = [c for c in redis_client.client_list() if int(c["addr"].rsplit(":", 1)[1]) in ports]
    return [c for c in mine if int(c["sub"]) or int(c["psub"])], mine


def test_a_thousand_jobs_share_one_connection_and_the_kernel_stays_responsive(cluster, tmp_path):
    gate = tmp_path / "gate"
    kernel = Kernel(cwd=str(tmp_path), env=cluster.worker_env())
    server = redis.Redis.from_url(cluster.broker_url)
    try:
        kernel.ok(f"GATE = {str(gate)!r}")
        cell = kernel.ok(SUBMIT, timeout=120)
        assert len(cell.widgets) == 1, "one widget for the whole sweep"
        pid = int(kernel.ok("print(os.getpid())").stdout)
        assert kernel.ok(watched_count_reaches(JOBS), timeout=30).stdout == f"{JOBS}\n"

        subscribed, all_mine = subscribed_connections(server, pid)
        # Two connections in pub/sub mode: the watcher's, whose one pattern covers every
        # job's channel, and one listening to worker heartbeats. No channel of a job's own.
        assert len(subscribed) == 2, subscribed
        assert sum(int(c["sub"]) for c in subscribed) <= 2, subscribed
        assert all(int(c["psub"]) == 1 for c in subscribed), subscribed
        # Besides them, a fixed few whatever the number of jobs: the producer, the broker
        # check, the heartbeat listener's, and the backend client of each thread using it.
        assert len(all_mine) <= 12, [(c["cmd"], c["db"], c["sub"], c["psub"]) for c in all_mine]

        idle = max(kernel.ok("1 + 1").elapsed for _ in range(5))
        gate.touch()
        during = [kernel.ok("1 + 1").elapsed]
        while "True" not in kernel.ok("print(sweep.done())").stdout:
            during.append(kernel.ok("1 + 1").elapsed)
            assert len(during) < 2000, "the sweep did not finish"
        # Free all along: trivial cells run in tens of ms alone, and no cell waits for the
        # sweep. Bounds robust to the whole suite's load on 2 cores (one cell once took
        # 1.9 s there while the OS ran others): the typical cell, and the worst against
        # the sweep's own length (a kernel busy with it would hold one cell through it).
        typical, worst = statistics.median(during), max(idle, *during)
        assert typical < 0.25, f"trivial cells took {typical:.2f}s typically"
        assert worst < max(1.0, sum(during) / 4), f"one took {worst:.2f}s of {sum(during):.1f}s"

        cell = kernel.ok(f"print(sweep.results(timeout=60) == list(range({JOBS})))")
        assert cell.stdout == "True\n"
        final = kernel.final_text("SUCCESS", timeout=30)
        assert f"{JOBS}/{JOBS}" in final, final
        # Finished jobs are let go, and no channel was subscribed for one of them.
        assert kernel.ok(watched_count_reaches(0), timeout=60).stdout == "0\n"
        assert max(int(c["sub"]) for c in subscribed_connections(server, pid)[0]) <= 2
    finally:
        gate.touch()
        server.close()
        kernel.close()
