"""Signed envelopes: verified before anything is unpickled."""

import pytest

from celerynb._errors import PayloadRefusedError, UntrustedResultError
from celerynb._signing import open_envelope, runtime_versions, seal

SECRET = b"s" * 32


def sealed(**overrides):
    envelope = seal(b"payload", secret=SECRET, purpose="call", task_id="t1")
    envelope.update(overrides)
    return envelope


def test_round_trip_returns_the_bytes():
    assert open_envelope(sealed(), secret=SECRET, purpose="call", task_id="t1") == b"payload"


def test_envelope_names_python_and_cloudpickle_versions():
    envelope = sealed()
    assert {k: envelope[k] for k in runtime_versions()} == runtime_versions()


@pytest.mark.parametrize(
    "envelope",
    [
        None,
        "not a dict",
        {k: v for k, v in sealed().items() if k != "mac"},
        sealed(data="cGF5bG9hZA=="[:-2] + "ZZ"),
        sealed(mac="0" * 64),
        sealed(task_id="t2"),
        sealed(purpose="result"),
    ],
    ids=["none", "string", "unsigned", "tampered-data", "bad-mac", "other-task", "other-purpose"],
)
def test_refuses_unsigned_tampered_and_replayed_payloads(envelope):
    with pytest.raises(PayloadRefusedError, match="refused"):
        open_envelope(envelope, secret=SECRET, purpose="call", task_id="t1")


def test_refuses_a_payload_signed_with_another_secret():
    with pytest.raises(PayloadRefusedError, match="another CELERYNB_SECRET"):
        open_envelope(sealed(), secret=b"other", purpose="call", task_id="t1")


def test_refuses_a_version_mismatch_naming_both_versions(monkeypatch):
    import celerynb._signing as signing

    envelope = sealed()
    monkeypatch.setattr(signing, "runtime_versions", lambda: {"python": "3.99", "cloudpickle": "0"})
    with pytest.raises(PayloadRefusedError) as info:
        open_envelope(envelope, secret=SECRET, purpose="call", task_id="t1")
    message = str(info.value)
    assert "3.99" in message and envelope["python"] in message


def test_result_envelopes_fail_as_untrusted_results():
    envelope = seal(b"x", secret=b"attacker", purpose="result", task_id="t1")
    with pytest.raises(UntrustedResultError):
        open_envelope(envelope, secret=SECRET, purpose="result", task_id="t1")
