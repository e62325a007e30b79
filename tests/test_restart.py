"""A real kernel restart (jupyter_client) loses nothing: the notebook's jobs are found
again and watched live, from the job store, against real Redis and real workers."""

import json

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

finished = celerynb.submit(sum, [1, 2, 3])
finished.result(timeout=30)
slow = celerynb.submit(gated, GATE, 4)
sweep = celerynb.map(lambda x: gated(GATE, x), range(12), chunksize=4)
print(json.dumps({"finished": finished.id, "slow": slow.id, "sweep": sweep.id}))
"""

AFTER_RESTART = """
import json, celerynb
celerynb.connect()
again = celerynb.jobs(previous=True)
found = {job.id: job for job in again}
print(json.dumps({job.id: [type(job).__name__, job.state, job.done()] for job in again}))
"""


def test_jobs_in_flight_are_found_and_watched_live_after_a_kernel_restart(cluster, tmp_path):
    gate = tmp_path / "gate"
    env = cluster.worker_env()
    env["JPY_SESSION_NAME"] = str(tmp_path / "sweep.ipynb")  # as Jupyter sets it per notebook
    kernel = Kernel(cwd=str(tmp_path), env=env)
    try:
        kernel.ok(f"GATE = {str(gate)!r}")
        ids = json.loads(kernel.ok(BEFORE_RESTART, timeout=60).stdout)

        kernel.manager.restart_kernel(now=False)
        kernel.client.wait_for_ready(timeout=60)
        assert kernel.ok("'celerynb' in globals()").outputs[0]["text/plain"] == "False"

        seen = json.loads(kernel.ok(AFTER_RESTART, timeout=60).stdout)
        assert set(seen) == set(ids.values()), "every job of the notebook is found again"
        assert seen[ids["finished"]] == ["Job", "SUCCESS", True]
        assert seen[ids["slow"]][0] == "Job" and not seen[ids["slow"]][2]
        assert seen[ids["sweep"]][0] == "JobGroup" and not seen[ids["sweep"]][2]

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
