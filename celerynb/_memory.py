"""A LocalCluster's memory limit per worker process (the parsing and the limit itself).

The limit is the operating system's: ``RLIMIT_DATA`` of every pool process (its heap
and private writable mappings, numpy's arrays among them), set when the process
starts. An allocation past it fails at once with ``MemoryError``, before the
machine swaps; the task's job fails with ``MemoryLimitError`` naming the limit.
Celery's ``--max-memory-per-child`` also replaces a process whose resident memory
stays above the limit after a task (a leak).
"""

from __future__ import annotations

import math
import os
import re

from ._errors import MemoryLimitError

MEMORY_LIMIT_ENV = "CELERYNB_MEMORY_LIMIT"  # bytes, for the workers of a LocalCluster
MIN_LIMIT = 64 * 2**20  # no Python worker process runs in less

_UNITS = {
    "": 1,
    "b": 1,
    "kb": 10**3,
    "mb": 10**6,
    "gb": 10**9,
    "tb": 10**12,
    "kib": 2**10,
    "mib": 2**20,
    "gib": 2**30,
    "tib": 2**40,
}
_SIZE = re.compile(r"\s*([0-9]+(?:\.[0-9]*)?(?:e[0-9]+)?)\s*([a-z]*)\s*", re.IGNORECASE)


def physical_memory() -> int:
    """Bytes of memory this machine has."""
    return os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")


def memory_limit_bytes(value: str | int | float | None, processes: int) -> int | None:
    """The limit per worker process: ``value`` ("2GB", "512 MiB", bytes), ``"auto"``
    (the default: a fair share, the machine's memory over ``processes``), or None
    for no limit.

    Raises:
        ValueError: not a size, or under 64 MiB (no Python worker runs in less), or
            ``"auto"`` for more processes than get 64 MiB each.
    """
    if value is None:
        return None
    if isinstance(value, str) and value.strip().lower() == "auto":
        total = physical_memory()
        share = total // max(processes, 1)
        if share < MIN_LIMIT:
            raise ValueError(
                f"{processes} processes would get {readable_size(share)} of memory each "
                f"(memory_limit='auto' shares this machine's {readable_size(total)}); "
                f"at most {total // MIN_LIMIT} get the {readable_size(MIN_LIMIT)} a worker "
                "process needs (or pass memory_limit=None)"
            )
        return share
    not_a_size = ValueError(f"memory_limit must be a size such as '2GB', got {value!r}")
    if isinstance(value, bool):
        raise not_a_size
    if isinstance(value, int | float):
        number = value
    else:
        match = _SIZE.fullmatch(str(value))
        unit = match.group(2).lower() if match else None
        if match is None or unit not in _UNITS:
            raise not_a_size
        number = float(match.group(1)) * _UNITS[unit]
    if not math.isfinite(number):  # inf, nan: 1e400GB
        raise not_a_size
    size = int(number)
    if size < MIN_LIMIT:
        raise ValueError(f"memory_limit {value!r} is under 64 MiB: no worker process runs in that")
    return size


def readable_size(size: int) -> str:
    """``2.0 GB``, ``512.0 MB``: decimal units, as sizes are usually given."""
    for unit, factor in (("TB", 10**12), ("GB", 10**9), ("MB", 10**6)):
        if size >= factor:
            return f"{size / factor:.1f} {unit}"
    return f"{size} bytes"


def configured_limit() -> int | None:
    """``$CELERYNB_MEMORY_LIMIT`` (bytes), or None."""
    try:
        return int(os.environ.get(MEMORY_LIMIT_ENV, ""))
    except ValueError:
        return None


def limit_this_process() -> int | None:
    """Apply ``$CELERYNB_MEMORY_LIMIT`` to this process (a pool process at its start);
    the limit set, or None."""
    limit = configured_limit()
    if limit is None:
        return None
    import resource

    _soft, hard = resource.getrlimit(resource.RLIMIT_DATA)
    if hard != resource.RLIM_INFINITY:
        limit = min(limit, hard)
    resource.setrlimit(resource.RLIMIT_DATA, (limit, hard))
    return limit


def over_the_limit_line(error: MemoryError, limit: int) -> str:
    """What a task's job says when it went over the limit."""
    detail = f": {error}" if str(error) else ""
    return (
        f"the task went over the memory limit of {readable_size(limit)} per worker process "
        f"(LocalCluster(memory_limit=...)){detail}"
    )


def beyond_the_limit(error: Exception) -> Exception:
    """``error``, or a MemoryLimitError naming the limit when it is a MemoryError of a
    process under one."""
    limit = configured_limit()
    if not isinstance(error, MemoryError) or isinstance(error, MemoryLimitError) or not limit:
        return error
    # The allocation's traceback: where in the task the memory ran out.
    return MemoryLimitError(over_the_limit_line(error, limit)).with_traceback(error.__traceback__)
