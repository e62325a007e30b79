"""Signed binary frames: verified before anything is unpickled."""

import struct

import pytest

from celerynb import PayloadRefusedError, UntrustedResultError
from celerynb._payload import dumps, loads
from celerynb._signing import ALIGN, as_json, is_envelope, open_envelope, runtime_versions, seal

SECRET = b"s3cret"


def frame(data=b"payload", **options):
    options = {"secret": SECRET, "purpose": "call", "task_id": "t1", **options}
    return bytearray(seal(data, **options).tobytes())


def flipped(raw, offset):
    raw = bytearray(raw)
    raw[offset] ^= 0x01
    return raw


def header_length(raw):
    return struct.unpack(">I", raw[36:40])[0]


def test_round_trip_gives_back_the_segments():
    opened = open_envelope(frame(), secret=SECRET, purpose="call", task_id="t1")
    assert [s.tobytes() for s in opened.segments] == [b"payload"]


def test_the_header_names_python_and_cloudpickle_versions():
    opened = open_envelope(frame(), secret=SECRET, purpose="call", task_id="t1")
    assert {k: opened.header[k] for k in runtime_versions()} == runtime_versions()


def test_big_buffers_are_aligned_views_of_the_frame_and_arrays_come_back_writable():
    np = pytest.importorskip("numpy")
    array = np.arange(100_000, dtype="f8")
    raw = frame(dumps({"a": array, "n": 1}), purpose="result")
    opened = open_envelope(raw, secret=SECRET, purpose="result", task_id="t1")
    value = loads(opened.segments)
    assert (value["a"] == array).all() and value["n"] == 1
    assert value["a"].flags.writeable and value["a"].flags.aligned
    assert np.shares_memory(value["a"], np.frombuffer(raw, dtype="u1")), "copied"
    offsets = [raw.find(bytes(s[:64])) for s in opened.segments[1:]]
    assert all(offset % ALIGN == 0 for offset in offsets)


def test_the_json_form_carries_the_same_frame():
    raw = frame(b"x", purpose="result")
    envelope = as_json(bytes(raw))
    assert is_envelope(envelope) and is_envelope(bytes(raw)) and not is_envelope({"mac": 1})
    opened = open_envelope(envelope, secret=SECRET, purpose="result", task_id="t1")
    assert opened.segments[0].tobytes() == b"x"


def tampered_frames():
    raw = frame()
    payload_at = len(raw) - ALIGN  # the one 7-byte segment sits in the last 64 bytes
    return {
        "no signature": b"payload",
        "payload byte": flipped(raw, payload_at),
        "signature byte": flipped(raw, 10),
        "header byte": flipped(raw, 40 + header_length(raw) // 2),
        "truncated": raw[: payload_at + 3],
        "header length": raw[:36] + struct.pack(">I", 10**9) + raw[40:],
        "empty": b"",
        "not bytes": {"celerynb": 3, "frame": 12},
        "json garbage": {"celerynb": 3, "frame": "!!!"},
    }


@pytest.mark.parametrize("kind", list(tampered_frames()))
def test_refuses_unsigned_tampered_and_truncated_frames(kind):
    with pytest.raises(PayloadRefusedError, match="refused"):
        open_envelope(tampered_frames()[kind], secret=SECRET, purpose="call", task_id="t1")


def test_refuses_a_frame_replayed_for_another_task_or_purpose():
    with pytest.raises(PayloadRefusedError, match="replayed"):
        open_envelope(frame(), secret=SECRET, purpose="call", task_id="t2")
    with pytest.raises(UntrustedResultError, match="replayed"):
        open_envelope(frame(), secret=SECRET, purpose="result", task_id="t1")


def test_refuses_a_payload_signed_with_another_secret():
    with pytest.raises(PayloadRefusedError, match="another CELERYNB_SECRET"):
        open_envelope(frame(), secret=b"other", purpose="call", task_id="t1")


def test_refuses_a_version_mismatch_naming_both_versions(monkeypatch):
    import celerynb._signing as signing

    raw = frame()
    monkeypatch.setattr(signing, "runtime_versions", lambda: {"python": "3.99", "cloudpickle": "0"})
    with pytest.raises(PayloadRefusedError) as info:
        open_envelope(raw, secret=SECRET, purpose="call", task_id="t1")
    message = str(info.value)
    import sys

    assert "3.99" in message and f"{sys.version_info[0]}.{sys.version_info[1]}" in message


def test_result_frames_fail_as_untrusted_results():
    raw = frame(b"x", secret=b"attacker", purpose="result")
    with pytest.raises(UntrustedResultError):
        open_envelope(raw, secret=SECRET, purpose="result", task_id="t1")


def test_big_bytes_travel_out_of_band_and_come_back_equal():
    big = b"x" * 100_000
    for value in (big, bytearray(big), (1, big), {"k": big}, [big]):
        segments = dumps(value)
        assert len(segments) == 2 and segments[1].nbytes == len(big)
        assert loads(segments) == value and type(loads(segments)) is type(value)
