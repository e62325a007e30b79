"""Where widgets cannot render, a job draws a tqdm text bar and a final line."""

import io
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pexpect
from conftest import wait_for

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
    from celerynb._display import TextRenderer
    from celerynb._schema import BarSnapshot, ProgressSnapshot

    progress = ProgressSnapshot(
        "PROGRESS", (BarSnapshot(4_616_387, 30_000_000, "simulate", rate=11.9e6),)
    )
    job = running_job("simulate", progress)
    out = io.StringIO()
    TextRenderer(job, file=out)
    drawn = out.getvalue()
    assert "4.62M/30.0M" in drawn and "11.9Mit/s" in drawn and "PROGRESS" in drawn, drawn


def running_job(name, progress):
    import threading
    from types import SimpleNamespace

    return SimpleNamespace(
        name=name,
        progress=progress,
        elapsed=0.4,
        state=progress.state,
        done=lambda: False,
        _display_pending=threading.Event,
        _output_since=lambda mark: ([], 0, mark),
    )


def test_the_text_bar_is_labelled_by_the_reported_description_as_the_widget_is():
    """The bar showed the function's name while the widget and the final line showed the
    description the worker's tqdm reports."""
    from celerynb._display import TextRenderer
    from celerynb._schema import BarSnapshot, ProgressSnapshot

    progress = ProgressSnapshot("PROGRESS", (BarSnapshot(3, 10, "texty"),))
    out = io.StringIO()
    TextRenderer(running_job("gated", progress), file=out)
    assert "texty:" in out.getvalue() and "gated" not in out.getvalue(), out.getvalue()


GATED = """
def gated(gate, halfway, n):
    import os, time
    from celerynb import tqdm
    deadline = time.monotonic() + 60
    with tqdm(total=n, desc="texty") as bar:
        for i in range(n):
            if i == n // 2:
                open(halfway, "w").close()
                while not os.path.exists(gate) and time.monotonic() < deadline:
                    time.sleep(0.02)
            time.sleep(0.02)
            bar.update(1)
    return n * 2
"""


def terminal_screen(log, columns, lines):
    """The screen a terminal shows after ``log`` (a VT100 emulator: pyte)."""
    import pyte

    screen = pyte.Screen(columns, lines)
    pyte.Stream(screen).feed(log)
    return [line.rstrip() for line in screen.display]


def test_terminal_ipython_keeps_the_prompt_clear_and_prints_the_final_line_once(cluster, tmp_path):
    """The tester's transcript: the live bar drew over the `In [n]:` prompt while the job ran
    and a finished job's final line came twice. Real IPython, real prompt, in a pseudo-terminal."""
    gate, halfway = tmp_path / "gate", tmp_path / "halfway"
    columns, lines = 120, 60
    env = dict(os.environ, IPYTHONDIR=str(tmp_path / "ipython"), PROMPT_TOOLKIT_NO_CPR="1")
    env["TERM"] = "xterm"
    ipython = Path(sys.executable).with_name("ipython")
    child = pexpect.spawn(
        str(ipython),
        ["--no-banner", "--colors=NoColor", "--HistoryManager.enabled=False"],
        env=env,
        cwd=str(tmp_path),
        dimensions=(lines, columns),
        encoding="utf-8",
        timeout=60,
    )
    log = io.StringIO()
    child.logfile_read = log

    def run(line, prompt):
        child.sendline(line)
        child.expect_exact(f"In [{prompt}]:")

    try:
        child.expect_exact("In [1]:")
        run(
            f"import celerynb; celerynb.connect({cluster.broker_url!r}, "
            f"backend={cluster.backend_url!r}, secret={cluster.secret!r}); exec({GATED!r})",
            2,
        )
        run(f"job = celerynb.submit(gated, {str(gate)!r}, {str(halfway)!r}, 30); job", 3)
        # The job runs on while the prompt waits: the old display redrew its bar over it.
        assert wait_for(halfway.exists, timeout=60)
        child.expect([r"it/s", pexpect.TIMEOUT], timeout=2.5)
        waiting = terminal_screen(log.getvalue(), columns, lines)
        assert "In [3]:" in waiting, "the prompt was drawn over:\n" + "\n".join(waiting)
        gate.touch()
        child.expect_exact("-> 60")
        run('print("after")', 4)
        run("job", 5)  # a finished job shown again: its final line, once
        # A cell that waits for the job it shows: the final line replaces the bar before the
        # cell's own output, which used to be written on the bar's line.
        run(f"again = celerynb.submit(gated, {str(gate)!r}, {str(halfway)!r}, 30)", 6)
        run("again.show(); again.result(timeout=60)", 7)
        # A magic shows the bar, then IPython writes `Out[n]:` for the Job it returns.
        run("%load_ext celerynb", 8)
        gate.unlink()  # it waits halfway until the prompt is back
        run(f"%celery_submit gated({str(gate)!r}, {str(halfway)!r}, 30)", 9)
        gate.touch()
        child.expect_exact("-> 60")
        run('print("end")', 10)
    finally:
        child.close(force=True)

    screen = terminal_screen(log.getvalue(), columns, lines)
    text = "\n".join(screen)
    prompts = [line for line in screen if line.startswith("In [")]
    assert [line.split("]")[0] for line in prompts] == [f"In [{n}" for n in range(1, 11)], text
    assert 'In [3]: print("after")' in screen and "In [4]: job" in screen, text
    assert "Out[6]: 60" in screen, text
    for line in prompts + [line for line in screen if "Out[" in line]:
        assert "texty" not in line and "it/s" not in line, f"bar text on a prompt line:\n{text}"
    finals = [line for line in screen if "texty: SUCCESS 100% 30/30" in line]
    assert len(finals) == 4 and all(line.endswith("-> 60") for line in finals), text


def napping(value, seconds=0.5):
    import time

    time.sleep(seconds)
    return value


def test_result_returns_once_the_final_line_is_out_and_callbacks_need_not_wait(session, capsys):
    """A cell waiting in result() printed its own output before (or into) the final line;
    a done callback that asks for the result must not wait for a display drawn after it."""
    import time

    import celerynb
    from celerynb._display import display_job

    job = celerynb.submit(napping, 7)
    waited = []

    def callback(done):
        started = time.monotonic()
        done.result()
        waited.append(time.monotonic() - started)

    job.add_done_callback(callback)
    display_job(job)
    assert job.result(timeout=30) == 7
    assert "napping: SUCCESS" in capsys.readouterr().err, "written before result() returned"
    assert waited and waited[0] < 0.2, waited
