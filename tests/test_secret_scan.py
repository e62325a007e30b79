"""A broker/backend password, the signing secret and the password of a LocalCluster's own
Redis never show: every message a real kernel sends to the frontend (outputs, widgets,
errors, logs), the workers' log (and the cluster's other logs) and the job store are
scanned for them."""

import json
import os
from pathlib import Path

import pytest
from conftest import wait_for
from kernel_helpers import Kernel
from services import pings, start_redis

import celerynb
from celerynb._processes import _stop_process
from celerynb._redis_server import free_port

pytestmark = pytest.mark.needs_server

PASSWORD = "pw-7f3a9c-do-not-show"


def test_the_password_and_the_secret_appear_nowhere(tmp_path):
    import redis

    port = free_port()
    server = start_redis(tmp_path, port, "--requirepass", PASSWORD)
    url = f"redis://:{PASSWORD}@127.0.0.1:{port}"
    client = redis.Redis.from_url(url, socket_connect_timeout=1)
    assert wait_for(lambda: pings(client), timeout=20)
    store = tmp_path / "jobs.sqlite3"
    try:
        # The queue URL connections send to (a cluster on a named broker has its own).
        with celerynb.LocalCluster(
            processes=1, broker=f"{url}/0", backend=f"{url}/1", queues=["celery"]
        ) as local:
            env = local.worker_env()
            env["CELERYNB_STORE"] = str(store)
            env["SCAN_URL"] = url  # cells name it, never spell it: the scan covers output
            env["SCAN_DOWN_URL"] = f"redis://:{PASSWORD}@127.0.0.1:{free_port()}"
            kernel = Kernel(cwd=str(tmp_path), env=env)
            try:
                _exercise(kernel)
                shown = [m for m in kernel.messages if m["msg_type"] != "execute_input"]
                frontend = json.dumps(shown, default=str)
            finally:
                kernel.close()
            worker_log = local.log_path.read_text(errors="replace")
            secret = local.secret
    finally:
        client.close()
        _stop_process(server)
    assert "UsageError" in frontend and "remote failure" in frontend  # errors were scanned
    for where, text in [
        ("frontend", frontend),
        ("worker log", worker_log),
        ("job store", store.read_bytes().decode("latin-1")),
    ]:
        assert PASSWORD not in text, f"the password shows in the {where}"
        assert secret not in text, f"the secret shows in the {where}"


def _exercise(kernel):
    kernel.ok("import os, logging, celerynb\nURL = os.environ['SCAN_URL']")
    kernel.ok("%load_ext celerynb")
    kernel.ok("%celery_connect $URL/0 -b $URL/1")
    _submit_and_inspect(kernel)
    kernel.run("DOWN = os.environ['SCAN_DOWN_URL']\n%celery_connect $DOWN/0")  # unreachable
    kernel.run("celerynb.connect(URL + '/0', backend=URL.replace('redis', 'rediss') + '/1')")
    kernel.run("celerynb.connect(DOWN + '/0')")
    kernel.ok("logging.getLogger('celerynb').warning('%s', celerynb.current_session())")


def _submit_and_inspect(kernel):
    """A job that succeeds, one that fails (its remote traceback shown), and every table."""
    kernel.ok(
        "def fails():\n    raise ValueError('remote failure')\n"
        "ok = celerynb.submit(sum, [1, 2])\nok"
    )
    kernel.ok("bad = celerynb.submit(fails)\nbad")
    kernel.ok("ok.result(timeout=30); print(ok, celerynb.current_session(), ok.async_result)")
    kernel.run("bad.result(timeout=30)")  # the remote traceback, as the user sees it
    kernel.final_text("FAILURE", timeout=30)
    kernel.ok("%celery_jobs")
    kernel.ok("%celery_workers")
    kernel.ok("celerynb.jobs()")


def test_the_password_of_the_local_clusters_own_redis_appears_nowhere(tmp_path):
    store, password_file = tmp_path / "jobs.sqlite3", tmp_path / "password"
    env = dict(os.environ, CELERYNB_STORE=str(store), SCAN_PASSWORD_FILE=str(password_file))
    kernel = Kernel(cwd=str(tmp_path), env=env)
    try:
        kernel.ok("import os, logging, celerynb\n%load_ext celerynb")
        kernel.ok("%celery_connect --local -n 1", timeout=90)
        kernel.ok(
            "cluster = get_ipython().magics_manager.registry['CeleryMagics'].cluster\n"
            # handed to the test through a file of its own, never through the output
            "fd = os.open(os.environ['SCAN_PASSWORD_FILE'], os.O_CREAT | os.O_WRONLY, 0o600)\n"
            "os.write(fd, cluster.redis_password.encode()); os.close(fd)\n"
            "print(cluster, cluster.log_path.parent)\ncluster"
        )
        _submit_and_inspect(kernel)
        kernel.run("celerynb.connect(cluster.broker_url.replace('redis://', 'rediss://'))")
        kernel.ok(
            "logging.getLogger('celerynb').warning('%s', [celerynb.current_session(), cluster])"
        )
        directory = kernel.ok("print(cluster.log_path.parent)").stdout.strip()
        files = {
            name: (Path(directory) / name).read_text(errors="replace")
            for name in ("worker.log", "worker.stderr", "redis.log")
        }
        shown = [m for m in kernel.messages if m["msg_type"] != "execute_input"]
        frontend = json.dumps(shown, default=str)
    finally:
        kernel.close()
    password = password_file.read_text()
    assert len(password) >= 32
    assert "remote failure" in frontend and "redis://:**@127.0.0.1" in frontend  # was scanned
    assert "Connected to redis://:**@127.0.0.1" in files["worker.log"]
    for where, text in [
        ("frontend", frontend),
        ("job store", store.read_bytes().decode("latin-1")),
        *files.items(),
    ]:
        assert password not in text, f"the cluster's Redis password shows in the {where}"
