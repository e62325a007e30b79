"""The run-once rule for shipped calls, with a clock the test controls (no server)."""

import pytest
from conftest import FakeClock

from celerynb._claims import (
    DONE,
    LEASE_SECONDS,
    Holder,
    LocalClaimStore,
    Refused,
    claim_key,
    claim_run,
)


@pytest.fixture
def clock():
    return FakeClock()


SECRET = b"s" * 32


def run(store, clock, me, *, alive=lambda pid: True, key="k"):
    claim_run(store, key, me, secret=SECRET, clock=clock, sleep=clock.sleep, alive=alive)


def signed(holder, key="k"):
    return holder.encode(key, SECRET)


def test_the_first_delivery_takes_the_claim_and_a_replay_after_it_finished_is_refused(clock):
    store = LocalClaimStore(clock)
    me = Holder("host", 10, "a")
    run(store, clock, me)
    store.finish("k", keep=3600)
    with pytest.raises(Refused, match="already ran"):
        run(store, clock, Holder("host", 11, "b"))
    assert clock.now == 1000.0  # refused at once, no waiting


def test_a_copy_delivered_while_the_run_is_alive_is_refused_after_one_lease(clock):
    store = LocalClaimStore(clock)
    original = Holder("host", 10, "a")
    run(store, clock, original)

    def sleep(seconds):  # the original's lease keeper renews meanwhile
        clock.now += seconds
        store.renew("k", signed(original), LEASE_SECONDS)

    with pytest.raises(Refused, match="running in host pid 10"):
        claim_run(store, "k", Holder("other", 20, "b"), secret=SECRET, clock=clock, sleep=sleep)
    assert LEASE_SECONDS <= clock.now - 1000.0 <= LEASE_SECONDS + 1


def test_a_redelivery_after_the_holder_died_elsewhere_runs_once_its_lease_expired(clock):
    store = LocalClaimStore(clock)
    run(store, clock, Holder("machine-a", 10, "a"))  # then machine-a dies: no renewal
    run(store, clock, Holder("machine-b", 20, "b"))
    assert LEASE_SECONDS - 1 <= clock.now - 1000.0 <= LEASE_SECONDS + 1
    assert store.current("k") == signed(Holder("machine-b", 20, "b"))


def test_a_redelivery_after_a_pool_process_died_on_this_machine_takes_over_at_once(clock):
    store = LocalClaimStore(clock)
    run(store, clock, Holder("host", 10, "a"))
    run(store, clock, Holder("host", 11, "b"), alive=lambda pid: pid != 10)
    assert clock.now == 1000.0
    assert store.current("k") == signed(Holder("host", 11, "b"))


def test_a_live_holder_on_this_machine_is_not_taken_over(clock):
    store = LocalClaimStore(clock)
    run(store, clock, Holder("host", 10, "a"))

    def sleep(seconds):
        clock.now += seconds
        store.renew("k", signed(Holder("host", 10, "a")), LEASE_SECONDS)

    with pytest.raises(Refused):
        claim_run(store, "k", Holder("host", 11, "b"), secret=SECRET, clock=clock, sleep=sleep)


def test_a_forged_claim_value_naming_a_dead_pool_process_is_not_taken_over(clock):
    """Only a claim a worker wrote (signed) is taken over when its process is gone."""
    store = LocalClaimStore(clock)
    store.try_claim("k", "host|10|tok|" + "0" * 32, LEASE_SECONDS)  # forged: pid 10 is dead

    def sleep(seconds):
        clock.now += seconds
        store.renew("k", "host|10|tok|" + "0" * 32, LEASE_SECONDS)  # and kept alive

    with pytest.raises(Refused):
        claim_run(
            store, "k", Holder("host", 11, "b"), secret=SECRET, clock=clock, sleep=sleep,
            alive=lambda pid: pid != 10,
        )  # fmt: skip


def test_claims_are_per_call_and_holders_round_trip():
    assert claim_key("t1", "n1") != claim_key("t1", "n2") != claim_key("t2", "n1")
    holder = Holder("a-host.example", 4242, "tok")
    assert Holder.parse(signed(holder), "k", SECRET) == holder
    assert Holder.parse(DONE, "k", SECRET) is None and Holder.parse(None, "k", SECRET) is None
    assert Holder.parse("garbage", "k", SECRET) is None
    assert Holder.parse(signed(holder, key="other"), "k", SECRET) is None  # another claim's
    assert Holder.parse("a-host.example|4242|tok|" + "0" * 32, "k", SECRET) is None  # forged


def test_a_local_store_forgets_expired_claims(clock):
    store = LocalClaimStore(clock)
    assert store.try_claim("k", "v", 5)
    assert not store.try_claim("k", "w", 5)
    clock.now += 5.1
    assert store.current("k") is None and store.try_claim("k", "w", 5)


def test_a_running_call_keeps_its_claim_past_the_lease_and_frees_it_when_done(clock):
    from celerynb._claims import LeaseKeeper

    store = LocalClaimStore(clock)
    me = Holder("host", 10, "a")
    run(store, clock, me)
    with LeaseKeeper(store, "k", me, SECRET):
        for _ in range(5):  # five leases long, renewed each third of a lease
            clock.now += LEASE_SECONDS / 3
            LeaseKeeper.renew_all()
        assert store.current("k") == signed(me)
        assert not store.try_claim("k", "copy", LEASE_SECONDS)
    clock.now += LEASE_SECONDS / 3
    LeaseKeeper.renew_all()  # no longer held here: not renewed
    clock.now += LEASE_SECONDS
    assert store.current("k") is None  # a dead run's claim lapses
