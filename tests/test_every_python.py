"""The real-kernel round trip that `.ci/run` makes on every Python the README promises.

A Jupyter kernel of this very Python loads celerynb, starts a LocalCluster (a Redis,
and workers of this Python) and runs a ``%%celery_submit`` cell whose comprehensions
reuse the name of a notebook variable that cannot be pickled: on 3.12+ such names
were taken for notebook variables, and on 3.10 every cell failed (issue 19).
"""

import json
import sys

import pytest
from kernel_helpers import Kernel

pytestmark = [pytest.mark.needs_server, pytest.mark.every_python]

THIS_PYTHON = [sys.prefix, list(sys.version_info[:2])]

CELL = """%%celery_submit -o doubled,squares,parities,total,caught,worker
import sys
doubled = [v * 2 for v in values]
squares = {v: v * v for v in values}
parities = sorted({v % 2 for v in values})
total = sum(v for v in values)
{handler}
worker = [sys.prefix, list(sys.version_info[:2])]
"""

EXCEPT_STAR = """try:
    raise ExceptionGroup("g", [ValueError(1), ValueError(2)])
except* ValueError as group:
    caught = len(group.exceptions)"""

RESULTS = """
import celerynb, json, time
job = celerynb.jobs()[-1]
job.result(timeout=60)
deadline = time.monotonic() + 10  # -o variables are assigned by the job's done callback
while "worker" not in globals() and time.monotonic() < deadline:
    time.sleep(0.05)
print(json.dumps([doubled, squares, parities, total, caught, worker, v.locked()]))
"""


def test_a_celery_submit_cell_round_trips_through_a_kernel_and_workers_of_this_python(tmp_path):
    kernel = Kernel(cwd=str(tmp_path))
    try:
        cell = kernel.ok("import sys, json; print(json.dumps([sys.prefix, sys.version_info[:2]]))")
        assert json.loads(cell.stdout) == THIS_PYTHON, "the kernel runs another Python"
        kernel.ok("%load_ext celerynb")
        kernel.ok("%celery_connect --local -n 1", timeout=120)
        kernel.ok("import threading; v = threading.Lock(); values = [1, 2, 3]")
        handler = EXCEPT_STAR if sys.version_info >= (3, 11) else "caught = 2"
        kernel.ok(CELL.replace("{handler}", handler))
        cell = kernel.ok(RESULTS, timeout=90)
        doubled, squares, parities, total, caught, worker, locked = json.loads(cell.stdout)
        assert doubled == [2, 4, 6] and squares == {"1": 1, "2": 4, "3": 9}
        assert parities == [0, 1] and total == 6 and caught == 2
        assert worker == THIS_PYTHON, "the worker runs another Python"
        assert locked is False  # the notebook's own `v` is the lock, untouched
    finally:
        kernel.close()
