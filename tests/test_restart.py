"""A real kernel restart (jupyter_client) loses nothing: the notebook's jobs are found
again and watched live, from the job store, against real Redis and real workers."""

import json
import time

from conftest import wait_for
from kernel_helpers import Kernel

BEFORE_RESTART = """
import json, os, time, celerynb
celerynb.connect()

def gated(gate, n):
    from celerynb import tqdm
    with tqdm(total=2, desc="gated") as bar:
        bar.update(1)
        deadline = time.monotonic() + 60
        while not os.path.exists(gate) and time.monotonic() < deadline:
            time.sleep(0.02)
        bar.update(1)
    return n * 10

def square(x):
    return x * x

sent = time.time()
finished = celerynb.submit(sum, [1, 2, 3])
finished.result(timeout=30)
slow = celerynb.submit(gated, GATE, 4)
sweep = celerynb.map(lambda x: gated(GATE, x), range(12), chunksize=4)
print(json.dumps({"finished": finished.id, "slow": slow.id, "sweep": sweep.id, "sent": sent}))
"""

AFTER_RESTART = """
import json, time, celerynb
celerynb.connect()
attached = celerynb.attach(SLOW)  # by id, before the notebook's jobs are listed again
again = celerynb.jobs(previous=True)
found = {job.id: job for job in again}
since = {job.id: time.time() - SENT for job in again}  # at least, for each of them
print(json.dumps({
    job.id: [type(job).__name__, job.state, job.done(), job.name, job.elapsed, since[job.id]]
    for job in again
}))
"""


def test_jobs_in_flight_are_found_and_watched_live_after_a_kernel_restart(cluster, tmp_path):
    gate = tmp_path / "gate"
    env = cluster.worker_env()
    env["JPY_SESSION_NAME"] = str(tmp_path / "sweep.ipynb")  # as Jupyter sets it per notebook
    kernel = Kernel(cwd=str(tmp_path), env=env)
    try:
        kernel.ok(f"GATE = {str(gate)!r}")
        ids = json.loads(kernel.ok(BEFORE_RESTART, timeout=60).stdout)
        sent = ids.pop("sent")

        kernel.manager.restart_kernel(now=False)
        kernel.client.wait_for_ready(timeout=60)
        assert kernel.ok("'celerynb' in globals()").outputs[0]["text/plain"] == "False"

        # The restart takes seconds; at least three pass between submitting and re-attaching.
        assert wait_for(lambda: time.time() - sent > 3, timeout=10)
        kernel.ok(f"SLOW = {ids['slow']!r}; SENT = {sent!r}")
        seen = json.loads(kernel.ok(AFTER_RESTART, timeout=60).stdout)
        assert set(seen) == set(ids.values()), "every job of the notebook is found again"
        finished, slow, sweep = (seen[ids[key]] for key in ("finished", "slow", "sweep"))
        assert finished[:4] == ["Job", "SUCCESS", True, "sum"]
        assert slow[:4] == ["Job", "PROGRESS", False, "gated"], "its stored name, not its id"
        assert sweep[:4] == ["JobGroup", "PROGRESS", False, "<lambda>"]
        # Elapsed goes on from the submission (wall clock), not from the re-attach; the job
        # that finished before the restart keeps the time it took.
        for running in (slow, sweep):
            elapsed, since_sent = running[4:]
            assert since_sent - 1 <= elapsed <= since_sent + 1, running
        assert finished[4] < 2.0 and finished[5] > 3, finished
        assert kernel.ok("print(attached is found[SLOW])").stdout == "True\n"

        # Shown again, the in-flight job's display turns final by itself once the gate opens.
        kernel.ok(f"found[{ids['slow']!r}]")
        gate.touch()
        final = kernel.final_text("-> 40", timeout=60)
        assert "gated" in final and "SUCCESS" in final, final

        cell = kernel.ok(
            f"print(found[{ids['finished']!r}].result(timeout=10), "
            f"found[{ids['sweep']!r}].results(timeout=60))",
            timeout=90,
        )
        assert cell.stdout == f"6 {[x * 10 for x in range(12)]}\n"
        # A second look does not duplicate what this kernel already watches.
        cell = kernel.ok("print(len(celerynb.jobs(previous=True)), len(celerynb.jobs()))")
        assert cell.stdout == "3 3\n"
        kernel.ok("%load_ext celerynb")
        listed = kernel.ok("%celery_jobs --previous").text
        assert all(job_id in listed for job_id in ids.values()), listed
    finally:
        gate.touch()
        kernel.close()
