"""A private JupyterLab and a headless Chromium driven by Playwright, for the browser test.

Uses the system Chromium (Debian's ``chromium`` package); Playwright downloads no browser.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import shutil
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psutil

from celerynb._redis_server import free_port

JUPYTER = Path(sys.executable).with_name("jupyter")
# The flags that work on these machines (a closed network, running as root).
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
# Plugins whose pop-ups would cover the notebook in a fresh profile.
DISABLED_LAB_PLUGINS = [
    "@jupyterlab/apputils-extension:announcements",
    "@jupyterlab/apputils-extension:notification",
]
SERVER_START_TIMEOUT = 60.0
SHUTDOWN_TIMEOUT = 30.0
BAD_TEXT = "Error displaying widget"


def find_chromium() -> str | None:
    """``$CELERYNB_CHROMIUM``, else a ``chromium`` on PATH or in /usr/bin."""
    candidates = [
        os.environ.get("CELERYNB_CHROMIUM"),
        shutil.which("chromium"),
        shutil.which("chromium-browser"),
        "/usr/bin/chromium",
    ]
    return next((c for c in candidates if c and os.access(c, os.X_OK)), None)


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", flush=True)


def api(base: str, token: str, path: str, method: str = "GET") -> Any:
    request = urllib.request.Request(
        f"{base}{path}", method=method, headers={"Authorization": f"token {token}"}
    )
    with urllib.request.urlopen(request, timeout=5) as response:
        body = response.read()
    return json.loads(body) if body else None


class Lab:
    """``jupyter lab --no-browser`` (or ``app="notebook"``: Notebook 7) serving ``root`` on
    a free 127.0.0.1 port, token auth, with its config, runtime, settings and job store
    kept under ``root``'s parent."""

    def __init__(self, root: Path, app: str = "lab") -> None:
        self.root = root
        self.app = app
        self.port = free_port()
        self.token = secrets.token_hex(24)
        self.base = f"http://127.0.0.1:{self.port}"
        self.log_path = root.parent / "jupyter-lab.log"
        self.proc: subprocess.Popen[bytes] | None = None
        self.seen: dict[int, psutil.Process] = {}

    def url(self, notebook: str) -> str:
        where = "lab/tree" if self.app == "lab" else "notebooks"
        return f"{self.base}/{where}/{notebook}?token={self.token}"

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
            CELERYNB_STORE=str(home / "jobs.sqlite3"),
        )
        command = [
            str(JUPYTER), self.app, "--no-browser", "--ip=127.0.0.1", f"--port={self.port}",
            "--port-retries=0", f"--IdentityProvider.token={self.token}",
            f"--ServerApp.root_dir={self.root}",
        ]  # fmt: skip
        if self.app == "lab":
            command += [
                "--LabApp.check_for_updates_class=jupyterlab.NeverCheckForUpdate",
                "--LabApp.news_url=None", "--LabApp.extension_manager=readonly",
            ]  # fmt: skip
        if os.geteuid() == 0:
            command.append("--allow-root")
        with open(self.log_path, "wb") as log_file:
            self.proc = subprocess.Popen(
                command, cwd=self.root, env=env, stdin=subprocess.DEVNULL, stdout=log_file,
                stderr=subprocess.STDOUT, start_new_session=True,
            )  # fmt: skip
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
        log(f"jupyter lab is up on {self.base}")

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

    def stop(self) -> list[str]:
        """Shut the kernels and the server down; return the command lines of any process
        of theirs that had to be killed."""
        if self.proc is None:
            return []
        self.note_processes()
        if self.proc.poll() is None:
            with contextlib.suppress(Exception):
                for kernel in api(self.base, self.token, "/api/kernels"):
                    api(self.base, self.token, f"/api/kernels/{kernel['id']}", method="DELETE")
            with contextlib.suppress(Exception):
                api(self.base, self.token, "/api/shutdown", method="POST")
            try:
                self.proc.wait(SHUTDOWN_TIMEOUT)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(10)
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.proc.pid, signal.SIGKILL)  # anything left in its session
        _gone, alive = psutil.wait_procs(list(self.seen.values()), timeout=10)
        killed = []
        for proc in alive:
            with contextlib.suppress(psutil.Error):
                if proc.status() != psutil.STATUS_ZOMBIE:
                    killed.append(" ".join(proc.cmdline())[:200])
                    proc.kill()
        return killed


@contextlib.contextmanager
def serving(root: Path, app: str = "lab") -> Iterator[Lab]:
    """A started ``Lab`` (or Notebook 7: ``app="notebook"``) on ``root``; stopped after,
    failing if it left a process behind."""
    server = Lab(root, app)
    server.start()
    try:
        yield server
    except BaseException:
        log(f"jupyter lab log, last lines:\n{server.tail()}")
        raise
    finally:
        killed = server.stop()
        assert not killed, f"processes left behind by jupyter lab: {killed}"


def read_widget_js(cell_source: str) -> str:
    """A JS function reading the first celerynb widget of the code cell whose source
    contains ``cell_source``: its state badge, bar width (%), stats text and traceback."""
    return """() => {
        const cell = [...document.querySelectorAll('.jp-CodeCell')].find(c => {
            const editor = c.querySelector('.jp-InputArea-editor');
            return editor && editor.textContent.includes(SOURCE);
        });
        const el = cell && cell.querySelector('.celerynb-job');
        if (!el) return null;
        const text = sel => { const n = el.querySelector(sel); return n ? n.textContent : ''; };
        const bar = el.querySelector('.progress-bar');
        const button = [...el.querySelectorAll('button')].find(
            b => b.textContent.includes('Cancel'));
        return {
            state: text('.celerynb-state'),
            width: bar ? parseFloat(bar.style.width || '0') : 0,
            stats: text('code'),
            traceback: text('.celerynb-traceback'),
            cancelShown: !!(button && button.offsetParent),
        };
    }""".replace("SOURCE", json.dumps(cell_source))


def record_timeline_js(cell_source: str) -> str:
    """A JS function that starts recording every change of a cell's widget, time-stamped,
    with the execution prompts of the other cells that were running at that moment."""
    return (
        """() => {
        const read = """
        + read_widget_js(cell_source)
        + """;
        const busyOthers = () => [...document.querySelectorAll('.jp-CodeCell')]
            .filter(c => /\\[\\*\\]/.test(
                (c.querySelector('.jp-InputArea-prompt') || {}).textContent || ''))
            .filter(c => !c.querySelector('.jp-InputArea-editor').textContent.includes(SOURCE))
            .length;
        const t0 = performance.now();
        const timeline = window.__celerynbTimeline = [];
        window.__celerynbBadSeen = false;
        const note = () => {
            const now = read();
            if (document.body.textContent.includes(BAD)) window.__celerynbBadSeen = true;
            if (!now) return;
            const last = timeline[timeline.length - 1];
            if (!last || last.state !== now.state || last.width !== now.width
                    || last.stats !== now.stats) {
                timeline.push({t: performance.now() - t0, othersRunning: busyOthers(), ...now});
            }
        };
        note();
        new MutationObserver(note).observe(document.body, {
            subtree: true, childList: true, characterData: true, attributes: true,
        });
    }""".replace("SOURCE", json.dumps(cell_source)).replace("BAD", json.dumps(BAD_TEXT))
    )


KERNEL_IDLE_JS = """() => {
    const bar = document.querySelector('#jp-main-statusbar');
    const text = bar ? bar.textContent || '' : '';
    return !text.includes('No Kernel') && /\\|\\s*Idle/.test(text);
}"""

# Every code cell up to ``last`` (a source snippet; all cells if null) has run, and the
# kernel is idle.
CELLS_RAN_JS = """(last) => {
    const cells = [...document.querySelectorAll('.jp-CodeCell')];
    let upto = cells.length;
    if (last) upto = cells.findIndex(
        c => c.querySelector('.jp-InputArea-editor').textContent.includes(last));
    const prompts = cells.slice(0, upto).map(
        c => (c.querySelector('.jp-InputArea-prompt') || {}).textContent || '');
    const ind = document.querySelector('.jp-Notebook-ExecutionIndicator');
    return prompts.every(p => /\\[\\d+\\]/.test(p))
        && (!ind || ind.getAttribute('data-status') === 'idle');
}"""
