"""Revokes that cannot reach the broker: kept, sent again with backoff, given up at the
bound; driven with a clock the test controls and a broker that fails on command."""

import contextlib

from conftest import FakeClock

from celerynb._revoker import FIRST_RETRY, MAX_RETRY, Revoker


class FlakyBroker:
    """An app whose broker is down while ``down`` and whose workers answer when up."""

    def __init__(self):
        self.down = True
        self.sent = []
        self.conf = type("Conf", (), {"broker_write_url": "redis://:secret@broker:6379/0"})()
        self.control = self

    @contextlib.contextmanager
    def connection_for_write(self):
        broker = self

        class Connection:
            def ensure_connection(self, max_retries):
                if broker.down:
                    raise ConnectionRefusedError("connection refused")

        yield Connection()

    def revoke(self, ids, **options):
        self.sent.append(list(ids))
        return [{"worker@host": {"ok": "revoked"}}]


def revoker(clock, broker, give_up_after=60.0):
    return Revoker(broker, stores_states=False, give_up_after=give_up_after, clock=clock)


def test_a_revoke_the_broker_did_not_take_is_noted_and_retried_with_backoff():
    clock, broker = FakeClock(), FlakyBroker()
    changes = []
    revokes = revoker(clock, broker)
    entry = [("t1", True, lambda: changes.append(revokes.note("t1")))]
    revokes._send(entry)
    note = revokes.note("t1")
    assert note.startswith("cancelled here, but the revoke has not reached the workers yet")
    assert "redis://:**@broker:6379/0" in note and "secret" not in note
    assert revokes._next_retry == clock.now + FIRST_RETRY
    waits = []
    for _ in range(6):  # still down: each try waits twice as long, up to MAX_RETRY
        clock.now = revokes._next_retry
        revokes._send(entry)
        waits.append(round(revokes._next_retry - clock.now, 3))
    assert waits == [1.0, 2.0, 4.0, MAX_RETRY, MAX_RETRY, MAX_RETRY]
    assert changes == [note]  # told once, not on every failed try
    broker.down = False
    clock.now = revokes._next_retry
    revokes._send(entry)
    assert broker.sent == [["t1"]] and revokes.note("t1") is None
    assert changes == [note, None] and revokes._retry_in == FIRST_RETRY


def test_a_revoke_is_given_up_at_its_bound_and_says_so():
    clock, broker = FakeClock(), FlakyBroker()
    revokes = revoker(clock, broker, give_up_after=30.0)
    revokes._send([("t1", False, None)])
    clock.now += 29.0
    revokes._send([("t1", False, None)])
    assert "has not reached" in revokes.note("t1")
    clock.now += 1.0
    revokes._send([("t1", False, None)])
    assert revokes.note("t1").startswith("cancelled here, but the revoke never reached")
    assert broker.sent == []  # the broker never took it
