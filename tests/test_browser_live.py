"""Live output in a real browser, in JupyterLab and in Notebook 7: lines a running job
prints appear, escaped, under its widget while it runs. Screenshots in
``$CELERYNB_SCREENSHOTS``. Also what the browser tests of both apps share: opening a
notebook and running its cells (``running_notebook``)."""

from __future__ import annotations

import contextlib
import importlib.util
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import nbformat
import pytest
from lab_browser import BAD_TEXT, CHROMIUM_FLAGS, KERNEL_IDLE_JS, log, serving

# The browser tests' marks (a server, chromium, a long timeout) and helpers.
from test_browser import (  # noqa: F401 - pytestmark applies to this module's tests too
    CHROMIUM,
    MINUTE_MS,
    SHOTS,
    VIEWPORT,
    cell,
    pytestmark,
    run_from_menu,
    sync_api,
)

JOB_CELL = "job = celerynb.submit(talk, 60)"
CELLS = [
    "import celerynb\ncluster = celerynb.LocalCluster(processes=2)\ncelerynb.connect(cluster)",
    "def talk(lines):\n"
    "    import time\n"
    "    for i in range(lines):\n"
    "        print(f'line {i} from the worker <b>not bold</b>')\n"
    "        time.sleep(0.5)\n"
    "    return lines\n\n"
    f"{JOB_CELL}\njob",
]
APPS = [
    "lab",
    pytest.param(
        "notebook",
        marks=pytest.mark.skipif(
            importlib.util.find_spec("notebook") is None,
            reason="no Notebook 7 (pip install -e '.[lab]')",
        ),
    ),
]


# Some cell has started: its prompt shows [*] (running or queued) or a number.
STARTED_JS = """() => [...document.querySelectorAll('.jp-InputPrompt')]
    .some(p => /\\[(\\*|\\d+)\\]/.test(p.textContent || ''))"""


def run_all_cells(page, app: str) -> None:
    """Run > Run All Cells, once the kernel can take them: JupyterLab says so in its status
    bar; Notebook 7 has none, and drops a run asked before its kernel is connected, so
    it is asked again until a cell has started (at most a minute)."""
    if app == "lab":
        page.wait_for_function(KERNEL_IDLE_JS, timeout=MINUTE_MS)
    for _attempt in range(12):
        run_from_menu(page, "Run All Cells")
        try:
            page.wait_for_function(STARTED_JS, timeout=5_000)
            return
        except sync_api.TimeoutError:
            log("no cell started: Run All Cells again")
    raise AssertionError("no cell started after a minute of Run All Cells")


def dropped_js(source: str) -> str:
    """A JS function: the cell holding ``source`` has not run ([ ]) and no cell runs."""
    return f"""() => {{
        const prompts = [...document.querySelectorAll('.jp-CodeCell')].map(c => [
            (c.querySelector('.jp-InputArea') || c).textContent.includes({source!r}),
            (c.querySelector('.jp-InputPrompt') || {{}}).textContent || '']);
        const mine = prompts.find(([found]) => found);
        return !!mine && /\\[\\s*\\]/.test(mine[1]) && !prompts.some(([, p]) => p.includes('*'));
    }}"""


def wait_rerunning_a_dropped_cell(page, source: str, predicate_js: str, timeout_ms: int) -> None:
    """Wait for ``predicate_js``; meanwhile, run the cell holding ``source`` again if its
    run was dropped. Under load, Notebook 7 can lose queued cells when
    its kernel connection is reset (the server's websocket failed once with "'NoneType'
    object has no attribute 'kernel_ws_protocol'"): the first cell ran, the next stayed
    [ ], the kernel idle."""
    deadline = time.monotonic() + timeout_ms / 1000
    while True:
        left_ms = int((deadline - time.monotonic()) * 1000)
        try:
            page.wait_for_function(predicate_js, timeout=max(min(left_ms, 15_000), 1))
            return
        except sync_api.TimeoutError:
            if left_ms <= 15_000:
                raise
        if page.evaluate(dropped_js(source)):
            log("the job cell's run was dropped: Run Selected Cell")
            run_from_menu(page, "Run Selected Cell", source)


def output_html_js(source: str) -> str:
    """A JS function returning the output HTML of the cell holding ``source``."""
    return f"""() => {{
        const cells = [...document.querySelectorAll('.jp-CodeCell')];
        const found = cells.find(c => (c.querySelector('.jp-InputArea') || c).textContent
                                      .includes({source!r}));
        const out = found && found.querySelector('.jp-OutputArea');
        return out ? out.innerHTML : null;
    }}"""


def write_notebook(root: Path, name: str, cells: list[str]) -> None:
    """A notebook of ``cells`` (sources) under ``root``, for the python3 kernel."""
    notebook = nbformat.v4.new_notebook()
    notebook.cells = [nbformat.v4.new_code_cell(source) for source in cells]
    notebook.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3"}
    nbformat.write(notebook, root / name)


@contextlib.contextmanager
def running_notebook(server: Any, name: str, last_cell: str) -> Iterator[Any]:
    """A headless Chromium page on notebook ``name`` of ``server``, once its cells (up to
    the one holding ``last_cell``) are shown and asked to run; closed after."""
    with sync_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_FLAGS)
        try:
            page = browser.new_context(viewport=VIEWPORT).new_page()
            page.on("pageerror", lambda error: log(f"page error: {error}"))
            page.goto(server.url(name), timeout=MINUTE_MS)
            page.locator(".jp-Notebook .jp-CodeCell", has_text=last_cell).wait_for(
                timeout=MINUTE_MS
            )
            run_all_cells(page, server.app)
            yield page
        finally:
            browser.close()


@pytest.mark.parametrize("app", APPS)
def test_streamed_lines_show_under_a_running_job_in_the_browser(tmp_path, app):
    root = tmp_path / "notebooks"
    root.mkdir()
    write_notebook(root, "live.ipynb", CELLS)
    SHOTS.mkdir(parents=True, exist_ok=True)
    with serving(root, app=app) as server, running_notebook(server, "live.ipynb", JOB_CELL) as page:
        try:
            job = output_html_js(JOB_CELL)
            # A line printed on the worker, escaped, under the widget of a job still running.
            wait_rerunning_a_dropped_cell(
                page,
                JOB_CELL,
                f"() => {{ const h = ({job})(); return h && h.includes('line 3 from the worker')"
                " && h.includes('&lt;b&gt;not bold&lt;/b&gt;') && !h.includes('SUCCESS'); }",
                timeout_ms=3 * MINUTE_MS,
            )
            server.note_processes()
            cell(page, JOB_CELL).locator(".jp-OutputArea").first.screenshot(
                path=str(SHOTS / f"live-output-{app}.png")
            )
            assert page.locator(f"text={BAD_TEXT}").count() == 0
            assert "<b>not bold</b>" not in page.evaluate(job)
        except BaseException:
            page.screenshot(path=str(SHOTS / f"live-failure-{app}.png"))
            raise
