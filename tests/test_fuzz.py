"""Bad input, generated: the public API and the magics answer every case with one clear
line, never crash or hang, and send nothing when they refuse (hypothesis)."""

import threading
import time

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import celerynb
from celerynb._errors import CelerynbError

FUZZ = settings(
    max_examples=60,
    deadline=8000,  # ms per example: a refused call must come back quickly
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)

junk = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(),
    st.floats(allow_nan=True),
    st.binary(max_size=20),
    st.lists(st.integers(), max_size=3),
    st.dictionaries(st.text(max_size=4), st.integers(), max_size=2),
    st.sampled_from([object(), threading.Lock(), type, Ellipsis, print]),
)
# What each public function may answer bad input with: our errors, or the builtin
# TypeError/ValueError a Python user expects from a wrong type or value.
REFUSALS = (CelerynbError, TypeError, ValueError, LookupError)


def refused_in_one_line(call):
    """Run ``call``; if it refuses, the message is one non-empty line. True if refused."""
    try:
        call()
    except REFUSALS as exc:
        message = str(exc)
        assert message and "\n" not in message, repr(message)
        return True
    return False


@FUZZ
@given(fn=junk, arg=junk)
def test_submit_refuses_or_runs_whatever_it_is_given(session, fn, arg):
    before = len(celerynb.jobs())
    started = time.monotonic()
    if refused_in_one_line(lambda: celerynb.submit(fn, arg)):
        assert len(celerynb.jobs()) == before, "a refused call sent something"
    assert time.monotonic() - started < 5


@FUZZ
@given(iterable=junk, chunksize=junk)
def test_map_refuses_bad_iterables_and_chunk_sizes(session, iterable, chunksize):
    before = len(celerynb.jobs())
    if refused_in_one_line(lambda: celerynb.map(abs, iterable, chunksize=chunksize)):
        assert len(celerynb.jobs()) == before


@FUZZ
@given(target=junk)
def test_attach_wait_and_as_completed_refuse_what_they_cannot_watch(session, target):
    attach_refused = refused_in_one_line(lambda: celerynb.attach(target))
    wait_refused = refused_in_one_line(lambda: celerynb.wait(target, timeout=0))
    iteration_refused = refused_in_one_line(lambda: list(celerynb.as_completed(target, timeout=0)))
    if isinstance(target, list | dict | bytes) and not target:
        return  # nothing to watch: an empty group, or done at once
    # None of junk's values is a Job or a JobGroup...
    assert wait_refused and iteration_refused, f"waited on {target!r}"
    # ...nor a task id, except a dict's keys: text, taken as ids (attach iterates it).
    assert attach_refused or isinstance(target, dict), f"attached {target!r}"


urls = st.one_of(
    st.text(max_size=30),
    st.builds(
        "{}://{}:{}/{}".format,
        st.sampled_from(["redis", "rediss", "amqp", "pyamqp", "nosuch", "db+sqlite", ""]),
        st.sampled_from(["127.0.0.1", "", "user:pw@127.0.0.1", "[::1"]),
        st.integers(min_value=-5, max_value=70000),
        st.text(max_size=8),
    ),
)


@pytest.mark.needs_server  # the URLs reach the machine's Redis and RabbitMQ
@settings(FUZZ, deadline=15000)
@given(url=urls)
def test_connect_refuses_bad_urls_quickly_and_never_shows_a_password(monkeypatch, url):
    import celerynb._session as session_module

    monkeypatch.setattr(session_module, "_current", session_module._current)
    started = time.monotonic()
    try:
        session = celerynb.connect(url, secret="s")
    except REFUSALS + (OSError,) as exc:
        message = str(exc)
        assert message and "\n" not in message
        assert "pw@" not in message
    else:
        session.close()
    assert time.monotonic() - started < 12  # a stalled TLS handshake gives up after 5 s


magic_lines = st.one_of(
    st.text(max_size=40),
    st.builds(
        "{} {}".format,
        st.sampled_from(["-o", "-q", "-o x -q", "--all", "-t", "--previous", "-n", "-A"]),
        st.text(max_size=20),
    ),
    st.builds(
        "{}({})".format,
        st.sampled_from(["print", "nosuch", "len", "1", "", "("]),
        st.text(max_size=10),
    ),
)


@FUZZ
@given(magic=st.sampled_from(["celery_submit", "celery_cancel", "celery_jobs"]), line=magic_lines)
def test_magics_answer_any_line_with_a_result_or_one_usage_line(session, shell, magic, line):
    from IPython.core.error import UsageError

    before = len(celerynb.jobs())
    try:
        shell.run_line_magic(magic, line)
    except UsageError as exc:
        assert str(exc) and "\n" not in str(exc), repr(str(exc))
        if magic == "celery_submit":
            assert len(celerynb.jobs()) == before, "a refused submit sent something"
