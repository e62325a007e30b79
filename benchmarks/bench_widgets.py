"""What live job widgets cost: the lighter job widget against the one before it.

Two contenders, side by side in one run, each a real Jupyter kernel (jupyter_client)
with its own ``LocalCluster(processes=2)``:

- "before": celerynb as of the commit before the lighter widget (``BEFORE``, exported
  with ``git archive`` into a temporary directory, the kernel's directory and first on
  its ``PYTHONPATH``, so its workers run it too): 22 comm models a job widget (8
  widgets, their layouts and styles), one message per changed field;
- "after": this checkout: one HTML view and a Cancel button (3 models a job), one
  message per redraw; with ``celerynb.dashboard()`` open too, where this checkout has it.

In each kernel one cell displays ``JOBS`` jobs of ``steps(n)`` (a ``celerynb.tqdm``
loop of n short pauses) and returns; a second cell waits for them all. Counted on the
kernel's iopub channel, as a frontend receives it, from the first cell until two
seconds after the last job is done: ``comm_open`` (widget models), ``comm_msg``
(updates) and every message with its bytes; the kernel process's CPU seconds
(psutil; its worker processes apart); the wall time. The run goes in rounds (2; 1
with ``--quick``), the contenders in another order each round. Goal (issue 17): at
least 5x fewer comm models and comm messages with the lighter widget.

Needs git (for the "before" checkout) and psutil. Run from the repository root:

    .venv/bin/python benchmarks/bench_widgets.py            # about 3 min
    .venv/bin/python benchmarks/bench_widgets.py --quick    # about 1 min: 60 jobs, 1 round
"""

from __future__ import annotations

import argparse
import json
import os
import queue
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psutil
from _report import print_table
from jupyter_client.manager import start_new_kernel

ROOT = Path(__file__).resolve().parent.parent
BEFORE = "6a8c15a^"  # the commit before "A lighter job widget"
TIMEOUT = 300.0

SETUP = """
import celerynb, os
cluster = celerynb.LocalCluster(processes=2)
celerynb.connect(cluster)
print(os.getpid(), os.path.dirname(celerynb.__file__))
"""

JOBS_CELL = """
def steps(n):
    import time
    from celerynb import tqdm
    for _ in tqdm(range(n), desc="steps"):
        time.sleep(0.004)
    return n

{dashboard}
jobs = [celerynb.submit(steps, 50) for _ in range({count})]
for job in jobs:
    display(job)
"""

WAIT_CELL = "print(sum(job.result(timeout=300) for job in jobs))"


@dataclass
class Run:
    """What one contender's kernel sent in one run."""

    models: int = 0
    updates: int = 0
    messages: int = 0
    nbytes: int = 0
    cpu: float = 0.0
    wall: float = 0.0


@dataclass
class Contender:
    name: str
    path: Path
    dashboard: bool
    runs: list[Run] = field(default_factory=list)


class KernelRun:
    """One kernel with ``path`` first on its Python path, and what its iopub sent."""

    def __init__(self, path: Path) -> None:
        env = dict(os.environ, PYTHONPATH=str(path))
        # cwd too: LocalCluster puts the kernel's directory first on its workers' path
        self.manager, self.client = start_new_kernel(kernel_name="python3", env=env, cwd=str(path))
        self.counts = Run()

    def execute(self, code: str) -> str:
        """Run ``code``; its stdout, once the kernel is idle again. Fails on an error."""
        msg_id = self.client.execute(code)
        out = []
        deadline = time.monotonic() + TIMEOUT
        while time.monotonic() < deadline:
            message = self._next(deadline - time.monotonic())
            if message is None or message["parent_header"].get("msg_id") != msg_id:
                continue
            kind, content = message["msg_type"], message["content"]
            if kind == "stream":
                out.append(content["text"])
            elif kind == "error":
                raise RuntimeError("\n".join(content["traceback"]))
            elif kind == "status" and content["execution_state"] == "idle":
                return "".join(out)
        raise TimeoutError(f"no idle kernel within {TIMEOUT} s")

    def drain(self, seconds: float) -> None:
        """Count what the kernel sends for ``seconds``."""
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            self._next(deadline - time.monotonic())

    def _next(self, timeout: float) -> dict[str, Any] | None:
        try:
            message = self.client.get_iopub_msg(timeout=max(timeout, 0.01))
        except queue.Empty:
            return None
        kind = message["msg_type"]
        self.counts.messages += 1
        self.counts.nbytes += len(json.dumps(message["content"], default=str))
        self.counts.models += kind == "comm_open"
        self.counts.updates += kind == "comm_msg"
        return message

    def close(self) -> None:
        try:
            self.execute("cluster.close()")
        finally:
            self.client.stop_channels()
            self.manager.shutdown_kernel(now=False)


def measure(contender: Contender, jobs: int) -> Run:
    kernel = KernelRun(contender.path)
    try:
        pid, where = kernel.execute(SETUP).split()
        if Path(where).resolve() != (contender.path / "celerynb").resolve():
            raise RuntimeError(f"{contender.name}: the kernel imported celerynb from {where}")
        process = psutil.Process(int(pid))
        kernel.counts = Run()
        cpu = sum(process.cpu_times()[:2])
        started = time.monotonic()
        dashboard = "display(celerynb.dashboard())" if contender.dashboard else ""
        kernel.execute(JOBS_CELL.format(count=jobs, dashboard=dashboard))
        kernel.execute(WAIT_CELL)
        kernel.drain(2.0)
        run = kernel.counts
        run.wall = time.monotonic() - started
        run.cpu = sum(process.cpu_times()[:2]) - cpu
        return run
    finally:
        kernel.close()


def before_checkout(directory: Path) -> Path:
    """celerynb as of ``BEFORE``, exported into ``directory``."""
    archive = subprocess.run(
        ["git", "-C", str(ROOT), "archive", BEFORE, "celerynb"], check=True, capture_output=True
    ).stdout
    subprocess.run(["tar", "-x", "-C", str(directory)], input=archive, check=True)
    return directory


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="60 jobs, 1 round")
    args = parser.parse_args()
    jobs, rounds = (60, 1) if args.quick else (200, 2)
    with tempfile.TemporaryDirectory(prefix="bench-widgets-") as temporary:
        import celerynb

        contenders = [
            Contender("before: 8 widgets a job", before_checkout(Path(temporary)), False),
            Contender("after: one HTML view + Cancel", ROOT, hasattr(celerynb, "dashboard")),
        ]
        if contenders[1].dashboard:
            contenders[1].name += ", dashboard open"
        for number in range(rounds):
            for contender in contenders[:: 1 if number % 2 == 0 else -1]:
                print(f"{contender.name}: {jobs} jobs ...", flush=True)
                contender.runs.append(measure(contender, jobs))
    print(
        f"\ncelerynb {sys.version.split()[0]}, {os.cpu_count()} CPUs, {jobs} job widgets, "
        f"{rounds} round(s), medians; load average {os.getloadavg()[0]:.1f}\n"
    )
    rows = []
    for contender in contenders:

        def median(attribute: str, c: Contender = contender) -> float:
            return statistics.median(getattr(r, attribute) for r in c.runs)

        rows.append(
            (
                contender.name,
                f"{median('models') / jobs:.1f}",
                f"{median('models'):,.0f}",
                f"{median('updates'):,.0f}",
                f"{median('messages') / median('wall'):,.0f}",
                f"{median('nbytes') / median('wall') / 1024:,.0f}",
                f"{median('cpu'):.1f}",
                f"{median('wall'):.1f}",
            )
        )
    print_table(
        (
            "widget",
            "models/job",
            "comm_open",
            "comm_msg",
            "iopub msg/s",
            "iopub KiB/s",
            "kernel CPU s",
            "wall s",
        ),
        rows,
    )
    before, after = contenders

    def ratio(attribute: str) -> float:
        old = statistics.median(getattr(r, attribute) for r in before.runs)
        new = statistics.median(getattr(r, attribute) for r in after.runs)
        return old / new if new else float("inf")

    models, updates = ratio("models"), ratio("updates")
    print(
        f"\nbefore/after: comm models {models:.1f}x, comm messages {updates:.1f}x, "
        f"all iopub messages {ratio('messages'):.1f}x, bytes {ratio('nbytes'):.1f}x, "
        f"kernel CPU {ratio('cpu'):.1f}x; goal >= 5x fewer models and messages: "
        f"{'met' if models >= 5 and updates >= 5 else 'NOT met'}"
    )


if __name__ == "__main__":
    main()
