"""A thousand jobs watched by one real kernel: one Redis connection for all their
updates, one aggregated bar, and a kernel that stays responsive."""

import statistics

import psutil
import redis
from conftest import wait_for
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
        assert (
            kernel.ok("print(celerynb.current_session().watcher.watched_count)", timeout=30).stdout
            == f"{JOBS}\n"
        )

        subscribed, all_mine = subscribed_connections(server, pid)
        carrying = [c for c in subscribed if int(c["sub"]) >= JOBS]
        assert len(carrying) == 1, subscribed  # every job's channel, on one connection
        assert len(subscribed) == 2, subscribed  # and one listening to worker heartbeats
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
        # Finished jobs are let go: their channels are unsubscribed.
        assert wait_for(
            lambda: max(int(c["sub"]) for c in subscribed_connections(server, pid)[0]) <= 2,
            timeout=30,
        )
    finally:
        gate.touch()
        server.close()
        kernel.close()
