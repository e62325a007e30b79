"""The two commands (dev.py) and the CI script (.ci/run) say what they do and fail loudly."""

import importlib.util
import os
import socket
import subprocess
import sys
from pathlib import Path

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


def test_each_test_group_of_the_parallel_run_names_tests(request):
    """A key of conftest.TEST_GROUPS naming no test (a test or file renamed) would let the
    tests it kept in one process meet in parallel, failing only now and then."""
    from conftest import TEST_GROUPS

    collected = [item.nodeid for item in request.session.items]
    for key in TEST_GROUPS:
        module = key.split("::")[0]
        assert (ROOT / module).exists(), key
        if any(nodeid.startswith(f"{module}::") for nodeid in collected):  # not a partial run
            assert any(nodeid.startswith(key) for nodeid in collected), key
