"""joblib's Parallel in a real kernel: the call shows one bar under its cell, and the bar
moves while the call blocks that cell (the frontend receives its redraws)."""

import re

import pytest
from conftest import celery_user_env
from kernel_helpers import Kernel

pytestmark = pytest.mark.needs_server

PARALLEL_CELL = """
import joblib
from joblib import Parallel, delayed

def nap(i):
    import time

    time.sleep(0.1)
    return i

with joblib.parallel_config(backend="celerynb"):
    out = Parallel(n_jobs=-1, batch_size=1)([delayed(nap)(i) for i in range(30)])
print("sum", sum(out))
"""


def bar_widths(message):
    value = str(message["content"].get("data", {}).get("state", {}).get("value", ""))
    found = re.findall(r"class='progress-bar' style='width:([\d.]+)%", value)
    return [float(width) for width in found]


def test_a_parallel_call_shows_one_bar_that_moves_while_its_cell_runs(cluster, tmp_path):
    kernel = Kernel(cwd=str(tmp_path), env=celery_user_env(cluster))
    try:
        kernel.ok("%load_ext celerynb")
        kernel.ok("%celery_connect")
        before = len(kernel.messages)
        cell = kernel.ok(PARALLEL_CELL, timeout=120)
        assert "sum 435" in cell.stdout
        assert len(cell.widgets) == 1, cell.outputs  # one bar for the whole call

        during = kernel.messages[before:]  # until the cell's idle, whichever thread sent them
        widths = [w for m in during if m["msg_type"] == "comm_msg" for w in bar_widths(m)]
        moving = {w for w in widths if 0 < w < 100}
        assert len(moving) >= 3, f"the bar did not move while the call ran: {widths}"
        assert widths == sorted(widths), widths

        final = kernel.final_text("SUCCESS")
        assert final.startswith("nap: SUCCESS 100% 30/30"), final
    finally:
        kernel.close()
