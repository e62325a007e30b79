"""Where widgets cannot render, a job draws a tqdm text bar and a final line."""

import subprocess
import sys
import textwrap
from pathlib import Path

SCRIPT = """
import celerynb
celerynb.connect({broker!r}, backend={backend!r}, secret={secret!r})

def steps(n):
    import time
    from celerynb import tqdm
    for _ in tqdm(range(n), desc="texty"):
        time.sleep(0.05)
    return n * 2

job = celerynb.submit(steps, 30)
{show}
job.result(timeout=60)
"""  # and exit at once: the final line must still be printed


def script(cluster, show):
    return textwrap.dedent(
        SCRIPT.format(
            broker=cluster.broker_url, backend=cluster.backend_url, secret=cluster.secret, show=show
        )
    )


def run(command):
    return subprocess.run(command, capture_output=True, text=True, timeout=120, check=True)


def test_script_shows_a_text_bar_and_a_final_line(cluster, tmp_path):
    path = Path(tmp_path) / "script.py"
    path.write_text(script(cluster, "job.show()"))
    out = run([sys.executable, str(path)])
    assert "texty" in out.stderr and "it/s" in out.stderr  # tqdm's own meter
    assert "texty: SUCCESS 100% 30/30" in out.stderr and "-> 60" in out.stderr


def test_terminal_ipython_displays_a_text_bar(cluster, tmp_path):
    ipython = Path(sys.executable).with_name("ipython")
    # The code runs as one interactive cell; the bare `job` line is displayed as at a prompt.
    cell = ["--InteractiveShell.ast_node_interactivity=all", "-c", script(cluster, "job")]
    out = run([str(ipython), "--no-banner", "--colors=NoColor", *cell])
    assert "texty: SUCCESS 100% 30/30" in out.stderr and "-> 60" in out.stderr


def test_the_text_bar_draws_the_workers_count_and_rate_not_its_own():
    """A bar opened mid-run measured its own rate from its first update: billions of it/s."""
    import io
    from types import SimpleNamespace

    from celerynb._display import TextRenderer
    from celerynb._schema import BarSnapshot, ProgressSnapshot

    progress = ProgressSnapshot(
        "PROGRESS", (BarSnapshot(4_616_387, 30_000_000, "simulate", rate=11.9e6),)
    )
    job = SimpleNamespace(
        name="simulate", progress=progress, elapsed=0.4, state="PROGRESS", done=lambda: False
    )
    out = io.StringIO()
    TextRenderer(job, file=out)
    drawn = out.getvalue()
    assert "4.62M/30.0M" in drawn and "11.9Mit/s" in drawn and "PROGRESS" in drawn, drawn
