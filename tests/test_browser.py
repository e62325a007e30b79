"""The quickstart notebook in a real JupyterLab, in a real (headless) Chromium.

What a user sees and kernel-level tests cannot: the widget renders (no "Error displaying
widget"), its bar moves while other cells run, it ends at 100 % / SUCCESS, a failed job
shows its traceback in the widget, and the Cancel button cancels. Screenshots are saved in
``$CELERYNB_SCREENSHOTS`` (default ``tests/artifacts/browser``); the README's come from here.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import time
from pathlib import Path

import pytest
from lab_browser import (
    BAD_TEXT,
    CELLS_RAN_JS,
    CHROMIUM_FLAGS,
    KERNEL_IDLE_JS,
    find_chromium,
    log,
    read_widget_js,
    record_timeline_js,
    serving,
)

sync_api = pytest.importorskip("playwright.sync_api", reason="needs playwright (dev extra)")
CHROMIUM = find_chromium()
pytestmark = [
    pytest.mark.needs_server,
    pytest.mark.skipif(CHROMIUM is None, reason="no chromium (apt install chromium)"),
    pytest.mark.timeout(600),
]

REPO = Path(__file__).resolve().parent.parent
NOTEBOOK = REPO / "notebooks" / "01-quickstart.ipynb"
SHOTS = Path(os.environ.get("CELERYNB_SCREENSHOTS", REPO / "tests" / "artifacts" / "browser"))
VIEWPORT = {"width": 1280, "height": 900}

# Source snippets naming the notebook's cells.
JOB_CELL = "job = celerynb.submit(simulate"
BROKEN_CELL = "broken = celerynb.submit(fragile"
ENDLESS_CELL = "endless = celerynb.submit(forever)"
CANCEL_CELL = "endless.cancel()"

MINUTE_MS = 60_000


@pytest.fixture
def lab(tmp_path):
    root = tmp_path / "notebooks"
    root.mkdir()
    shutil.copy(NOTEBOOK, root / NOTEBOOK.name)
    with serving(root) as server:
        yield server


@pytest.fixture
def page(lab):
    SHOTS.mkdir(parents=True, exist_ok=True)
    with sync_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_FLAGS)
        try:
            context = browser.new_context(viewport=VIEWPORT)
            tab = context.new_page()
            tab.on("pageerror", lambda error: log(f"page error: {error}"))
            tab.goto(lab.url(NOTEBOOK.name), timeout=MINUTE_MS)
            tab.locator(".jp-NotebookPanel .jp-Cell").first.wait_for(timeout=MINUTE_MS)
            tab.wait_for_function(KERNEL_IDLE_JS, timeout=MINUTE_MS)
            yield tab
        except BaseException:
            with_failure = SHOTS / "failure.png"
            if "tab" in locals():
                tab.screenshot(path=str(with_failure))
                log(f"screenshot of the page when it failed: {with_failure}")
            raise
        finally:
            browser.close()


def cell(page, source):
    return page.locator(".jp-CodeCell", has_text=source).first


def run_from_menu(page, item_label, selected_source=None):
    """Select the cell holding ``selected_source`` (if given) and click Run > ``item_label``."""
    if selected_source is not None:
        cell(page, selected_source).locator(".jp-InputPrompt").click()
    page.locator(".lm-MenuBar-itemLabel", has_text="Run").first.click()
    item = page.locator(".lm-Menu-item", has_text=item_label).first
    item.wait_for(state="visible", timeout=10_000)
    item.click()


def wait_widget(page, source, predicate_js, timeout_ms):
    """Wait until the widget of the cell holding ``source`` satisfies ``predicate_js``
    (a JS expression over ``w``); return what it shows then."""
    read = read_widget_js(source)
    page.wait_for_function(f"() => {{ const w = ({read})(); return w && ({predicate_js}); }}",
                           timeout=timeout_ms)  # fmt: skip
    return page.evaluate(read)


def test_the_quickstart_runs_live_in_jupyterlab(lab, page):
    page.evaluate(record_timeline_js(JOB_CELL))
    started = time.monotonic()
    # Everything above the cell that cancels in code: the Cancel button is the test's to click.
    run_from_menu(page, "Run All Above Selected Cell", selected_source=CANCEL_CELL)

    running = wait_widget(page, JOB_CELL, "w.state === 'PROGRESS' && w.width >= 10", 2 * MINUTE_MS)
    lab.note_processes()  # the kernel's Redis and workers are up by now
    cell(page, JOB_CELL).screenshot(path=str(SHOTS / "widget-running.png"))
    log(f"running after {time.monotonic() - started:.1f}s: {running}")

    done = wait_widget(page, JOB_CELL, "['SUCCESS', 'FAILURE', 'REVOKED'].includes(w.state)",
                       5 * MINUTE_MS)  # fmt: skip
    assert done["state"] == "SUCCESS" and done["width"] == 100, done
    # The badge, the bar and the stats are widget models of their own, updated in that
    # order: the page may show the final badge a moment before the final stats.
    with contextlib.suppress(sync_api.TimeoutError):
        done = wait_widget(page, JOB_CELL, "w.stats.includes('20.0M/20.0M')", 15_000)
    assert "20.0M/20.0M" in done["stats"], done

    timeline = page.evaluate("() => window.__celerynbTimeline")
    for entry in timeline:
        log(f"  +{entry['t']:7.0f} ms {entry['state']:<9} {entry['width']:5.1f}% "
            f"others running: {entry['othersRunning']}  {entry['stats']}")  # fmt: skip
    moved_meanwhile = {e["width"] for e in timeline if e["othersRunning"] and 0 < e["width"] < 100}
    assert len(moved_meanwhile) >= 2, f"the bar did not move while other cells ran: {timeline}"

    broken = wait_widget(page, BROKEN_CELL, "w.state === 'FAILURE' && w.traceback", MINUTE_MS)
    assert "ZeroDivisionError" in broken["traceback"], broken
    assert "return 1 / x" in broken["traceback"], broken  # the notebook's own source line

    wait_widget(page, ENDLESS_CELL, "w.state === 'PROGRESS' && w.cancelShown", MINUTE_MS)
    page.wait_for_function(CELLS_RAN_JS, arg=CANCEL_CELL, timeout=MINUTE_MS)
    cell(page, ENDLESS_CELL).locator(".celerynb-job button", has_text="Cancel").click()
    # The badge and the button's layout are separate widget models: wait for both.
    wait_widget(page, ENDLESS_CELL, "w.state === 'REVOKED' && !w.cancelShown", 15_000)
    cell(page, ENDLESS_CELL).screenshot(path=str(SHOTS / "widget-cancelled.png"))

    run_from_menu(page, "Run Selected Cell and All Below", selected_source=CANCEL_CELL)
    page.wait_for_function(CELLS_RAN_JS, arg=None, timeout=2 * MINUTE_MS)
    cancel_output = cell(page, CANCEL_CELL).locator(".jp-OutputArea").inner_text()
    assert "(False, 'REVOKED')" in cancel_output  # the button had cancelled it already
    log(f"all cells ran after {time.monotonic() - started:.1f}s")

    errors = [
        text
        for text in page.locator(
            ".jp-OutputArea-output[data-mime-type*='stderr']"
        ).all_inner_texts()
        if "Traceback" in text or "Error" in text
    ]
    assert not errors, errors
    assert page.locator(f"text={BAD_TEXT}").count() == 0
    assert not page.evaluate("() => window.__celerynbBadSeen"), f"'{BAD_TEXT}' was shown"
    shoot_region(page, cell(page, JOB_CELL), cell(page, BROKEN_CELL), SHOTS / "quickstart.png")


def shoot_region(page, first, last, path):
    """A screenshot of the JupyterLab window, scrolled to put the cell before ``first`` at
    the top; the window grows (up to 1800 px) until ``last`` is in view."""
    scroll_to = """el => {
        const prev = el.previousElementSibling;
        (prev && prev.classList.contains('jp-Cell') ? prev : el).scrollIntoView({block: 'start'});
    }"""
    overflow_js = """el => {
        const panel = el.closest('.jp-WindowedPanel-outer') || el.closest('.jp-Notebook');
        return el.getBoundingClientRect().bottom - panel.getBoundingClientRect().bottom;
    }"""
    for _ in range(4):
        first.evaluate(scroll_to)
        page.wait_for_timeout(300)
        overflow = last.evaluate(overflow_js)
        height = page.viewport_size["height"]
        if overflow <= -12 or height >= 1800:
            break
        page.set_viewport_size(
            {"width": VIEWPORT["width"], "height": int(min(height + overflow + 16, 1800))}
        )
        page.wait_for_timeout(500)
    page.screenshot(path=str(path))
    log(f"wrote {path}")
