"""The data stores on their own: chunking (pure), a private Redis (expiry, a missing
chunk, a full server, references that do not match), and fsspec's memory:// store."""

import pickle

import pytest
import redis
from conftest import wait_for
from hypothesis import given
from hypothesis import strategies as st
from services import pings, start_redis

from celerynb import DataStoreError, DataUnavailableError, PayloadRefusedError
from celerynb._byref import by_reference, pack, unpack
from celerynb._datastore import CHUNK, PREFIX, FsspecDataStore, RedisDataStore, chunks_of
from celerynb._localstore import LocalDirectoryStore
from celerynb._payload import dumps, loads
from celerynb._processes import _stop_process
from celerynb._redis_server import free_port
from celerynb._signing import open_envelope, seal

SECRET = b"s3cret"


@given(st.lists(st.binary(max_size=50), max_size=8), st.integers(1, 40))
def test_chunks_are_the_concatenation_cut_in_pieces(parts, chunk):
    pieces = [bytes(piece) for piece in chunks_of(parts, chunk)]
    assert b"".join(pieces) == b"".join(parts)
    assert all(len(piece) == chunk for piece in pieces[:-1])
    assert not pieces or 0 < len(pieces[-1]) <= chunk


def test_a_piece_inside_one_part_is_a_view_not_a_copy():
    part = bytearray(3 * CHUNK)
    pieces = list(chunks_of([part], CHUNK))
    assert len(pieces) == 3 and all(isinstance(p, memoryview) for p in pieces)
    assert pieces[1].obj is part


@pytest.fixture(scope="module")
def private_redis(tmp_path_factory):
    port = free_port()
    server = start_redis(
        tmp_path_factory.mktemp("redis"), port, "--maxmemory", "64mb", "--maxmemory-policy",
        "noeviction",
    )  # fmt: skip
    client = redis.Redis(port=port)
    try:
        assert wait_for(lambda: pings(client), timeout=20)
        yield client
    finally:
        _stop_process(server)


@pytest.fixture
def store(private_redis):
    yield RedisDataStore(private_redis, "redis://127.0.0.1/0")
    keys = list(private_redis.scan_iter(match=PREFIX + "*"))
    if keys:
        private_redis.delete(*keys)


@pytest.mark.needs_server
def test_a_frame_comes_back_through_redis_with_an_expiry(store, private_redis):
    value = {"data": bytes(range(256)) * 20_000, "n": 3}  # 5 MB: three chunks
    sealed = seal(dumps(value), secret=SECRET, purpose="result", task_id="t1")
    moved = []
    store.put("k1", sealed.parts, sealed.size, 60, progress=moved.append)
    assert 0 < private_redis.ttl(PREFIX + "k1") <= 60  # a kernel that dies leaves nothing forever
    assert moved[-1] == sealed.size
    data = store.get("k1", sealed.size)
    opened = open_envelope(data, secret=SECRET, purpose="result", task_id="t1")
    assert loads(opened.segments) == value
    store.delete(["k1"])
    assert not private_redis.exists(PREFIX + "k1")
    assert not store.refresh("k1", 60)


@pytest.mark.needs_server
def test_a_missing_chunk_is_data_unavailable(store, private_redis):
    sealed = seal(b"x" * (3 * CHUNK), secret=SECRET, purpose="result", task_id="t1")
    store.put("k2", sealed.parts, sealed.size, 60)
    private_redis.hdel(PREFIX + "k2", "1")
    with pytest.raises(DataUnavailableError, match="no longer in the data store"):
        store.get("k2", sealed.size)


@pytest.mark.needs_server
def test_a_full_store_says_so_in_one_line(store):
    big = b"x" * (100 * 2**20)
    with pytest.raises(DataStoreError) as info:
        store.put("k3", [big], len(big), 60)
    assert "full" in str(info.value) and "\n" not in str(info.value)


class LeavesAMark:
    def __init__(self, path):
        self.path = path

    def __reduce__(self):
        return (open, (self.path, "w"))


@pytest.mark.needs_server
def test_a_reference_to_another_tasks_or_an_older_frame_is_refused(store, tmp_path):
    mark = tmp_path / "unpickled"
    segments = [pickle.dumps(LeavesAMark(str(mark))) + b"\0" * CHUNK]
    stores = {store.spec: store}.get
    mine = pack(segments, secret=SECRET, purpose="result", task_id="t1", store=store, limit=0)
    other = pack(segments, secret=SECRET, purpose="result", task_id="t2", store=store, limit=0)
    older = pack(segments, secret=SECRET, purpose="result", task_id="t1", store=store, limit=0)
    swap = {"t2": other, "older": older}
    for name, source in swap.items():  # the stored frame of ``mine`` replaced by another
        data = store.get(source.header["ref"]["key"], source.header["ref"]["size"])
        store.put(mine.header["ref"]["key"], [data], len(data), 60)
        reference = open_envelope(mine.tobytes(), secret=SECRET, purpose="result", task_id="t1")
        with pytest.raises(PayloadRefusedError, match="replayed|not the frame"):
            unpack(reference, secret=SECRET, purpose="result", task_id="t1", store_for=stores)
        assert name and not mark.exists()


def test_without_a_store_a_frame_over_the_limit_is_refused_in_one_line():
    with pytest.raises(DataStoreError, match="over the 0.0 MiB sent inline"):
        pack([b"x" * 100], secret=SECRET, purpose="call", task_id="t1", store=None, limit=10)


def test_the_fsspec_memory_store_moves_frames_and_sweeps_expired_ones():
    pytest.importorskip("fsspec")
    store = FsspecDataStore("memory://celerynb-test")
    sealed = seal(b"y" * (CHUNK + 10), secret=SECRET, purpose="call", task_id="t1")
    reference = by_reference(store, sealed, secret=SECRET)
    opened = open_envelope(reference.tobytes(), secret=SECRET, purpose="call", task_id="t1")
    inner = unpack(opened, secret=SECRET, purpose="call", task_id="t1", store_for=lambda _: store)
    assert inner.segments[0].tobytes() == b"y" * (CHUNK + 10)
    key = reference.header["ref"]["key"]
    store.sweep(ttl=3600, now=None)  # nothing old enough yet
    assert store.refresh(key, 3600)
    store._swept_at = None
    store.sweep(ttl=60, now=10**12)  # far in the future: expired
    assert not store.refresh(key, 3600)
    with pytest.raises(DataUnavailableError):
        store.get(key, sealed.size)


def test_a_local_directory_store_maps_a_frame_without_copying_it(tmp_path):
    np = pytest.importorskip("numpy")
    store = LocalDirectoryStore(f"file://{tmp_path}")
    array = np.arange(1_000_000, dtype=np.float64)
    sealed = seal(dumps(array), secret=b"k", purpose="result", task_id="t")
    store.put("result.t.n", sealed.parts, sealed.size, ttl=60)
    mapped = store.get("result.t.n", sealed.size)
    back = loads(open_envelope(mapped, secret=b"k", purpose="result", task_id="t").segments)
    assert np.array_equal(back, array)
    store.delete(["result.t.n"])  # the mapping outlives the file
    back[0] = -1.0  # writable, copy-on-write: the stored bytes do not change
    assert back[0] == -1.0 and back[1:].sum() == array[1:].sum()
    mapped_view = memoryview(mapped)
    assert np.shares_memory(back, np.frombuffer(mapped_view, dtype=np.uint8))
    with pytest.raises(DataUnavailableError, match="no longer in the data store"):
        store.get("result.t.n", sealed.size)


def test_a_pickle_changed_in_a_mapped_file_after_its_check_never_reaches_the_unpickler(tmp_path):
    store = LocalDirectoryStore(f"file://{tmp_path}")
    sealed = seal(dumps({"answer": 42}), secret=b"k", purpose="result", task_id="t")
    store.put("result.t.n", sealed.parts, sealed.size, ttl=60)
    mapped = store.get("result.t.n", sealed.size)
    opened = open_envelope(mapped, secret=b"k", purpose="result", task_id="t")
    stream = bytes(opened.segments[0])
    forged = stream.replace(pickle.dumps(42)[2:-1], pickle.dumps(66)[2:-1])
    assert forged != stream and len(forged) == len(stream)
    offset = bytes(memoryview(mapped)).index(stream)
    with open(tmp_path / "result.t.n", "r+b") as file:  # the file changes under the mapping
        file.seek(offset)
        file.write(forged)
    assert bytes(memoryview(mapped)[offset : offset + len(stream)]) == forged
    assert loads(opened.segments) == {"answer": 42}


def test_a_local_entry_shorter_than_its_reference_is_data_unavailable(tmp_path):
    store = LocalDirectoryStore(f"file://{tmp_path}")
    sealed = seal(b"x" * 1000, secret=b"k", purpose="result", task_id="t")
    store.put("result.t.n", sealed.parts, sealed.size, ttl=60)
    with pytest.raises(DataUnavailableError):
        store.get("result.t.n", sealed.size + 1)
