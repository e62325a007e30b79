"""A broker/backend password and the signing secret never show: every message a real
kernel sends to the frontend (outputs, widgets, errors, logs), the workers' log and the
job store are scanned for them."""

import json

from conftest import wait_for
from kernel_helpers import Kernel
from services import pings, start_redis

import celerynb
from celerynb._cluster import _stop_process, free_port

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
        with celerynb.LocalCluster(workers=1, broker=f"{url}/0", backend=f"{url}/1") as local:
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
    kernel.run("DOWN = os.environ['SCAN_DOWN_URL']\n%celery_connect $DOWN/0")  # unreachable
    kernel.run("celerynb.connect(URL + '/0', backend=URL.replace('redis', 'rediss') + '/1')")
    kernel.run("celerynb.connect(DOWN + '/0')")
    kernel.ok("logging.getLogger('celerynb').warning('%s', celerynb.current_session())")
