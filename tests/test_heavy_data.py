"""Heavy data on real workers: big arguments and results by signed reference through the
session's Redis (and a LocalCluster's own directory), scatter once for many calls, the
kernel's memory, tampering, bad input.

One LocalCluster of its own (two worker processes), so that Redis's traffic counters
measure this module's transfers alone and big objects never stay in the suite's
shared workers."""

import hashlib
import json
import os
import pickle
import subprocess
import sys
import textwrap
import threading
import time
import uuid

import pytest
from conftest import wait_for

import celerynb
from celerynb import DataStoreError, DataUnavailableError, PayloadRefusedError
from celerynb._byref import by_reference
from celerynb._config import SHIPPED_TASK_NAME
from celerynb._datastore import PREFIX
from celerynb._payload import dumps
from celerynb._signing import seal
from celerynb._wire import SERIALIZER

np = pytest.importorskip("numpy")
MB = 10**6
pytestmark = pytest.mark.needs_server


@pytest.fixture(scope="module")
def heavy_cluster():
    with celerynb.LocalCluster(processes=2) as cluster:
        yield cluster


@pytest.fixture
def heavy(heavy_cluster, monkeypatch):
    """A session on the module's cluster, current for the test, keeping big data in
    Redis (the default of every Redis connection but a LocalCluster's)."""
    import celerynb._session as session_module

    session = celerynb.connect(heavy_cluster, store="redis")
    yield session
    monkeypatch.setattr(session_module, "_current", None)
    session.close()


def redis_of(session):
    return session.app.backend.client


def traffic(session):
    stats = redis_of(session).info("stats")
    return stats["total_net_input_bytes"], stats["total_net_output_bytes"]


def data_keys(session):
    return list(redis_of(session).scan_iter(match=PREFIX + "*", count=1000))


def counting(seconds, gate=None):
    """A job whose bar moves ten times a second for ``seconds``."""
    import time

    from celerynb import tqdm

    for _ in tqdm(range(int(seconds * 10)), desc="ticking", mininterval=0):
        time.sleep(0.1)
    return "ticked"


def big_array(count):
    import hashlib

    import numpy as np

    array = np.arange(count, dtype=np.uint32)
    return array, hashlib.sha256(array).hexdigest()


def test_a_1gb_array_result_arrives_equal_while_another_jobs_bar_keeps_moving(heavy):
    ticker = celerynb.submit(counting, 60)
    assert wait_for(lambda: ticker.progress.n >= 3, timeout=30), ticker.status_line()
    job = celerynb.submit(big_array, 250_000_000)  # 1 GB of uint32
    seen = []  # (ticker's n, whether the big result was being received)
    while not job.done():
        receiving = job.progress.desc == "receiving the result"
        seen.append((ticker.progress.n, receiving))
        time.sleep(0.05)
        assert len(seen) < 20 * 120, "the 1 GB job did not finish in 2 minutes"
    array, digest = job.result(timeout=0)
    assert array.nbytes == 1_000_000_000 and array.flags.writeable
    assert hashlib.sha256(array).hexdigest() == digest
    during = [n for n, receiving in seen if receiving]
    assert during, "the result never showed its transfer on the job's bar"
    assert job.progress.desc != "receiving the result"  # the task's own bar once here
    moving = [n for n, _ in seen]
    assert len(set(moving)) >= 5, f"the other bar stood still: {sorted(set(moving))}"
    del array, job
    ticker.cancel()
    assert wait_for(lambda: not data_keys(heavy), timeout=10), "the collected result stayed"


def big_bytes(size):
    import hashlib

    value = bytes(range(256)) * (size // 256)
    return value, hashlib.sha256(value).hexdigest()


def test_a_700mb_bytes_result_arrives(heavy):
    job = celerynb.submit(big_bytes, 700 * MB)
    value, digest = job.result(timeout=120)
    assert len(value) == 700 * MB // 256 * 256 and type(value) is bytes
    assert hashlib.sha256(value).hexdigest() == digest


def total_and_first(array):
    return float(array.sum()), float(array[0]), array.flags.writeable


def test_a_400mb_argument_is_accepted_used_and_removed_afterwards(heavy):
    array = np.ones(50_000_000)  # 400 MB of float64
    array[0] = 7.0
    started = time.monotonic()
    job = celerynb.submit(total_and_first, array)
    assert time.monotonic() - started < 5, "submit waited for the upload"
    transfer = []
    while not job.done() and time.monotonic() - started < 60:
        if job.progress.desc == "sending the call":
            transfer.append(job.progress.n)
        time.sleep(0.01)
    assert job.result(timeout=60) == (50_000_006.0, 7.0, True)
    assert transfer, "the upload never showed on the job's bar"
    assert job.progress.bars == (), "a finished transfer stayed the job's final bar"
    assert wait_for(lambda: not data_keys(heavy), timeout=10), "the call's data stayed"


def element(array, index):
    return float(array[index])


def test_a_scattered_400mb_array_serves_20_jobs_and_travels_once(heavy, heavy_cluster):
    array = np.arange(50_000_000, dtype="f8")  # 400 MB
    sent_before, read_before = traffic(heavy)
    scattered = celerynb.scatter(array)
    jobs = [celerynb.submit(element, scattered, index) for index in range(20)]
    assert [job.result(timeout=120) for job in jobs] == [float(i) for i in range(20)]
    sent, read = traffic(heavy)
    size = scattered.nbytes
    assert sent - sent_before < 1.1 * size, "the array was uploaded more than once"
    # Read at most once per worker process (each caches it by its digest), never per job.
    assert read - read_before < (heavy_cluster.processes + 0.1) * size, (read - read_before) / size
    assert scattered.digest == celerynb.scatter(array).digest  # same content, same digest
    scattered.release()
    with pytest.raises(DataUnavailableError, match="released"):
        celerynb.submit(element, scattered, 0)


def test_data_removed_from_the_store_fails_the_job_in_one_line(heavy):
    scattered = celerynb.scatter(np.zeros(300_000))  # 2.4 MB: by reference
    redis_of(heavy).delete(PREFIX + scattered._info["ref"]["key"])  # as if it expired
    job = celerynb.submit(element, scattered, 0)
    error = job.exception(timeout=30)
    assert isinstance(error, DataUnavailableError), repr(error)
    assert "no longer in the data store" in str(error) and "\n" not in str(error)


def peak_script(cluster, kind, size):
    broker, backend, secret = cluster.broker_url, cluster.backend_url, cluster.secret
    return textwrap.dedent(
        f"""
        import json, resource, celerynb
        celerynb.connect({broker!r}, backend={backend!r}, secret={secret!r}, store="redis")
        def make(kind, size):
            import numpy as np
            return np.ones(size, dtype="u1") if kind == "array" else b"x" * size
        celerynb.submit(make, "bytes", 10).result(timeout=60)  # everything imported
        before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
        value = celerynb.submit(make, {kind!r}, {size}).result(timeout=120)
        after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
        print(json.dumps({{"grew": after - before, "size": len(value)}}))
        """
    )


@pytest.mark.parametrize("kind", ["array", "bytes"])
def test_the_kernels_peak_memory_for_a_result_of_n_bytes_stays_under_3n(heavy_cluster, kind):
    size = 300 * MB
    script = peak_script(heavy_cluster, kind, size)
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=180
    )
    assert done.returncode == 0, done.stderr[-2000:]
    measured = json.loads(done.stdout.strip().splitlines()[-1])
    assert measured["size"] == size
    assert measured["grew"] < 3 * size, f"peak grew {measured['grew'] / size:.2f}x the result"


class LeavesAMark:
    def __init__(self, path):
        self.path = path

    def __reduce__(self):
        return (open, (self.path, "w"))


def test_a_stored_call_tampered_with_is_refused_before_unpickling(heavy, tmp_path):
    """The reference frame is genuine; the data it points to was changed in Redis."""
    mark = tmp_path / "unpickled"
    task_id = str(uuid.uuid4())
    evil = pickle.dumps(LeavesAMark(str(mark)))
    harmless = dumps((element, ([0.0] * 300_000, 0), {}))  # over the inline limit
    sealed = seal(harmless, secret=heavy.secret, purpose="call", task_id=task_id)
    reference = by_reference(heavy.data_store, sealed, secret=heavy.secret)
    key = PREFIX + reference.header["ref"]["key"]
    first = redis_of(heavy).hget(key, "0")
    start = first.index(bytes(harmless[0][:32]))
    redis_of(heavy).hset(key, "0", first[:start] + evil + first[start + len(evil) :])
    heavy.app.send_task(
        SHIPPED_TASK_NAME, args=[reference.tobytes()], task_id=task_id, serializer=SERIALIZER
    )
    job = celerynb.attach(task_id)
    error = job.exception(timeout=30)
    assert isinstance(error, PayloadRefusedError) and "bad signature" in str(error), repr(error)
    assert not mark.exists(), "the tampered payload was unpickled"
    redis_of(heavy).delete(key)  # sent by hand: no kernel's job removes it


def test_a_scattered_object_tampered_with_in_the_store_is_refused(heavy, tmp_path):
    scattered = celerynb.scatter(np.arange(300_000, dtype="f8"))
    key = PREFIX + scattered._info["ref"]["key"]
    chunk = bytearray(redis_of(heavy).hget(key, "0"))
    chunk[-100] ^= 0xFF  # one byte of the array
    redis_of(heavy).hset(key, "0", bytes(chunk))
    error = celerynb.submit(element, scattered, 1).exception(timeout=30)
    assert isinstance(error, PayloadRefusedError) and "bad signature" in str(error), repr(error)


def test_a_big_result_tampered_with_before_the_kernel_reads_it_fails_the_job(heavy, monkeypatch):
    held = threading.Event()
    release = threading.Event()
    original = heavy.transfers.run

    def hold_then_run(work):  # the kernel's read of the result waits until tampered with
        def later():
            held.set()
            release.wait(30)
            work()

        original(later)

    monkeypatch.setattr(heavy.transfers, "run", hold_then_run)
    job = celerynb.submit(big_bytes, 3 * MB)
    assert held.wait(30), job.status_line()
    (key,) = [key for key in data_keys(heavy) if b":result." in key]
    chunk = bytearray(redis_of(heavy).hget(key, "1"))
    chunk[10] ^= 0xFF
    redis_of(heavy).hset(key, "1", bytes(chunk))
    release.set()
    error = job.exception(timeout=30)
    assert isinstance(error, PayloadRefusedError) and "bad signature" in str(error), repr(error)
    assert wait_for(lambda: not redis_of(heavy).exists(key), timeout=10), "tampered data stayed"


def test_an_unreachable_store_fails_the_job_in_one_line_and_sends_nothing(
    heavy_cluster, tmp_path, monkeypatch
):
    import celerynb._session as session_module

    blocked = tmp_path / "not-a-directory"
    blocked.write_text("a file where the store's directory should be")
    session = celerynb.connect(heavy_cluster, store=f"file://{blocked}")
    try:
        mark = tmp_path / "ran"
        job = session.submit(touch_and_count, (str(mark), np.ones(500_000)))
        error = job.exception(timeout=30)
        assert isinstance(error, DataStoreError) and "\n" not in str(error), repr(error)
        assert "could not store" in str(error)
        # Nothing was sent: a job sent after it finishes, and it never reached a worker.
        assert session.submit(touch_and_count, (str(tmp_path / "later"), [1])).result(30) == 1
        assert session.app.backend.get_task_meta(job.id)["status"] == "PENDING"
        assert not mark.exists()
    finally:
        monkeypatch.setattr(session_module, "_current", None)
        session.close()


def touch_and_count(path, array):
    open(path, "w").close()
    return len(array)


def test_a_shared_file_store_carries_big_arguments_and_results(
    heavy_cluster, tmp_path, monkeypatch
):
    import celerynb._session as session_module

    store = tmp_path / "store"
    session = celerynb.connect(heavy_cluster, store=f"file://{store}")
    try:
        job = session.submit(big_bytes, (5 * MB,))
        value, digest = job.result(timeout=60)
        assert hashlib.sha256(value).hexdigest() == digest
        job = session.submit(touch_and_count, (str(tmp_path / "ran"), np.ones(500_000)))
        assert job.result(timeout=60) == 500_000
        assert wait_for(lambda: not os.listdir(store), timeout=10), os.listdir(store)
    finally:
        monkeypatch.setattr(session_module, "_current", None)
        session.close()


def test_jobs_keep_scattered_data_alive_until_they_are_done(heavy):
    import gc
    import itertools

    job = celerynb.submit(element, celerynb.scatter(np.arange(300_000.0)), 5)
    sweep = celerynb.map(element, itertools.repeat(celerynb.scatter(np.ones(300_000))), range(8))
    gc.collect()  # no variable holds either reference: the jobs do
    assert job.result(timeout=30) == 5.0
    assert sweep.results(timeout=30) == [1.0] * 8
    del job, sweep
    gc.collect()
    assert wait_for(lambda: not data_keys(heavy), timeout=10), data_keys(heavy)


def slow_element(gate, array, index):
    import os
    import time

    deadline = time.monotonic() + 30
    while not os.path.exists(gate) and time.monotonic() < deadline:
        time.sleep(0.02)
    return float(array[index])


def test_release_waits_for_the_jobs_that_carry_the_reference(heavy, tmp_path):
    gate = tmp_path / "gate"
    scattered = celerynb.scatter(np.arange(300_000.0))
    job = celerynb.submit(slow_element, str(gate), scattered, 7)
    scattered.release()
    assert data_keys(heavy), "released while a job still needed it"
    with pytest.raises(DataUnavailableError, match="released"):
        celerynb.submit(element, scattered, 0)
    gate.touch()
    assert job.result(timeout=30) == 7.0
    assert wait_for(lambda: not data_keys(heavy), timeout=10), "kept after its jobs were done"


def test_a_cell_reads_a_scattered_variable(heavy):
    namespace = {"frames": celerynb.scatter(np.arange(300_000.0))}
    job = celerynb.submit_cell("total = float(frames.sum())", namespace, outputs="total")
    assert job.result(timeout=30).values == {"total": float(np.arange(300_000.0).sum())}


def test_scattering_what_cannot_be_pickled_names_it(heavy):
    with pytest.raises(celerynb.SerializationError, match="cannot scatter lock"):
        celerynb.scatter(threading.Lock())


def test_a_local_clusters_own_directory_carries_big_data_privately(heavy_cluster, monkeypatch):
    import stat

    import celerynb._session as session_module

    monkeypatch.setattr(session_module, "_current", session_module._current)
    session = celerynb.connect(heavy_cluster)  # a LocalCluster's default store
    directory = heavy_cluster.store_url.removeprefix("file://")
    try:
        assert session.store_spec == heavy_cluster.store_url
        assert stat.S_IMODE(os.stat(directory).st_mode) == 0o700
        scattered = celerynb.scatter(np.arange(1_000_000.0))
        (entry,) = os.listdir(directory)
        assert stat.S_IMODE(os.stat(os.path.join(directory, entry)).st_mode) == 0o600
        job = celerynb.submit(total_and_first, np.ones(2_000_000))
        assert job.result(timeout=60) == (2_000_000.0, 1.0, True)
        assert celerynb.submit(element, scattered, 9).result(timeout=60) == 9.0
        value, digest = celerynb.submit(big_bytes, (5 * MB)).result(timeout=60)
        assert hashlib.sha256(value).hexdigest() == digest
        scattered.release()
        assert wait_for(lambda: not os.listdir(directory), timeout=10), os.listdir(directory)
    finally:
        session.close()
