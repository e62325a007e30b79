"""Big frames by reference (both sides): sealed, put in a data store, and replaced by
a small signed frame that says where they are.

``pack`` seals a payload; when the frame is larger than the inline limit it goes
to the data store and ``pack`` returns a reference frame instead (same purpose,
same id, signed too). ``unpack`` follows a reference: it reads the stored frame,
checks that its signature, purpose, id and nonce are the ones the reference
names, and only then hands its segments over for unpickling.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from typing import Any

from ._datastore import Buffer, DataStore, Progress
from ._errors import DataStoreError, PayloadRefusedError, UntrustedResultError
from ._signing import Opened, Sealed, open_envelope, seal

INLINE_ENV = "CELERYNB_INLINE_LIMIT"
# Bytes of a frame sent in the message itself. Measured (bench_map, 1,000,000 items in 8
# chunks): chunk results of ~600 KB by reference instead of inline (base64 in JSON through
# the result backend and the worker's main process) took the map from 0.79x to 0.95x
# ipyparallel's rate.
DEFAULT_INLINE_LIMIT = 64 * 1024
DEFAULT_TTL = 24 * 3600  # seconds stored data lives when nobody removes it


def inline_limit(explicit: int | None = None) -> int:
    """Frames bigger than this go by reference: ``explicit``, else
    ``$CELERYNB_INLINE_LIMIT`` (bytes), else 64 KiB."""
    if explicit is not None:
        return explicit
    try:
        return int(os.environ.get(INLINE_ENV) or DEFAULT_INLINE_LIMIT)
    except ValueError:
        return DEFAULT_INLINE_LIMIT


def stored_key(purpose: str, task_id: str, nonce: str) -> str:
    """The data store key of a frame sealed for ``purpose`` and ``task_id``."""
    return f"{purpose}.{task_id}.{nonce}"


def pack(
    segments: Sequence[Buffer],
    *,
    secret: bytes,
    purpose: str,
    task_id: str,
    store: DataStore | None,
    limit: int,
    ttl: int = DEFAULT_TTL,
    extra: dict[str, Any] | None = None,
    progress: Progress | None = None,
    no_store: Callable[[], str] | None = None,
) -> Sealed:
    """``segments`` sealed; by reference when the frame is over ``limit`` bytes.

    Raises:
        DataStoreError: the frame is too big to go inline and there is no store
            (the message says why, from ``no_store()``), or the store failed.
    """
    sealed = seal(segments, secret=secret, purpose=purpose, task_id=task_id, extra=extra)
    if sealed.size <= limit:
        return sealed
    if store is None:
        why = no_store() if no_store is not None else "no data store"
        raise DataStoreError(
            f"{purpose} of {sealed.size / 2**20:.1f} MiB is over the {limit / 2**20:.1f} MiB "
            f"sent inline, and there is {why}"
        )
    return by_reference(store, sealed, secret=secret, ttl=ttl, progress=progress)


def by_reference(
    store: DataStore,
    sealed: Sealed,
    *,
    secret: bytes,
    ttl: int = DEFAULT_TTL,
    progress: Progress | None = None,
) -> Sealed:
    """Put ``sealed`` in ``store``; return the small signed frame that refers to it
    (same purpose, id and extra header fields)."""
    header = sealed.header
    nonce = header["nonce"]
    key = stored_key(header["purpose"], header["task_id"], nonce)
    store.put(key, sealed.parts, sealed.size, ttl, progress)
    ref = {"store": store.spec, "key": key, "size": sealed.size, "nonce": nonce}
    kept = {k: v for k, v in header.items() if k in ("store", "inline", "ttl")}
    return seal(
        b"",
        secret=secret,
        purpose=header["purpose"],
        task_id=header["task_id"],
        extra={**kept, "ref": ref},
    )


def stored_ref(sealed: Sealed | Opened) -> dict[str, Any] | None:
    """The reference a packed frame carries (None: the payload is inline)."""
    ref = sealed.header.get("ref")
    return ref if isinstance(ref, dict) else None


def unpack(
    opened: Opened,
    *,
    secret: bytes,
    purpose: str,
    task_id: str,
    store_for: Callable[[str], DataStore | None],
    progress: Progress | None = None,
) -> Opened:
    """The frame a verified reference frame points to, verified in turn (or ``opened``
    itself when it is inline). Raises PayloadRefusedError (or UntrustedResultError)
    for a stored frame that does not match, DataUnavailableError when it is gone."""
    ref = opened.ref
    if ref is None:
        return opened
    return fetch_stored(
        ref, secret=secret, purpose=purpose, task_id=task_id, store_for=store_for, progress=progress
    )


def fetch_stored(
    ref: dict[str, Any],
    *,
    secret: bytes,
    purpose: str,
    task_id: str,
    store_for: Callable[[str], DataStore | None],
    progress: Progress | None = None,
) -> Opened:
    """The stored frame ``ref`` names (store, key, size, nonce), read and verified for
    ``purpose`` and ``task_id`` (a task id, or a scattered object's digest)."""
    refusal = PayloadRefusedError if purpose == "call" else UntrustedResultError
    spec, key, size = ref.get("store"), ref.get("key"), ref.get("size")
    if not isinstance(spec, str) or not isinstance(key, str) or not isinstance(size, int):
        raise refusal(f"refused a {purpose} reference for task {task_id}: malformed")
    store = store_for(spec)
    if store is None:
        raise DataStoreError(
            f"the {purpose} of task {task_id} is in a data store ({spec}) this process cannot reach"
        )
    data = store.get(key, size, progress)
    inner = open_envelope(data, secret=secret, purpose=purpose, task_id=task_id)
    if inner.header.get("nonce") != ref.get("nonce") or inner.ref is not None:
        raise refusal(
            f"refused the stored {purpose} of task {task_id}: it is not the frame its "
            "reference names (swapped?)"
        )
    return inner
