"""Forged states in a real JupyterLab, in a real (headless) Chromium: markup written to
the result backend by anyone who can reach it is shown as text, and no script runs.

The page would run it: ipywidgets' ``HTML`` values are inserted with ``innerHTML``, and
script in the page can run code in the kernel.
"""

from __future__ import annotations

import json

import nbformat
import pytest
from lab_browser import CHROMIUM_FLAGS, KERNEL_IDLE_JS, find_chromium, log, serving

sync_api = pytest.importorskip("playwright.sync_api", reason="needs playwright (dev extra)")
CHROMIUM = find_chromium()
pytestmark = [
    pytest.mark.needs_server,
    pytest.mark.skipif(CHROMIUM is None, reason="no chromium (apt install chromium)"),
    pytest.mark.timeout(300),
]
MINUTE_MS = 60_000

# One payload per place a string from the backend reaches the page; each sets its flag.
PAYLOADS = {
    place: f'<img src=x onerror="window.__pwned_{place}=1"><b class="injected">{place}</b>'
    for place in ("state", "name", "desc", "unit", "postfix", "message", "traceback")
}

CELLS = [
    "import json, uuid, celerynb\ncelerynb.connect(celerynb.LocalCluster(processes=1))",
    f"PAYLOADS = {json.dumps(PAYLOADS)}\n"
    "backend = celerynb.current_session().app.backend\n"
    "def forge(task_id, meta):  # as an attacker with access to the result backend\n"
    "    key, raw = backend.get_key_for_task(task_id), json.dumps({'task_id': task_id, **meta})\n"
    "    backend.client.set(key, raw)\n"
    "    backend.client.publish(key, raw)",
    "target = celerynb.attach(str(uuid.uuid4()))\ntarget",
    "bar = {'n': 3, 'total': 10, 'desc': PAYLOADS['desc'], 'unit': PAYLOADS['unit'],\n"
    "       'postfix': PAYLOADS['postfix'], 'rate': 1.0, 'elapsed': 1.0}\n"
    "forge(target.id, {'status': 'PROGRESS',\n"
    "                  'result': {'schema': 'celerynb.progress/1', **bar, 'bars': [bar, bar]}})\n"
    "forge(target.id, {'status': PAYLOADS['state'], 'result': None})",
    "failed = celerynb.attach(str(uuid.uuid4()), name=PAYLOADS['name'])\nfailed",
    "forge(failed.id, {'status': 'FAILURE', 'traceback': PAYLOADS['traceback'],\n"
    "                  'result': {'exc_type': 'ValueError', 'exc_module': 'builtins',\n"
    "                             'exc_message': [PAYLOADS['message']]}})",
]

SHOWN_JS = """() => {
    const jobs = [...document.querySelectorAll('.celerynb-job')];
    const text = jobs.map(j => j.textContent).join('\\n');
    return jobs.length === 2 && text.includes('ignored a state')
        && text.includes('FAILURE') && text.includes('3/10');
}"""

VERDICT_JS = """(places) => ({
    ran: places.filter(p => window['__pwned_' + p] !== undefined),
    injected: document.querySelectorAll('.celerynb-job img, .celerynb-job b.injected').length,
    text: [...document.querySelectorAll('.celerynb-job')].map(j => j.textContent).join('\\n'),
})"""


@pytest.fixture
def lab(tmp_path):
    root = tmp_path / "notebooks"
    root.mkdir()
    notebook = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell(c) for c in CELLS])
    notebook.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3"}
    nbformat.write(notebook, root / "forged.ipynb")
    with serving(root) as server:
        yield server


def test_markup_forged_in_the_backend_runs_no_script_in_jupyterlab(lab, tmp_path):
    with sync_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_FLAGS)
        try:
            page = browser.new_context(viewport={"width": 1280, "height": 900}).new_page()
            page.goto(lab.url("forged.ipynb"), timeout=MINUTE_MS)
            page.locator(".jp-NotebookPanel .jp-Cell").first.wait_for(timeout=MINUTE_MS)
            page.wait_for_function(KERNEL_IDLE_JS, timeout=MINUTE_MS)
            page.locator(".lm-MenuBar-itemLabel", has_text="Run").first.click()
            page.locator(".lm-Menu-item", has_text="Run All Cells").first.click()
            page.wait_for_function(SHOWN_JS, timeout=2 * MINUTE_MS)
            page.wait_for_timeout(500)  # let any injected handler fire, were there one
            verdict = page.evaluate(VERDICT_JS, list(PAYLOADS))
            page.screenshot(path=str(tmp_path / "forged.png"))
        finally:
            browser.close()
    log(f"widgets showed:\n{verdict['text']}")
    assert verdict["ran"] == [], f"script ran in the page from: {verdict['ran']}"
    assert verdict["injected"] == 0, "markup from the backend became elements"
    for place in ("name", "desc", "unit", "postfix", "traceback"):  # shown, as text
        assert PAYLOADS[place] in verdict["text"], place
    assert verdict["text"].startswith("PROGRESS")  # the forged state name is not a state
