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
import time; time.sleep(0.5)  # let the render thread print the final line
"""


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
