"""The dashboard in a real JupyterLab and in Notebook 7, in a real (headless) Chromium: it
renders (no "Error displaying widget"), shows the worker and a queue's depth, updates,
opens as a view of its own in JupyterLab ("Create New View for Cell Output", as the README
says to dock it), and its dropdown and Cancel button cancel a running job. Screenshots
in ``$CELERYNB_SCREENSHOTS`` (default ``tests/artifacts/browser``)."""

from __future__ import annotations

import re

import pytest
from lab_browser import BAD_TEXT, log, serving

# The browser tests' marks (a server, chromium, a long timeout) and helpers.
from test_browser import (  # noqa: F401 - pytestmark applies to this module's tests too
    MINUTE_MS,
    SHOTS,
    cell,
    pytestmark,
    sync_api,
)
from test_browser_live import APPS, running_notebook, write_notebook

QUEUE = "nobody-consumes-this"
CELLS = [
    "import celerynb\ncluster = celerynb.LocalCluster(processes=2)\ncelerynb.connect(cluster)",
    "def slow(steps):\n"
    "    import time\n"
    "    from celerynb import tqdm\n"
    "    for _ in tqdm(range(steps), desc='slow'):\n"
    "        time.sleep(0.2)\n"
    "    return steps\n\n"
    "def waits():\n"
    "    return 1\n\n"
    "quick = [celerynb.submit(slow, 5) for _ in range(3)]\n"
    "job = celerynb.submit(slow, 1000)\n"
    f"stuck = celerynb.apply_async(waits, queue={QUEUE!r})",
    "celerynb.dashboard()",
]
DASHBOARD_CELL = "celerynb.dashboard()"


def dashboard_js(scope: str) -> str:
    """A JS function returning the dashboard's HTML text under ``scope`` (a selector)."""
    return f"""() => {{
        const el = document.querySelector({scope!r} + ' .celerynb-dashboard .widget-html-content');
        return el ? el.innerHTML : null;
    }}"""


@pytest.fixture(params=APPS)
def lab(tmp_path, request):
    root = tmp_path / "notebooks"
    root.mkdir()
    write_notebook(root, "dashboard.ipynb", CELLS)
    with serving(root, app=request.param) as server:
        yield server


def test_the_dashboard_renders_updates_docks_and_cancels_in_jupyterlab_and_notebook_7(lab):
    SHOTS.mkdir(parents=True, exist_ok=True)
    with running_notebook(lab, "dashboard.ipynb", DASHBOARD_CELL) as page:
        try:
            read = dashboard_js(".jp-Notebook")

            def shown(predicate_js: str, timeout_ms: int = 2 * MINUTE_MS) -> str:
                page.wait_for_function(
                    f"() => {{ const h = ({read})(); return h && ({predicate_js}); }}",
                    timeout=timeout_ms,
                )
                return page.evaluate(read)

            # The worker with its pool and memory, the queue nobody consumes with 1 waiting.
            html = shown("h.includes('prefork') && h.includes('MB (')")
            lab.note_processes()
            stranded = f"/{QUEUE}<\\/td><td[^>]*>1</.test(h)"
            html = shown(f"h.includes('celerynb-queue-stranded') && {stranded}")
            html = shown("h.includes('<rect class=\"run\"') && h.includes('PROGRESS')")
            shown(f"h !== {html!r}", 30_000)  # it updates by itself
            dashboard = cell(page, DASHBOARD_CELL)
            shot = "dashboard.png" if lab.app == "lab" else f"dashboard-{lab.app}.png"
            dashboard.locator(".jp-OutputArea-output").first.screenshot(path=str(SHOTS / shot))
            if lab.app == "lab":  # Notebook 7 has no side area to dock it in
                dock(page)
            # Cancel the long job: choose it in the dropdown, click Cancel job.
            select = dashboard.locator(".celerynb-dashboard select").first
            running = re.search(  # the table's row of the slow job in PROGRESS: its id
                r"<tr class=.celerynb-job-row.><td>slow</td><td><code>(\w+)</code>"
                r"(?:(?!</tr>).)*PROGRESS",
                html,
            )
            assert running, html
            for _attempt in range(5):  # a redraw may replace the options between read and pick
                label = next(
                    text
                    for text in select.locator("option").all_inner_texts()
                    if text.startswith("slow") and running.group(1) in text
                )
                try:
                    select.select_option(label=label, timeout=5_000)
                    break
                except sync_api.TimeoutError:
                    log(f"option {label!r} went away: reading the options again")
            dashboard.locator(".celerynb-dashboard button", has_text="Cancel job").click()
            job_id = label.split("·")[1].strip()  # the page shows spaces as no-break spaces
            html = shown(f"h.includes('cancel sent for job ' + {job_id!r})", 30_000)
            html = shown(
                f"[...h.matchAll(/<tr class=.celerynb-job-row.*?<\\/tr>/g)].some("
                f"m => m[0].includes({job_id!r}) && m[0].includes('>REVOKED<'))",
                MINUTE_MS,
            )
            assert page.locator(f"text={BAD_TEXT}").count() == 0
        except BaseException:
            page.screenshot(path=str(SHOTS / f"dashboard-failure-{lab.app}.png"))
            log(f"the dashboard showed: {page.evaluate(dashboard_js('.jp-Notebook'))}")
            raise


def dock(page):
    """Docked as the README says (JupyterLab): a view of its own, the same live widget."""
    cell(page, DASHBOARD_CELL).locator(".jp-OutputArea-output").first.click(button="right")
    # "Create New View for Cell Output" (JupyterLab 4), "... for Output" before it.
    item = page.locator(".lm-Menu-item", has_text="Create New View for").first
    item.wait_for(state="visible", timeout=10_000)
    item.click()
    linked = dashboard_js(".jp-LinkedOutputView")
    page.wait_for_function(
        f"() => {{ const h = ({linked})(); return h && h.includes('prefork'); }}",
        timeout=MINUTE_MS,
    )
    before = page.evaluate(linked)
    page.wait_for_function(
        f"() => {{ const h = ({linked})(); return h && h !== {before!r}; }}",
        timeout=30_000,
    )
