"""Worker side: a shipped call runs once, whoever replays its message.

A signed call can be captured (``MONITOR`` on the broker, a copied message) and
published again under the same task id: the signature still holds. Before a worker
runs a call it *claims* the call's (task id, nonce) in a store all workers share:

- nobody holds it: this run takes it, as a lease it renews while it runs;
- it is marked done: the call already ran (or was ended) — refused as a replay;
- another run holds it: a legitimate redelivery happens only when that run died
  (``acks_late`` after a lost worker, a visibility-timeout redelivery), so a holder
  on this machine whose process is gone is taken over at once, and otherwise the
  claim is waited for: a dead holder's lease expires within ``LEASE_SECONDS``, a
  live one keeps renewing it and this copy is refused as a duplicate.

The shared store is Redis (the result backend's, else the broker's). Where there
is none (``rpc://`` over RabbitMQ, a database backend), claims are per process,
which only catches replays that reach the same process; the signed time stamp
still bounds the age of any replay.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import os
import socket
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Protocol

from ._config import shared_redis

log = logging.getLogger(__name__)

LEASE_SECONDS = 10.0  # a run's claim lives this long unless renewed
RENEW_EVERY = LEASE_SECONDS / 3
WAIT_STEP = 0.25  # seconds between looks at a claim held by another run
DONE = "done"
GRANTED = "granted"
KEY_PREFIX = "celerynb-claim-"

_CAS_SET = """
if redis.call('get', KEYS[1]) == ARGV[1] then
  return redis.call('set', KEYS[1], ARGV[2], 'PX', ARGV[3])
end
return false
"""
_CAS_EXPIRE = """
if redis.call('get', KEYS[1]) == ARGV[1] then
  return redis.call('pexpire', KEYS[1], ARGV[2])
end
return 0
"""


def claim_key(task_id: str, nonce: str, attempt: int = 0) -> str:
    """The claim of one run of a call: its first (``attempt`` 0), or a retry of it."""
    return f"{KEY_PREFIX}{task_id}-{nonce}" + (f"-{attempt}" if attempt else "")


def run_attempt(request: Any) -> int:
    """Which run of its call a task request is: 0 the first, n its n-th retry."""
    retries = getattr(request, "retries", None)
    if retries is None:  # the worker's Request (main process) keeps it in its dict
        retries = (getattr(request, "request_dict", None) or {}).get("retries")
    return retries if type(retries) is int and retries > 0 else 0  # never a bool: JSON true


@dataclass(frozen=True)
class Holder:
    """The process running a call: machine, pid and a token of its own."""

    host: str
    pid: int
    token: str

    @classmethod
    def this_process(cls) -> Holder:
        return cls(socket.gethostname(), os.getpid(), uuid.uuid4().hex[:12])

    def encode(self, key: str, secret: bytes) -> str:
        """The claim's value: who holds ``key``, signed (a value written by anyone who can
        reach the store, naming some pool process, must not pass for a worker's)."""
        body = f"{self.host}|{self.pid}|{self.token}"
        return f"{body}|{_claim_mac(secret, key, body)}"

    @classmethod
    def parse(cls, value: str | None, key: str, secret: bytes) -> Holder | None:
        """The holder a claim value names, if a worker holding ``secret`` wrote it."""
        if not value or value == DONE:
            return None
        body, _, mac = value.rpartition("|")
        parts = body.rsplit("|", 2)
        if len(parts) != 3 or not parts[1].isdigit():
            return None
        if not hmac.compare_digest(mac, _claim_mac(secret, key, body)):
            return None
        return cls(parts[0], int(parts[1]), parts[2])


def _claim_mac(secret: bytes, key: str, body: str) -> str:
    return hmac.new(secret, f"{key}|{body}".encode(), hashlib.sha256).hexdigest()[:32]


class ClaimStore(Protocol):
    shared: bool  # True when every worker sees the same claims

    def try_claim(self, key: str, value: str, lease: float) -> bool: ...

    def current(self, key: str) -> str | None: ...

    def replace(self, key: str, old: str, new: str, lease: float) -> bool: ...

    def renew(self, key: str, value: str, lease: float) -> bool: ...

    def finish(self, key: str, keep: float) -> None: ...


class RedisClaimStore:
    """Claims as Redis keys with expiry (``SET NX PX``; compare-and-set in Lua)."""

    shared = True

    def __init__(self, client: Any) -> None:
        self._client = client
        self._cas_set = client.register_script(_CAS_SET)
        self._cas_expire = client.register_script(_CAS_EXPIRE)

    def try_claim(self, key: str, value: str, lease: float) -> bool:
        return bool(self._client.set(key, value, nx=True, px=_ms(lease)))

    def current(self, key: str) -> str | None:
        value = self._client.get(key)
        return value.decode() if isinstance(value, bytes) else value

    def replace(self, key: str, old: str, new: str, lease: float) -> bool:
        return bool(self._cas_set(keys=[key], args=[old, new, _ms(lease)]))

    def renew(self, key: str, value: str, lease: float) -> bool:
        return bool(self._cas_expire(keys=[key], args=[value, _ms(lease)]))

    def finish(self, key: str, keep: float) -> None:
        self._client.set(key, DONE, px=_ms(keep))

    def uses(self, client: Any) -> bool:
        """Whether this store's claims live on ``client``'s connection pool."""
        return client is self._client


class LocalClaimStore:
    """Claims in this process's memory: the fallback without a shared Redis."""

    shared = False

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._entries: dict[str, tuple[str, float]] = {}
        self._lock = threading.Lock()

    def _live(self, key: str) -> str | None:
        entry = self._entries.get(key)
        if entry is None or entry[1] <= self._clock():
            self._entries.pop(key, None)
            return None
        return entry[0]

    def try_claim(self, key: str, value: str, lease: float) -> bool:
        with self._lock:
            if self._live(key) is not None:
                return False
            self._entries[key] = (value, self._clock() + lease)
            return True

    def current(self, key: str) -> str | None:
        with self._lock:
            return self._live(key)

    def replace(self, key: str, old: str, new: str, lease: float) -> bool:
        with self._lock:
            if self._live(key) != old:
                return False
            self._entries[key] = (new, self._clock() + lease)
            return True

    def renew(self, key: str, value: str, lease: float) -> bool:
        return self.replace(key, value, value, lease)

    def finish(self, key: str, keep: float) -> None:
        with self._lock:
            self._entries[key] = (DONE, self._clock() + keep)
            if len(self._entries) > 100_000:  # bound memory: drop what expired
                for stale in [k for k in self._entries if self._live(k) is None]:
                    self._entries.pop(stale, None)


def process_alive(pid: int) -> bool:
    """Whether a process with ``pid`` exists on this machine."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


_claimed = threading.local()  # .runs: task id -> signed run, for calls this thread holds


@contextmanager
def holding_claim(task_id: str, run: dict[str, Any]) -> Iterator[None]:
    """Within it, this thread's run of ``task_id`` holds the claim: it may write STARTED,
    and every state it writes carries ``run``, its signed (hostname, pid), which is what
    the kernel judges the liveness of a shipped job by (a forged entry naming some
    worker cannot make it LOST)."""
    runs = getattr(_claimed, "runs", None)
    if runs is None:
        runs = _claimed.runs = {}
    runs[task_id] = run
    try:
        yield
    finally:
        runs.pop(task_id, None)


def signed_run(task_id: str) -> dict[str, Any] | None:
    """The signed run of ``task_id`` when this thread holds its claim, else None."""
    return getattr(_claimed, "runs", {}).get(task_id)


@dataclass
class Closing:
    """The claim of a run, to close (mark done) once its outcome is written: with that
    write, in the same round trip, where the store is the result backend's Redis. Its
    lease is renewed until then, however long the write takes: a claim left to expire
    would let a replay run the call again."""

    task_id: str
    store: ClaimStore
    key: str
    keep: float
    lease: LeaseKeeper | None = None  # renewing the claim until it is closed
    closed: bool = False

    def closed_by_write(self) -> None:
        """The outcome's write marked the claim done (``close_in``'s pipeline ran)."""
        self.closed = True
        self._stop_renewing()

    def _stop_renewing(self) -> None:
        if self.lease is not None:
            self.lease.release()

    def lives_on(self, client: Any) -> bool:
        """Whether the claim is a key of the Redis that ``client`` talks to."""
        return isinstance(self.store, RedisClaimStore) and self.store.uses(client)

    def close_in(self, pipe: Any) -> None:
        """Mark the claim done as one more command of ``pipe`` (a pipeline of the client
        the claim lives on); ``closed`` once ``pipe`` has run."""
        pipe.set(self.key, DONE, px=_ms(self.keep))

    def close(self) -> None:
        """Mark the claim done now, unless the outcome's write did (a failure to is
        logged: the claim's lease then runs out)."""
        if self.closed:
            return
        try:
            self.store.finish(self.key, keep=self.keep)
            self.closed = True
        except Exception as exc:
            log.warning("celerynb: could not close the claim of task %s: %s", self.task_id, exc)
        finally:
            self._stop_renewing()


def close_with_outcome(closing: Closing) -> None:
    """This thread's run returned: its claim closes when its outcome is written."""
    _claimed.closing = closing


def take_closing(task_id: str | None = None) -> Closing | None:
    """The claim of ``task_id`` (None: of any task) waiting for its outcome's write in
    this thread, if any (handed over once: whoever takes it closes it)."""
    closing = getattr(_claimed, "closing", None)
    if closing is None or (task_id is not None and closing.task_id != task_id):
        return None
    _claimed.closing = None
    return closing


class Refused(Exception):
    """This delivery of a call must not run; ``str()`` says why."""


def granted(key: str, secret: bytes) -> str:
    """The value that opens the claim ``key`` of a retry: written, signed, by the run
    that failed and asked for it (a retry header alone opens nothing)."""
    return f"{GRANTED}|{_claim_mac(secret, key, GRANTED)}"


def grant_retry(store: ClaimStore, key: str, secret: bytes, keep: float) -> None:
    """Open the claim ``key`` for the retry the failing run is about to send."""
    store.try_claim(key, granted(key, secret), keep)


def claim_run(
    store: ClaimStore,
    key: str,
    me: Holder,
    *,
    secret: bytes,
    lease: float = LEASE_SECONDS,
    clock: Callable[[], float] = time.monotonic,
    sleep: Callable[[float], None] = time.sleep,
    alive: Callable[[int], bool] = process_alive,
    retry: bool = False,
) -> None:
    """Take the claim ``key`` for ``me``, or raise Refused (see the module's rules).

    ``retry``: the claim of a retry, which only a grant opens (``grant_retry``) where
    claims are shared; a retry nobody granted is a replay under a forged header."""
    mine = me.encode(key, secret)
    deadline = clock() + lease + 2 * WAIT_STEP
    while True:
        if retry and store.shared:
            if store.replace(key, granted(key, secret), mine, lease):
                return
        elif store.try_claim(key, mine, lease):
            return
        value = store.current(key)
        if value == DONE:
            raise Refused("it already ran: a replayed or duplicate message")
        if retry and store.shared and value is None:
            raise Refused("a retry no failed run asked for: a replayed or forged message")
        holder = Holder.parse(value, key, secret)  # None too for a forged value
        if holder is not None and holder.host == me.host and not alive(holder.pid):
            if store.replace(key, value, mine, lease):  # type: ignore[arg-type]
                log.info("celerynb: run of %s taken over from dead pid %s", key, holder.pid)
                return
            continue
        if clock() >= deadline:
            where = f"{holder.host} pid {holder.pid}" if holder else "another process"
            raise Refused(f"it is running in {where}: a replayed or duplicate message")
        sleep(WAIT_STEP)


class LeaseKeeper:
    """Renews a claim while a call runs. One daemon thread per process renews every
    claim held there (no thread is started per call)."""

    _held: dict[tuple[int, str], tuple[ClaimStore, str, float]] = {}
    _lock = threading.Lock()
    _thread: threading.Thread | None = None
    _thread_pid = 0

    def __init__(
        self, store: ClaimStore, key: str, me: Holder, secret: bytes, lease: float = LEASE_SECONDS
    ):
        self._entry = (id(store), key), (store, me.encode(key, secret), lease)

    def hold(self) -> LeaseKeeper:
        """Renew the claim from now on, until ``release()``."""
        cls = type(self)
        with cls._lock:
            cls._held[self._entry[0]] = self._entry[1]
            if cls._thread is None or cls._thread_pid != os.getpid():  # a forked child too
                cls._thread_pid = os.getpid()
                cls._thread = threading.Thread(
                    target=cls._renew_forever, name="celerynb-leases", daemon=True
                )
                cls._thread.start()
        return self

    def release(self) -> None:
        """Stop renewing the claim (closed, or left to its lease)."""
        with type(self)._lock:
            type(self)._held.pop(self._entry[0], None)

    def __enter__(self) -> LeaseKeeper:
        return self.hold()

    def __exit__(self, *exc_info: Any) -> None:
        self.release()

    @classmethod
    def _renew_forever(cls) -> None:
        while True:
            time.sleep(RENEW_EVERY)
            cls.renew_all()

    @classmethod
    def renew_all(cls) -> None:
        """Extend every claim held in this process by its lease (one round)."""
        with cls._lock:
            held = list(cls._held.items())
        for entry, (store, value, lease) in held:
            try:
                if not store.renew(entry[1], value, lease):
                    with cls._lock:
                        cls._held.pop(entry, None)
                    if store.current(entry[1]) != DONE:  # done: closed as this round ran
                        log.warning("celerynb: lost the claim %s (its lease expired)", entry[1])
            except Exception as exc:  # a store outage: the next round tries again
                log.debug("celerynb: renewing %s failed: %s", entry[1], exc)


_stores: dict[tuple[int, int], ClaimStore] = {}
_stores_lock = threading.Lock()


def store_for(app: Any) -> ClaimStore:
    """This process's claim store for ``app``: Redis where the app has one."""
    cache_key = (os.getpid(), id(app))  # a forked pool child needs its own connections
    with _stores_lock:
        store = _stores.get(cache_key)
        if store is None:
            store = _stores[cache_key] = _make_store(app)
        return store


def _make_store(app: Any) -> ClaimStore:
    found = shared_redis(app, socket_timeout=10)
    return RedisClaimStore(found[0]) if found is not None else LocalClaimStore()


def _ms(seconds: float) -> int:
    return max(int(seconds * 1000), 1)
