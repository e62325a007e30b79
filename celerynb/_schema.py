"""The PROGRESS meta schema, shared by the worker side and the kernel side (pure).

A task reporting progress stores Celery state ``PROGRESS`` with this meta::

    {
      "schema": "celerynb.progress/1",
      "n": 450, "total": 1000, "desc": "simulate", "unit": "it",
      "rate": 2110.5, "elapsed": 0.21, "postfix": "loss=0.3",
      "bars": [{"n":..., "total":..., "desc":..., "unit":..., "rate":...,
                "elapsed":..., "postfix":...}, ...],        # every bar, outermost first
      "current": 450, "percent": 45.0, "description": "simulate",   # celery-progress keys
      "updated": 1764000000.123, "hostname": "celery@host", "pid": 4242,
      "output": {"run": "1f2e-3a4b5c6d", "seq": 120,                # optional: new lines
                 "lines": [["stdout", "epoch 3"], ["log", "WARNING fit: slow"], ...],
                 "through": 5123}
    }

``output`` carries the task's stdout, stderr and logging lines written since the last
write, numbered from ``seq``, and ``through``: how many lines the task has accounted for
so far, sent or dropped (see ``_output``).

The top-level bar fields repeat the outermost open bar. ``current``, ``total``,
``percent`` and ``description`` are the keys celery-progress writes, so either tool
reads the other's progress.
"""

from __future__ import annotations

import math
import re
import time
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import Any

from celery import states

PROGRESS = "PROGRESS"
RUN_KEY = "celerynb_run"  # in a shipped call's states: its signed (hostname, pid)
# In a shipped call's final result: the bars it reported last, for a kernel that
# subscribed after they were published (a quick job); display only, like all progress.
FINAL_BARS_KEY = "celerynb_bars"
OUTPUT_KEY = "output"  # in PROGRESS meta: a batch of output lines (see ``_output``)
# In a shipped call's final result: its latest output lines, for a kernel that did not
# read the PROGRESS that carried them (a polled backend); display only, like the bars.
FINAL_OUTPUT_KEY = "celerynb_output"
# Published on a task's channel instead of a state too big to publish (Redis drops a
# subscriber whose output buffer passes 32 MB): the kernel reads the key instead.
STORED_MARKER = b"celerynb:stored"
PUBLISH_LIMIT = 1 << 20  # bytes of a state published as is; bigger ones: the marker

# celerynb's own states, set by the kernel, never read from a backend.
LOST = "LOST"  # the job's worker is gone
REQUEUED = "REQUEUED"  # its worker is gone, and the app re-queues the task (acks_late)
UNKNOWN = "UNKNOWN"  # an attached task with no stored state that no worker has
KNOWN_STATES = frozenset(states.ALL_STATES) | {PROGRESS}
RUNNING_STATES = frozenset({states.STARTED, PROGRESS})  # a worker runs the task now
# A custom state of a user's app (``update_state(state="DOWNLOADING")``).
_CUSTOM_STATE = re.compile(r"[A-Z][A-Z0-9_]{0,31}")


def acceptable_state(state: Any, *, custom: bool) -> bool:
    """Whether a state read from a backend is taken as a state at all.

    Celery's states and PROGRESS always; with ``custom``, also an app's own state
    names of up to 32 capitals, digits and underscores (never celerynb's own names).
    Anything else (markup, control characters, a non-string) is refused.
    """
    if not isinstance(state, str):
        return False
    if state in KNOWN_STATES:
        return True
    return (
        custom
        and state not in (LOST, REQUEUED, UNKNOWN)
        and _CUSTOM_STATE.fullmatch(state) is not None
    )


SCHEMA = "celerynb.progress/1"
BAR_FIELDS = ("n", "total", "desc", "unit", "rate", "elapsed", "postfix")


def percent_of(n: float, total: float | None) -> float | None:
    """Percentage done, or None when the total is unknown."""
    if not total:
        return None
    return round(100.0 * n / total, 2)


def bar_meta(
    n: float,
    total: float | None,
    desc: str | None = None,
    unit: str = "it",
    rate: float | None = None,
    elapsed: float = 0.0,
    postfix: str | None = None,
) -> dict[str, Any]:
    """One bar's part of the meta, with JSON-safe numbers."""
    return {
        "n": _number(n),
        "total": _number(total),
        "desc": desc or "",
        "unit": unit,
        "rate": _number(rate),
        "elapsed": round(float(elapsed), 3),
        "postfix": postfix or "",
    }


def task_meta(
    bars: list[dict[str, Any]],
    hostname: str | None = None,
    pid: int | None = None,
    now: float | None = None,
) -> dict[str, Any]:
    """The whole PROGRESS meta for a task's bars (outermost first)."""
    primary = bars[0] if bars else bar_meta(0, None)
    meta: dict[str, Any] = {"schema": SCHEMA, **primary, "bars": bars}
    meta["current"] = primary["n"]
    meta["percent"] = percent_of(primary["n"], primary["total"]) or 0.0
    meta["description"] = primary["desc"]
    meta["updated"] = time.time() if now is None else now
    meta["hostname"] = hostname
    meta["pid"] = pid
    return meta


@dataclass(frozen=True)
class BarSnapshot:
    """One progress bar as last reported by a task."""

    n: float = 0
    total: float | None = None
    desc: str = ""
    unit: str = "it"
    rate: float | None = None
    elapsed: float = 0.0
    postfix: str = ""

    @property
    def percent(self) -> float | None:
        return percent_of(self.n, self.total)

    @property
    def eta(self) -> float | None:
        """Seconds left at the current rate, or None when unknown."""
        if not self.total or not self.rate:
            return None
        return max(self.total - self.n, 0) / self.rate


@dataclass(frozen=True)
class ProgressSnapshot:
    """What a job's progress was at one moment, whatever tool reported it.

    ``n``, ``total``, ``desc``... describe the outermost bar; ``bars`` holds them all.
    """

    state: str = "PENDING"
    bars: tuple[BarSnapshot, ...] = ()
    updated: float | None = None
    hostname: str | None = None
    pid: int | None = None
    extra: Mapping[str, Any] = field(default_factory=dict, repr=False)  # the raw meta

    @property
    def primary(self) -> BarSnapshot:
        return self.bars[0] if self.bars else BarSnapshot()

    @property
    def n(self) -> float:
        return self.primary.n

    @property
    def total(self) -> float | None:
        return self.primary.total

    @property
    def desc(self) -> str:
        return self.primary.desc

    @property
    def unit(self) -> str:
        return self.primary.unit

    @property
    def rate(self) -> float | None:
        return self.primary.rate

    @property
    def elapsed(self) -> float:
        return self.primary.elapsed

    @property
    def postfix(self) -> str:
        return self.primary.postfix

    @property
    def percent(self) -> float | None:
        return self.primary.percent

    @property
    def eta(self) -> float | None:
        return self.primary.eta

    def with_state(self, state: str) -> ProgressSnapshot:
        return ProgressSnapshot(state, self.bars, self.updated, self.hostname, self.pid, self.extra)

    def completed(self) -> ProgressSnapshot:
        """Every bar with a total at its total: for a success whose last progress
        writes were not seen (a polled backend keeps only the latest state)."""
        bars = tuple(
            replace(bar, n=bar.total) if bar.total is not None and bar.n < bar.total else bar
            for bar in self.bars
        )
        return ProgressSnapshot(self.state, bars, self.updated, self.hostname, self.pid, self.extra)


def parse_meta(state: str, meta: Any, previous: ProgressSnapshot | None = None) -> ProgressSnapshot:
    """Read a task's state and meta into a snapshot.

    Understands celerynb's schema, celery-progress's ``current/total/description``
    and Celery's STARTED meta (``pid``, ``hostname``). A final state's meta is the
    task's result, not progress: SUCCESS, FAILURE... take the bars celerynb's worker
    sent with it (``FINAL_BARS_KEY``: their last state, a finished transfer's left
    out), else keep the previous snapshot's (and nothing of the result: it may be large).
    """
    previous = previous or ProgressSnapshot()
    if not isinstance(meta, Mapping) or state in states.READY_STATES:
        bars = previous.bars
        final = meta.get(FINAL_BARS_KEY) if isinstance(meta, Mapping) else None
        if isinstance(final, list):
            bars = tuple(_bar_from(b) for b in final if isinstance(b, Mapping))
        return ProgressSnapshot(state, bars, previous.updated, previous.hostname, previous.pid)
    hostname = meta.get("hostname")
    hostname = hostname if isinstance(hostname, str) and hostname else previous.hostname
    pid = meta.get("pid")
    pid = pid if isinstance(pid, int) and not isinstance(pid, bool) else previous.pid
    if meta.get("schema") == SCHEMA and isinstance(meta.get("bars"), list):
        bars = tuple(_bar_from(b) for b in meta["bars"] if isinstance(b, Mapping))
    elif "current" in meta and "total" in meta:
        bars = (
            BarSnapshot(
                n=_number(meta.get("current")) or 0,
                total=_number(meta.get("total")),
                desc=str(meta.get("description") or ""),
            ),
        )
    else:
        bars = previous.bars
    updated = _number(meta.get("updated")) or previous.updated
    return ProgressSnapshot(state, bars, updated, hostname, pid, dict(meta))


def _bar_from(raw: Mapping[str, Any]) -> BarSnapshot:
    return BarSnapshot(
        n=_number(raw.get("n")) or 0,
        total=_number(raw.get("total")),
        desc=str(raw.get("desc") or ""),
        unit=str(raw.get("unit") or "it"),
        rate=_number(raw.get("rate")),
        elapsed=_number(raw.get("elapsed")) or 0.0,
        postfix=str(raw.get("postfix") or ""),
    )


def _number(value: Any) -> float | None:
    """A finite int/float, or None (NaN and inf do not survive JSON)."""
    if value is None or isinstance(value, bool):
        return None
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    if not math.isfinite(number):
        return None
    return int(number) if number.is_integer() else number
