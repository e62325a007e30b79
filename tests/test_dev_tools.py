"""The two commands (dev.py) and the CI script (.ci/run) say what they do and fail loudly."""

import importlib.util
import os
import re
import socket
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def load_dev():
    spec = importlib.util.spec_from_file_location("dev", ROOT / "dev.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_dev_lab_allows_root_only_as_root():
    dev = load_dev()
    quickstart = ["jupyter", "lab", "notebooks/01-quickstart.ipynb"]
    assert dev.lab_command([], euid=0) == [*quickstart, "--allow-root"]
    assert dev.lab_command(["--port=9999"], euid=1000) == [*quickstart, "--port=9999"]
    assert dev.lab_command(["--allow-root"], euid=0).count("--allow-root") == 1


def ci_shell(command, wait_seconds="1"):
    env = dict(os.environ, CELERYNB_CI_WAIT_SECONDS=wait_seconds)
    return subprocess.run(
        ["bash", "-c", f"source .ci/run && {command}"],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=60,
    )  # fmt: skip


def test_ci_fails_with_a_message_when_a_server_it_started_never_listens():
    with socket.socket() as probe:  # a port nothing listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    out = ci_shell(f"wait_up {port} RabbitMQ; echo still-running")
    assert out.returncode != 0 and "still-running" not in out.stdout
    assert f"started RabbitMQ but nothing listens on port {port} after 1s" in out.stderr


def test_ci_goes_on_once_the_server_listens():
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen()
        out = ci_shell(f"wait_up {server.getsockname()[1]} RabbitMQ && echo up")
    assert out.returncode == 0 and out.stdout == "up\n", out


def test_ci_says_how_long_each_step_took_and_how_it_ended():
    out = ci_shell("timed 'a step' bash -c 'exit 3' || echo \"returned $?\"")
    # whole seconds: on a loaded machine even `exit 3` may take one
    assert re.fullmatch(r"\.ci/run: a step: [01] s, exit 3\nreturned 3\n", out.stdout), out


def test_the_quiet_test_command_still_says_why_tests_skipped(tmp_path):
    (tmp_path / "test_skips.py").write_text(
        "import pytest\n\ndef test_x():\n    pytest.skip('no RabbitMQ here')\n"
    )
    # The test processes of addopts (pytest-xdist) report the skips: one is enough here.
    out = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
         "-c", str(ROOT / "pyproject.toml"), str(tmp_path / "test_skips.py"), "-n", "1"],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert "SKIPPED [1]" in out.stdout and "no RabbitMQ here" in out.stdout, out.stdout


def fake_python(path, version):
    """An executable named like a Python that answers ``version``, or fails as a pyenv
    shim does for a version ``pyenv global`` does not select (``version`` None)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    answer = f"echo {version}" if version else f"echo 'pyenv: {path.name}: command not found' >&2"
    path.write_text(f"#!/bin/sh\n{answer}\nexit {0 if version else 127}\n")
    path.chmod(0o755)
    return str(path)


def test_a_python_is_found_on_path_past_a_failing_shim_or_else_the_newest_in_pyenv(tmp_path):
    dev = load_dev()
    shims, pyenv = tmp_path / "shims", tmp_path / "pyenv"
    fake_python(shims / "python3.12", None)
    working = fake_python(tmp_path / "bin" / "python3.12", "3.12")
    wrong = fake_python(tmp_path / "odd" / "python3.13", "3.11")  # not what its name says
    for patch in ("3.13.0", "3.13.10", "3.13.9"):
        fake_python(pyenv / "versions" / patch / "bin" / "python3.13", "3.13")
    path = os.pathsep.join(str(tmp_path / d) for d in ("shims", "bin", "odd"))
    assert dev.find_python("3.12", path=path, pyenv_root=pyenv) == working
    assert dev.find_python("3.13", path=path, pyenv_root=pyenv) != wrong
    assert dev.find_python("3.13", path=path, pyenv_root=pyenv).endswith("3.13.10/bin/python3.13")
    assert dev.find_python("3.10", path=path, pyenv_root=pyenv) is None


def test_a_promised_python_that_is_not_found_fails_the_run_saying_so_in_one_line(
    monkeypatch, capsys
):
    dev = load_dev()
    monkeypatch.setattr(dev, "find_python", lambda version: None)
    promised = dev.promised_pythons((ROOT / "pyproject.toml").read_text())
    this = f"{sys.version_info[0]}.{sys.version_info[1]}"
    assert dev.test_pythons(["-q"]) == 1
    lines = capsys.readouterr().out.splitlines()
    for version in promised:
        said = [line for line in lines if f"Python {version}, promised" in line]
        assert len(said) == (version != this), (version, lines)  # this one: `dev.py test`
    assert all("not found" in line for line in lines if line.strip()), lines


GUARDED_TESTS = """
import socket, subprocess, sys
import pytest

def test_starts_a_local_cluster_in_a_child():
    subprocess.run([sys.executable, "-c", "import celerynb; celerynb.LocalCluster()"])

def test_reaches_the_machines_redis():
    socket.create_connection(("127.0.0.1", 6379), timeout=1).close()

@pytest.mark.needs_server
def test_marked():
    raise AssertionError("deselected, never run")

def test_needs_nothing():
    assert subprocess.run([sys.executable, "-c", "pass"]).returncode == 0
"""


def test_a_run_without_servers_fails_each_test_that_starts_or_reaches_one(tmp_path):
    (tmp_path / "test_guarded.py").write_text(GUARDED_TESTS)
    (tmp_path / "pytest.ini").write_text("[pytest]\n")
    env = dict(os.environ, PYTHONPATH=str(ROOT / "tests"))
    out = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-p", "without_servers",
         "--without-servers", "test_guarded.py"],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert "2 failed, 1 passed, 1 deselected" in out.stdout, out.stdout
    for said in [
        "test_guarded.py::test_starts_a_local_cluster_in_a_child starts a server ('",
        "test_guarded.py::test_reaches_the_machines_redis connects to a server at port 6379: mark",
    ]:
        assert said in out.stdout, out.stdout
    assert "mark it `needs_server` (tests/without_servers.py)" in out.stdout, out.stdout


def test_each_test_group_of_the_parallel_run_names_tests(request):
    """A key of conftest.TEST_GROUPS naming no test (a test or file renamed) would let the
    tests it kept in one process meet in parallel, failing only now and then."""
    from conftest import TEST_GROUPS

    if request.config.getoption("--without-servers") or request.config.getoption("-m"):
        pytest.skip("a run of selected tests: the groups are checked in the full run")
    collected = [item.nodeid for item in request.session.items]
    for key in TEST_GROUPS:
        module = key.split("::")[0]
        assert (ROOT / module).exists(), key
        if any(nodeid.startswith(f"{module}::") for nodeid in collected):  # not a partial run
            assert any(nodeid.startswith(key) for nodeid in collected), key
