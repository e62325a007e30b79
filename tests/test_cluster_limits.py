"""A LocalCluster's size and memory: scale() while a map runs, and a memory limit per
worker process that fails the task going over it, with a clear error, and nothing else."""

import sys
import time

import psutil
import pytest
from conftest import wait_for

import celerynb
import celerynb._cluster
from celerynb import ClusterStartError
from celerynb._memory import memory_limit_bytes, over_the_limit_line, readable_size


def test_memory_limits_are_read_as_sizes():
    assert memory_limit_bytes("2GB", 2) == 2 * 10**9
    assert memory_limit_bytes("512 MiB", 2) == 512 * 2**20
    assert memory_limit_bytes("1.5gb", 1) == 1_500_000_000
    assert memory_limit_bytes(300_000_000, 1) == 300_000_000
    assert memory_limit_bytes(None, 4) is None
    auto = memory_limit_bytes("auto", 4)
    assert auto is not None and 0 < auto * 4 <= psutil.virtual_memory().total
    for bad in ("lots", "2 parsecs", "-1GB", True, "10MB", "1e400GB", float("inf"), float("nan")):
        with pytest.raises(ValueError, match="memory_limit"):
            memory_limit_bytes(bad, 1)
    assert readable_size(2 * 10**9) == "2.0 GB"
    line = over_the_limit_line(MemoryError("Unable to allocate 8 GiB"), 2 * 10**9)
    assert line.startswith("the task went over the memory limit of 2.0 GB per worker process")
    assert line.endswith("Unable to allocate 8 GiB")


def too_many_for_the_memory():
    """One process more than the machine's memory gives 64 MiB each (skips where the cap
    on processes per CPU comes first)."""
    import os

    from celerynb._cluster_worker import PROCESSES_PER_CPU
    from celerynb._memory import MIN_LIMIT, physical_memory

    too_many = physical_memory() // MIN_LIMIT + 1
    if too_many > PROCESSES_PER_CPU * (os.cpu_count() or 1):
        pytest.skip("this machine's memory outlasts its cap on processes")
    return too_many


def test_more_processes_than_the_memory_can_share_are_refused_at_once():
    most = psutil.virtual_memory().total // (64 * 2**20)
    assert memory_limit_bytes("auto", max(most // 2, 1)) >= 64 * 2**20
    with pytest.raises(ValueError, match=r"^1000000 processes would get .* at most \d+ get"):
        memory_limit_bytes("auto", 10**6)
    with pytest.raises(ValueError, match="memory_limit=None"):
        celerynb.LocalCluster(processes=too_many_for_the_memory())  # before anything starts
    assert memory_limit_bytes(None, 10**6) is None  # asked for: not judged


def test_more_processes_than_a_machine_runs_are_refused_whatever_the_pool():
    for pool, limit in (("threads", None), ("prefork", None), ("solo", None)):
        with pytest.raises(ValueError, match=r"^processes=1000000 is more than .* at most \d+"):
            celerynb.LocalCluster(processes=10**6, pool=pool, memory_limit=limit)


def test_a_scale_the_memory_cannot_share_leaves_the_cluster_as_it_was(own_cluster):
    cluster, session = own_cluster()
    before = (cluster._worker, cluster.worker_name, cluster.processes, cluster.memory_limit)
    too_many = too_many_for_the_memory()
    with pytest.raises(ValueError, match=f"{too_many} processes would get"):
        cluster.scale(too_many)
    after = (cluster._worker, cluster.worker_name, cluster.processes, cluster.memory_limit)
    assert after == before
    assert session.submit(pause_then_square, (4,)).result(timeout=60) == 16


def test_a_memory_limit_is_refused_for_a_pool_that_cannot_have_one():
    for pool in ("threads", "solo"):  # no pool process starts: nothing would set it
        with pytest.raises(ValueError, match=f"pool='{pool}' has none"):
            celerynb.LocalCluster(pool=pool, memory_limit="1GB")


def allocate(megabytes):
    import numpy as np

    return int(np.ones(megabytes * 2**20 // 8).sum())


def pause_then_square(x):
    import time

    time.sleep(0.1)
    return x * x


def test_a_task_over_the_memory_limit_fails_clearly_and_the_next_job_runs(own_cluster):
    pytest.importorskip("numpy")
    kernel = psutil.Process()
    cluster, session = own_cluster(memory_limit="400MB")
    assert "memory limit 400.0 MB" in cluster._repr_html_()
    kernel_before = kernel.memory_info().rss
    started = time.monotonic()
    greedy = session.submit(allocate, (1600,))  # 4x the limit
    with pytest.raises(celerynb.MemoryLimitError, match="memory limit of 400.0 MB"):
        greedy.result(timeout=60)
    print(f"over the limit: failed after {time.monotonic() - started:.1f}s")
    assert session.submit(allocate, (100,)).result(timeout=60) == 100 * 2**20 // 8
    assert kernel.memory_info().rss - kernel_before < 100 * 2**20  # the kernel untouched


def test_scale_up_and_down_while_a_map_runs_finishes_every_item(own_cluster):
    cluster, _session = own_cluster()
    items = list(range(60))
    sweep = celerynb.map(pause_then_square, items, chunksize=1)  # on the current session
    assert wait_for(lambda: sweep.counts.done >= 2, timeout=60), sweep.counts
    first = cluster._worker
    cluster.scale(3)
    assert cluster.processes == 3
    assert len(psutil.Process(cluster._worker.pid).children()) == 3
    second = cluster._worker
    cluster.scale(1)
    assert sweep.results(timeout=120) == [x * x for x in items]
    assert len(psutil.Process(cluster._worker.pid).children()) == 1
    assert wait_for(lambda: first.poll() is not None and second.poll() is not None, 60)
    # Redis and the worker: a stopped worker is forgotten once its reaper saw it exit.
    assert wait_for(lambda: cluster.pids[1:] == [cluster._worker.pid], 10), cluster.pids
    assert cluster.restarts == 0 and "1 worker, 1 process" in repr(cluster)
    with pytest.raises(ValueError, match="processes must be a positive int"):
        cluster.scale(0)


def test_a_scale_whose_worker_cannot_start_leaves_the_cluster_as_it_was(own_cluster, monkeypatch):
    cluster, session = own_cluster()
    old, name = cluster._worker, cluster.worker_name

    def failing_command(**settings):  # as a worker that cannot start its pool does
        return [sys.executable, "-c", "import sys; sys.exit('OSError: Too many open files')"]

    monkeypatch.setattr(celerynb._cluster, "worker_command", failing_command)
    with pytest.raises(ClusterStartError, match=r"could not scale to 64 processes; still 1:") as e:
        cluster.scale(64, timeout=30)
    monkeypatch.undo()
    assert "Too many open files" in str(e.value), "the worker's own words say why"
    assert (cluster._worker, cluster.worker_name, cluster.processes) == (old, name, 1)
    assert "restarted" not in repr(cluster) and "1 process" in repr(cluster)
    assert session.submit(pause_then_square, (3,)).result(timeout=60) == 9
    assert old.poll() is None and cluster.restarts == 0, "no worker restarted in a loop"
