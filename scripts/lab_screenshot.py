"""Screenshots of the celerynb job widget in a real JupyterLab, in a real (headless) Chromium.

Copies ``notebooks/01-quickstart.ipynb`` into a temporary directory, starts a private
``jupyter lab`` on a free loopback port with a random token, opens the notebook with
Playwright, runs all cells from the Run menu and saves:

* ``docs/widget-running.png``: the first job's cell while its widget is still running;
* ``docs/quickstart.png``: the notebook once every cell has run, scrolled so the finished
  job widget and the failed job's traceback are both in view.

It fails (exit status 1) if JupyterLab shows "Error displaying widget" or a wait times out.
Everything it starts (jupyter lab, the kernel, the kernel's LocalCluster, the browser) is
stopped at the end.

Needs Playwright for Python (``pip install playwright``) and a Chromium binary; no
``playwright install`` is needed::

    .venv/bin/python scripts/lab_screenshot.py [--chromium /usr/bin/chromium] [--out docs]
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path

import psutil
from playwright.sync_api import Locator, Page, sync_playwright

REPO = Path(__file__).resolve().parent.parent
NOTEBOOK = REPO / "notebooks" / "01-quickstart.ipynb"
JUPYTER = Path(sys.executable).with_name("jupyter")
CHROMIUM_FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
VIEWPORT = {"width": 1280, "height": 900}
# Plugins whose pop-ups would cover the notebook in a fresh profile.
DISABLED_LAB_PLUGINS = [
    "@jupyterlab/apputils-extension:announcements",
    "@jupyterlab/apputils-extension:notification",
]

SERVER_START_TIMEOUT = 60.0
LAB_LOAD_TIMEOUT_MS = 60_000
KERNEL_IDLE_TIMEOUT_MS = 60_000
WIDGET_TIMEOUT_MS = 120_000  # LocalCluster start + first job submitted
RUNNING_TIMEOUT_MS = 60_000
SUCCESS_TIMEOUT_MS = 300_000
RUN_ALL_TIMEOUT_MS = 300_000
SHUTDOWN_TIMEOUT = 30.0

PR_SET_CHILD_SUBREAPER = 36

BAD_TEXT = "Error displaying widget"
FINAL_STATES = {"SUCCESS", "FAILURE", "REVOKED"}

JOB_SOURCE = "celerynb.submit(simulate"  # the first job's cell

# The first job's widget, read from its cell (ipywidgets may replace the view's DOM node:
# it is read afresh each time).
READ_JOB_JS = """() => {
    const cell = [...document.querySelectorAll('.jp-CodeCell')].find(c => {
        const editor = c.querySelector('.jp-InputArea-editor');
        return editor && editor.textContent.includes(JOB_SOURCE_JSON);
    });
    const el = cell && cell.querySelector('.celerynb-job');
    if (!el) return {state: '', width: 0, stats: cell ? cell.querySelector(
        '.jp-OutputArea').textContent.trim().slice(0, 60) : 'no cell'};
    const s = el.querySelector('.celerynb-state');
    const bar = el.querySelector('.progress-bar');
    const code = el.querySelector('code');
    return {
        state: s ? s.textContent : '',
        width: bar ? parseFloat(bar.style.width || '0') : 0,
        stats: code ? code.textContent : '',
    };
}""".replace("JOB_SOURCE_JSON", json.dumps(JOB_SOURCE))

# Record every change of the first job's widget (state, bar, stats text), time-stamped.
RECORD_TIMELINE_JS = (
    """() => {
    const read = """
    + READ_JOB_JS
    + """;
    const t0 = performance.now();
    const timeline = window.__celerynbTimeline = [];
    const note = () => {
        const now = read();
        const last = timeline[timeline.length - 1];
        if (!last || last.state !== now.state || last.width !== now.width
                || last.stats !== now.stats) {
            timeline.push({t: performance.now() - t0, ...now});
        }
    };
    window.__celerynbBadSeen = false;
    note();
    new MutationObserver(() => {
        note();
        if (!window.__celerynbBadSeen
                && document.body.textContent.includes(BAD_TEXT_JSON)) {
            window.__celerynbBadSeen = true;
        }
    }).observe(document.body, {
        subtree: true, childList: true, characterData: true, attributes: true,
    });
}""".replace("BAD_TEXT_JSON", json.dumps(BAD_TEXT))
)


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", flush=True)


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def api(base: str, token: str, path: str, method: str = "GET") -> object:
    request = urllib.request.Request(
        f"{base}{path}", method=method, headers={"Authorization": f"token {token}"}
    )
    with urllib.request.urlopen(request, timeout=5) as response:
        body = response.read()
    return json.loads(body) if body else None


class Lab:
    """A private ``jupyter lab`` serving ``root`` on 127.0.0.1."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.port = free_port()
        self.token = secrets.token_hex(24)
        self.base = f"http://127.0.0.1:{self.port}"
        self.log_path = root.parent / "jupyter-lab.log"
        self.proc: subprocess.Popen[bytes] | None = None
        self.seen: dict[int, psutil.Process] = {}

    def start(self) -> None:
        home = self.root.parent
        config_dir = home / "jupyter-config"
        (config_dir / "labconfig").mkdir(parents=True)
        page_config = {"disabledExtensions": dict.fromkeys(DISABLED_LAB_PLUGINS, True)}
        (config_dir / "labconfig" / "page_config.json").write_text(json.dumps(page_config))
        env = {k: v for k, v in os.environ.items() if not k.startswith("CELERYNB_")}
        env.update(
            JUPYTER_CONFIG_DIR=str(config_dir),
            JUPYTER_RUNTIME_DIR=str(home / "jupyter-runtime"),
            JUPYTERLAB_SETTINGS_DIR=str(home / "lab-settings"),
            JUPYTERLAB_WORKSPACES_DIR=str(home / "lab-workspaces"),
            IPYTHONDIR=str(home / "ipython"),
        )
        command = [
            str(JUPYTER),
            "lab",
            "--no-browser",
            "--ip=127.0.0.1",
            f"--port={self.port}",
            "--port-retries=0",
            f"--IdentityProvider.token={self.token}",
            f"--ServerApp.root_dir={self.root}",
            "--LabApp.check_for_updates_class=jupyterlab.NeverCheckForUpdate",
            "--LabApp.news_url=None",
            "--LabApp.extension_manager=readonly",
        ]
        if os.geteuid() == 0:
            command.append("--allow-root")
        log(f"starting jupyter lab on {self.base} (log: {self.log_path})")
        with open(self.log_path, "wb") as log_file:
            self.proc = subprocess.Popen(
                command,
                cwd=self.root,
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=log_file,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        deadline = time.monotonic() + SERVER_START_TIMEOUT
        while True:
            if self.proc.poll() is not None:
                raise RuntimeError(
                    f"jupyter lab exited with {self.proc.returncode}:\n{self.tail()}"
                )
            try:
                api(self.base, self.token, "/api/status")
                break
            except (OSError, urllib.error.URLError):
                if time.monotonic() > deadline:
                    raise TimeoutError(
                        f"jupyter lab did not answer in {SERVER_START_TIMEOUT:.0f}s:\n{self.tail()}"
                    ) from None
                time.sleep(0.25)
        log("jupyter lab is up")

    def tail(self, lines: int = 30) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""

    def note_processes(self) -> None:
        """Remember jupyter lab's descendants (kernel, Redis, workers) to check on them later."""
        if self.proc is None:
            return
        with contextlib.suppress(psutil.Error):
            root = psutil.Process(self.proc.pid)
            for proc in [root, *root.children(recursive=True)]:
                self.seen.setdefault(proc.pid, proc)

    def stop(self) -> None:
        if self.proc is None:
            return
        self.note_processes()
        if self.proc.poll() is None:
            with contextlib.suppress(Exception):
                for kernel in api(self.base, self.token, "/api/kernels"):  # type: ignore[union-attr]
                    log(f"shutting down kernel {kernel['id']}")
                    api(self.base, self.token, f"/api/kernels/{kernel['id']}", method="DELETE")
            with contextlib.suppress(Exception):
                api(self.base, self.token, "/api/shutdown", method="POST")
            try:
                self.proc.wait(SHUTDOWN_TIMEOUT)
            except subprocess.TimeoutExpired:
                log("jupyter lab did not stop: killing it")
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(10)
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.proc.pid, signal.SIGKILL)  # anything left in its session
        alive = self._still_alive(timeout=10.0)
        for proc in alive:
            with contextlib.suppress(psutil.Error):
                log(f"killing leftover process {proc.pid}: {' '.join(proc.cmdline())[:200]}")
                proc.kill()
        alive = self._still_alive(timeout=5.0)
        if alive:
            raise RuntimeError(f"processes left behind: {[p.pid for p in alive]}")
        log(f"jupyter lab stopped; none of its {len(self.seen)} processes is left")

    def _still_alive(self, timeout: float) -> list[psutil.Process]:
        procs = list(self.seen.values())
        _gone, alive = psutil.wait_procs(procs, timeout=timeout)
        return [p for p in alive if running(p)]


def running(proc: psutil.Process) -> bool:
    try:
        return proc.is_running() and proc.status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False


def kernel_idle(page: Page, timeout_ms: int) -> None:
    """Wait until the notebook's kernel is connected and idle, as the status bar tells.

    (The toolbar's execution indicator says "idle" before any kernel exists.)"""
    page.wait_for_function(
        """() => {
            const bar = document.querySelector('#jp-main-statusbar');
            const text = bar ? bar.textContent || '' : '';
            return !text.includes('No Kernel') && /\\|\\s*Idle/.test(text);
        }""",
        timeout=timeout_ms,
    )


def all_cells_ran(page: Page, timeout_ms: int) -> None:
    """Wait until every code cell has an execution count and the kernel is idle."""
    page.wait_for_function(
        """() => {
            const prompts = [...document.querySelectorAll(
                '.jp-CodeCell .jp-InputArea-prompt')];
            if (!prompts.length) return false;
            const done = prompts.every(p => /\\[\\d+\\]/.test(p.textContent || ''));
            const ind = document.querySelector('.jp-Notebook-ExecutionIndicator');
            return done && (!ind || ind.getAttribute('data-status') === 'idle');
        }""",
        timeout=timeout_ms,
    )


def run_all_cells(page: Page, tries: int = 3) -> None:
    """Run > Run All Cells, as a user would; checks that the first code cell started."""
    first_prompt = page.locator(".jp-CodeCell .jp-InputArea-prompt").first
    for attempt in range(1, tries + 1):
        page.locator(".lm-MenuBar-itemLabel", has_text="Run").first.click()
        item = page.locator(".lm-Menu-item", has_text="Run All Cells").first
        item.wait_for(state="visible", timeout=10_000)
        item.click()
        try:
            page.wait_for_function(
                "el => /\\[(\\*|\\d+)\\]/.test(el.textContent || '')",
                arg=first_prompt.element_handle(),
                timeout=10_000,
            )
            return
        except Exception:
            log(f"Run All Cells did not start the first cell (try {attempt}/{tries})")
            page.keyboard.press("Escape")
    raise RuntimeError("Run > Run All Cells did not run the notebook")


def cell_of(locator: Locator) -> Locator:
    return locator.locator("xpath=ancestor::div[contains(@class,'jp-Cell ')][1]")


def bad_text_count(page: Page) -> int:
    return page.locator(f"text={BAD_TEXT}").count()


def screenshot_cell(page: Page, cell: Locator, path: Path) -> None:
    cell.scroll_into_view_if_needed(timeout=10_000)
    cell.screenshot(path=str(path), timeout=10_000)
    log(f"wrote {path}")


def screenshot_region(page: Page, first: Locator, last: Locator, path: Path) -> None:
    """A screenshot of the whole JupyterLab window, the notebook scrolled to put ``first``
    (and the cell before it) at the top; the window is made taller (up to 1800 px) until
    ``last`` is in view."""
    scroll_to = """el => {
        // Start at the cell before (the markdown that introduces the job), if any.
        const prev = el.previousElementSibling;
        const top = prev && prev.classList.contains('jp-Cell') ? prev : el;
        top.scrollIntoView({block: 'start'});
    }"""
    overflow_js = """(el) => {
        const panel = el.closest('.jp-WindowedPanel-outer') || el.closest('.jp-Notebook');
        return el.getBoundingClientRect().bottom - panel.getBoundingClientRect().bottom;
    }"""
    for _ in range(4):
        first.evaluate(scroll_to)
        page.wait_for_timeout(300)
        overflow = last.evaluate(overflow_js)
        height = page.viewport_size["height"] if page.viewport_size else VIEWPORT["height"]
        if overflow <= -12 or height >= 1800:
            break
        new_height = int(min(height + overflow + 16, 1800))
        page.set_viewport_size({"width": VIEWPORT["width"], "height": new_height})
        page.wait_for_timeout(500)
    page.screenshot(path=str(path))
    log(f"wrote {path} ({page.viewport_size})")


def widget_text(widget: Locator) -> str:
    return " ".join(widget.inner_text(timeout=5_000).split())


def shoot(lab: Lab, chromium: str, out: Path, scale: float) -> int:
    url = f"{lab.base}/lab/tree/{NOTEBOOK.name}?token={lab.token}"
    problems: list[str] = []
    failure_page: Page | None = None
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=chromium, args=CHROMIUM_FLAGS)
        try:
            context = browser.new_context(viewport=VIEWPORT, device_scale_factor=scale)
            page = failure_page = context.new_page()
            page.on("pageerror", lambda error: log(f"page error: {error}"))
            log(f"opening {url.replace(lab.token, '<token>')}")
            page.goto(url, timeout=LAB_LOAD_TIMEOUT_MS)
            page.locator(".jp-NotebookPanel .jp-Cell").first.wait_for(timeout=LAB_LOAD_TIMEOUT_MS)
            kernel_idle(page, KERNEL_IDLE_TIMEOUT_MS)
            lab.note_processes()
            log("notebook open, kernel idle: Run > Run All Cells")
            page.evaluate(RECORD_TIMELINE_JS)
            started = time.monotonic()
            run_all_cells(page)

            job_cell = page.locator(".jp-CodeCell", has_text=JOB_SOURCE).first
            job = job_cell.locator(".celerynb-job").first
            job.wait_for(state="visible", timeout=WIDGET_TIMEOUT_MS)
            log(f"job widget shown after {time.monotonic() - started:.1f}s: {widget_text(job)}")
            lab.note_processes()  # the kernel's Redis and workers are up by now
            state = job.locator(".celerynb-state")
            # A first shot at once, while the job surely runs; a better one if the bar is
            # seen part-way (15-90%) before the job ends.
            shot = out / "widget-running.png"
            screenshot_cell(page, job_cell, shot)
            deadline = time.monotonic() + RUNNING_TIMEOUT_MS / 1000
            while time.monotonic() < deadline:
                now = page.evaluate(READ_JOB_JS)
                if now["state"] in FINAL_STATES:
                    problems.append(
                        f"the bar was not seen between 15% and 90% before {now['state']}: "
                        f"{shot.name} shows the job just started"
                    )
                    break
                if 15 <= now["width"] <= 90:
                    screenshot_cell(page, job_cell, shot)
                    log(f"running widget ({now['width']:.0f}%): {widget_text(job)}")
                    break
                page.wait_for_timeout(50)

            state.filter(has_text="SUCCESS").wait_for(timeout=SUCCESS_TIMEOUT_MS)
            log(f"SUCCESS after {time.monotonic() - started:.1f}s: {widget_text(job)}")
            timeline = page.evaluate("() => window.__celerynbTimeline")
            log(f"first job's output as the browser drew it ({len(timeline)} changes):")
            for entry in timeline:
                t, state_, width = entry["t"], entry["state"], entry["width"]
                log(f"  +{t:7.0f} ms {state_:<9} {width:5.1f}%  {entry['stats']}")
            traceback = page.locator(".celerynb-traceback").first
            traceback.wait_for(timeout=RUN_ALL_TIMEOUT_MS)
            all_cells_ran(page, RUN_ALL_TIMEOUT_MS)
            log(f"all cells ran after {time.monotonic() - started:.1f}s")
            lab.note_processes()

            widgets = page.locator(".celerynb-job")
            for index in range(widgets.count()):
                log(f"widget {index}: {widget_text(widgets.nth(index))}")
            # Errors and stderr streams both render with the stderr mime type.
            errors = page.locator(".jp-OutputArea-output[data-mime-type*='stderr']")
            for index in range(errors.count()):
                text = errors.nth(index).inner_text()
                if "Traceback" in text or "Error" in text:
                    problems.append(f"error output in the notebook: {text[:500]}")
                else:
                    log(f"stderr output in the notebook: {text[:300]}")

            screenshot_region(page, job_cell, cell_of(traceback), out / "quickstart.png")

            bad = bad_text_count(page) + page.content().count(BAD_TEXT)
            seen = page.evaluate("() => window.__celerynbBadSeen")
            log(f"'{BAD_TEXT}' on the page now: {'YES' if bad else 'no'}; at any time: {seen}")
            if bad or seen:
                problems.append(f"'{BAD_TEXT}' was shown")
            context.close()
        except Exception:
            if failure_page is not None:
                debug = Path(tempfile.gettempdir()) / "celerynb-lab-shot-failure.png"
                with contextlib.suppress(Exception):
                    failure_page.screenshot(path=str(debug))
                    log(f"failed: screenshot of the page at {debug}")
            raise
        finally:
            browser.close()
    for problem in problems:
        log(f"PROBLEM: {problem}")
    return 1 if any(BAD_TEXT in p or "error output" in p for p in problems) else 0


def become_subreaper() -> bool:
    """Linux: adopt orphaned descendants (e.g. browser helpers that outlive the browser), so
    they can be reaped and checked for at the end instead of being left to init."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        return ctypes.CDLL(None, use_errno=True).prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) == 0
    except (OSError, AttributeError):
        return False


def reap_children(timeout: float = 10.0) -> None:
    """Kill what is left of our descendants, wait for all of them; fail if any survives."""
    me = psutil.Process()
    left = me.children(recursive=True)
    for proc in left:
        with contextlib.suppress(psutil.Error):
            log(f"killing leftover process {proc.pid}: {' '.join(proc.cmdline())[:200]}")
            proc.kill()
    _gone, alive = psutil.wait_procs(left, timeout=timeout)
    with contextlib.suppress(ChildProcessError):
        while os.waitpid(-1, os.WNOHANG)[0]:
            pass
    if alive:
        raise RuntimeError(f"processes left behind: {[p.pid for p in alive]}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--chromium", default=shutil.which("chromium") or "/usr/bin/chromium")
    parser.add_argument("--out", type=Path, default=REPO / "docs")
    parser.add_argument("--scale", type=float, default=1.0, help="device pixel ratio")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)

    subreaper = become_subreaper()
    started = time.monotonic()
    tmp = Path(tempfile.mkdtemp(prefix="celerynb-lab-shot-"))
    root = tmp / "notebooks"
    root.mkdir()
    shutil.copy(NOTEBOOK, root / NOTEBOOK.name)
    lab = Lab(root)
    status = 1
    try:
        lab.start()
        status = shoot(lab, args.chromium, args.out, args.scale)
    except Exception:
        log(f"jupyter lab log, last lines:\n{lab.tail()}")
        raise
    finally:
        try:
            lab.stop()
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
            if subreaper:
                reap_children()
    log(f"done in {time.monotonic() - started:.1f}s, exit status {status}")
    return status


if __name__ == "__main__":
    sys.exit(main())
