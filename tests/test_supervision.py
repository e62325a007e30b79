"""LocalCluster supervises its worker: a dead worker is replaced (within a bound),
restart() gives fresh processes, logs() shows the worker's log, and the cluster has
an HTML card in the notebook."""

import os
import signal
import time

import psutil
import pytest
from conftest import FakeClock, wait_for

import celerynb
from celerynb._supervision import LogText, RestartBudget, how_it_ended, last_lines


def test_the_restart_budget_gives_up_on_a_worker_that_dies_at_start_or_too_often():
    clock = FakeClock()
    at_start = RestartBudget(early_limit=3, limit=10, window=60.0)
    assert all(at_start.allows_restart(clock.now + t, was_ready=False) for t in (0, 1, 2))
    assert not at_start.allows_restart(clock.now + 3, was_ready=False)  # the 4th in a row
    assert at_start.why_not("exited with code 1").startswith(
        "its worker exited with code 1 before it was ready 4 times in a row"
    )
    killed = RestartBudget(early_limit=3, limit=10, window=60.0)
    assert all(killed.allows_restart(clock.now + t, was_ready=True) for t in range(10))
    assert not killed.allows_restart(clock.now + 10, was_ready=True)  # 11 within 60 s
    assert killed.why_not("killed by SIGKILL").startswith(
        "its worker died 11 times within 60 s (last: killed by SIGKILL)"
    )
    spaced = RestartBudget(early_limit=3, limit=3, window=60.0)
    assert all(spaced.allows_restart(clock.now + t, True) for t in (0, 30, 61, 91, 122))
    mixed = RestartBudget(early_limit=2, limit=10, window=60.0)
    steps = [(0, False), (1, False), (2, True), (3, False), (4, False)]  # ready resets it
    assert all(mixed.allows_restart(clock.now + t, ready) for t, ready in steps)


def test_a_process_end_is_said_in_words(tmp_path):
    assert how_it_ended(-signal.SIGKILL) == "killed by SIGKILL"
    assert how_it_ended(3) == "exited with code 3"
    log = tmp_path / "worker.log"
    log.write_text("".join(f"line {i}\n" for i in range(500)))
    assert last_lines(log, 3) == ["line 497", "line 498", "line 499"]
    assert last_lines(tmp_path / "missing.log", 3) == [] and last_lines(log, 0) == []
    assert str(LogText("a\nb")) == "a\nb"


def steps(n, pause):
    from celerynb import tqdm

    for _ in tqdm(range(n), desc="steps"):
        time.sleep(pause)
    return n


def version_of(module):
    import importlib

    return importlib.import_module(module).VERSION


@pytest.fixture
def cluster_here(own_cluster, monkeypatch, tmp_path):
    """A cluster whose workers start in ``tmp_path`` (their first import path)."""
    monkeypatch.chdir(tmp_path)
    return own_cluster()


def test_a_killed_worker_is_replaced_and_the_next_job_runs(cluster_here):
    cluster, session = cluster_here
    running = session.submit(steps, (4000, 0.05))
    assert wait_for(lambda: running.state == "PROGRESS", timeout=60), running.state
    first_name, worker = cluster.worker_name, cluster._worker
    killed_at = time.monotonic()
    os.kill(worker.pid, signal.SIGKILL)  # the main process only, as the OOM killer does
    assert wait_for(lambda: cluster.worker_name != first_name, timeout=10)
    after = session.submit(sum, ([1, 2, 3],))
    assert after.result(timeout=15) == 6
    print(f"worker killed: the next job done after {time.monotonic() - killed_at:.1f}s")
    assert wait_for(running.done, timeout=15), running.state
    assert running.state == celerynb.LOST
    with pytest.raises(celerynb.WorkerLostError, match=f"worker {first_name} stopped"):
        running.result(timeout=1)
    assert cluster.restarts == 1 and "restarted 1x" in repr(cluster)
    assert len(cluster.pids) == 2 and worker.pid not in cluster.pids
    table = celerynb.workers()  # %celery_workers: the restart and the memory in use
    assert table.note.startswith("LocalCluster: 1 worker, 1 process, restarted 1x; memory limit")
    assert [w.name for w in table] == [cluster.worker_name]
    assert 10 * 2**20 < table.memory[cluster.worker_name] < 2**30


def test_a_worker_that_dies_at_start_is_given_up_on_with_a_reason(cluster_here, tmp_path):
    cluster, session = cluster_here
    shadow = tmp_path / "celery"  # found first on the workers' path: they die at import
    shadow.mkdir()
    (shadow / "__init__.py").write_text("")
    (shadow / "__main__.py").write_text("raise SystemExit('a broken celery in the way')\n")
    os.kill(cluster._worker.pid, signal.SIGKILL)
    assert wait_for(lambda: cluster.gave_up is not None, timeout=60), repr(cluster)
    assert "exited with code 1 before it was ready 4 times in a row" in cluster.gave_up
    assert "\n" not in cluster.gave_up and "no worker:" in repr(cluster)
    assert "a broken celery in the way" in cluster.logs()
    (shadow / "__main__.py").unlink()  # fixed: restart() tries again
    (shadow / "__init__.py").unlink()
    shadow.rmdir()
    cluster.restart()
    assert cluster.gave_up is None
    assert session.submit(sum, ([1, 2],)).result(timeout=30) == 3


def test_restart_gives_fresh_processes_that_import_an_edited_module(cluster_here, tmp_path):
    cluster, session = cluster_here
    (tmp_path / "settings_module.py").write_text("VERSION = 1\n")
    assert session.submit(version_of, ("settings_module",)).result(timeout=30) == 1
    (tmp_path / "settings_module.py").write_text("VERSION = 2\n")
    pool_before = {c.pid for c in psutil.Process(cluster._worker.pid).children()}
    cluster.restart()
    assert session.submit(version_of, ("settings_module",)).result(timeout=30) == 2
    pool_after = {c.pid for c in psutil.Process(cluster._worker.pid).children()}
    assert pool_before and not pool_before & pool_after
    assert cluster.restarts == 0  # a restart asked for is not a death
    lines = cluster.logs(n=500).splitlines()
    assert len(lines) <= 500 and any("ready." in line for line in lines)


def test_a_job_running_when_the_cluster_restarts_ends_lost_at_once_saying_why(cluster_here, caplog):
    cluster, session = cluster_here
    running = session.submit(steps, (4000, 0.05))
    assert wait_for(lambda: running.state == "PROGRESS", timeout=60), running.state
    name = cluster.worker_name
    cluster.restart()
    # Told by the cluster, not after heartbeats go missing (6 s and more).
    assert wait_for(running.done, timeout=3), running.state
    assert running.state == celerynb.LOST
    with pytest.raises(celerynb.WorkerLostError, match=f"worker {name} stopped: cluster.restart"):
        running.result(timeout=0)
    assert running.note is None, "nothing ignored: Celery's unsigned RETRY is not written"
    assert "ignored" not in caplog.text


def test_the_cluster_card_masks_the_password_and_escapes(cluster_here):
    cluster, _session = cluster_here
    card = cluster._repr_html_()
    assert cluster.redis_password not in card and cluster.redis_password not in repr(cluster)
    assert "redis://:**@127.0.0.1" in card and "1 worker, 1 process" in card
    assert "cluster.logs()" in card
    cluster.gave_up = "<script>alert(1)</script>"
    assert "<script>" not in cluster._repr_html_()
    cluster.gave_up = None


def test_the_worker_log_tells_a_shipped_calls_success_in_a_short_line(cluster_here):
    cluster, session = cluster_here
    assert session.submit(sum, ([1, 2, 3],)).result(timeout=30) == 6
    assert wait_for(lambda: "succeeded in" in cluster.logs(), timeout=10)
    (line,) = [line for line in cluster.logs().splitlines() if "succeeded in" in line]
    assert len(line) < 250, f"the signed frame in the log: {line[:300]}"


def test_the_worker_apps_tasks_store_no_false_retry_on_a_cold_shutdown():
    """Every task of celerynb.worker's app (registered ones too, not only shipped calls)
    stores no RETRY when a cold shutdown cancels it after its message was acknowledged:
    it would say the task runs again, and it does not."""
    from celerynb import worker
    from celerynb._outcomes import ColdShutdownRequest, ShippedRequest

    assert issubclass(worker.app.Task.Request, ColdShutdownRequest)
    assert issubclass(ShippedRequest, ColdShutdownRequest)
