"""Kernel side: a job's output lines, merged from the batches its task wrote (pure).

Batches (see ``_output``) are read from the backend, so they are untrusted: checked and
bounded here. Lines are merged by number, so a batch read twice, or late (catch-up
racing pub/sub), adds nothing twice and takes its place; a job keeps its last
``KEEP_LINES`` and counts the rest as dropped.
"""

from __future__ import annotations

import bisect
from collections import deque
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from ._output import DROPPED, STREAMS, Entry, cut_line, lines_in

KEEP_LINES = 1000  # lines a job keeps; older ones count as dropped
KEEP_CHARS = 256 * 1024  # and their text at most
MAX_BATCH_LINES_READ = 5000  # entries read from one batch


@dataclass(frozen=True)
class OutputTail:
    """The output a job kept: ``lines`` as ``(stream, text)`` in order (stream is
    ``stdout``, ``stderr`` or ``log``), and how many earlier or missing lines were
    ``dropped`` (not kept, rate-capped on the worker, or never received)."""

    lines: tuple[Entry, ...] = ()
    dropped: int = 0

    def __bool__(self) -> bool:
        return bool(self.lines) or self.dropped > 0

    def entries(self) -> list[Entry]:
        """The lines with ``dropped`` entries where lines are missing (first one: all
        the lines dropped before the first kept line)."""
        lines = list(self.lines)
        if self.dropped:
            lines.insert(0, (DROPPED, str(self.dropped)))
        return lines

    def text(self) -> str:
        """All of it as plain text, a ``… N lines dropped`` line where lines are missing."""
        return "\n".join(
            dropped_text(int(text)) if stream == DROPPED else text
            for stream, text in self.entries()
        )


def dropped_text(count: int) -> str:
    return f"… {count} line{'s' if count != 1 else ''} dropped"


class OutputLog:
    """The lines of a job as the kernel received them (not thread-safe: the caller locks).

    ``merge`` takes a batch read from the backend (untrusted: checked and bounded);
    ``append`` takes lines already checked (a group's, from its jobs). At most
    ``keep`` lines (``keep_chars`` of text) are kept, the latest by number.
    """

    def __init__(self, keep: int = KEEP_LINES, keep_chars: int = KEEP_CHARS) -> None:
        self.keep, self.keep_chars = keep, keep_chars
        self._chars = 0
        self._lines: dict[int, Entry] = {}
        self._order: list[int] = []  # the numbers kept, sorted
        self._high = 0  # one past the highest number seen
        self._base = 0  # where the current run's numbers start
        self._run: str | None = None
        self._old_runs: set[str] = set()
        self._extra_dropped = 0  # lines lost before they reached this log
        self._trimmed = 0  # lines no longer kept (a ``dropped`` entry: its count)
        self._through: dict[str, int] = {}  # per run: lines its task accounted for (sent
        # or dropped), the most a batch said: missed batches count too
        self.received = 0  # lines accepted so far, and the latest of them in arrival order:
        self._arrived: deque[Entry] = deque(maxlen=keep)  # for readers that follow along

    def merge(self, batch: Any) -> list[Entry]:
        """Take a batch ``{"run", "seq", "lines"}``; return the lines it added."""
        if not isinstance(batch, Mapping):
            return []
        run, seq, lines = batch.get("run"), _count(batch.get("seq")), batch.get("lines")
        if seq is None:
            return []
        if not isinstance(lines, list) or not isinstance(run, str) or len(run) > 64:
            return []
        if run != self._run:
            if run in self._old_runs:
                return []  # a late batch of an earlier run
            if self._run is not None:
                self._old_runs.add(self._run)
                if len(self._old_runs) > 100:
                    self._old_runs.pop()
            self._run, self._base = run, self._high
        through = _count(batch.get("through"))
        if through is not None and (len(self._through) < 100 or run in self._through):
            self._through[run] = max(self._through.get(run, 0), through)
        added = []
        for offset, raw in enumerate(lines[:MAX_BATCH_LINES_READ]):
            entry = _entry(raw)
            if entry is not None and self._add(self._base + seq + offset, entry):
                added.append(entry)
        return added

    def append(self, entries: Iterable[Entry]) -> None:
        """Lines that follow all others (already checked)."""
        for entry in entries:
            self._add(self._high, entry)

    def count_dropped(self, count: int) -> None:
        """``count`` lines were lost before reaching this log."""
        self._extra_dropped += max(count, 0)

    def _add(self, number: int, entry: Entry) -> bool:
        if number in self._lines:
            return False
        full = len(self._order) >= self.keep or self._chars >= self.keep_chars
        if full and number < self._order[0]:
            return False  # older than every line kept
        bisect.insort(self._order, number)
        self._lines[number] = entry
        self._chars += len(entry[1])
        while len(self._order) > 1 and (
            len(self._order) > self.keep or self._chars > self.keep_chars
        ):
            stream, text = self._lines.pop(self._order.pop(0))
            self._chars -= len(text)
            self._trimmed += lines_in([(stream, text)])
        self._high = max(self._high, number + 1)
        self.received += 1
        self._arrived.append(entry)
        return True

    def since(self, mark: int) -> tuple[list[Entry], int]:
        """The lines accepted after the first ``mark`` (as ``received`` counted them), in
        the order they came, and how many of those are no longer here to give."""
        new = self.received - mark
        available = min(new, len(self._arrived))
        entries = list(self._arrived)[len(self._arrived) - available :] if available else []
        return entries, new - available

    def tail(self) -> OutputTail:
        """What is kept now."""
        lines = tuple(self._lines[number] for number in self._order)
        missing = self._high - self.received + self._trimmed  # a missed ``dropped``: 1
        if self._through:  # the tasks said how many lines they had: all of them count
            missing = max(missing, sum(self._through.values()) - lines_in(lines))
        return OutputTail(lines, missing + self._extra_dropped)


def _count(raw: Any) -> int | None:
    """A batch's ``seq`` or ``through``, checked (None: absent or not a count)."""
    if isinstance(raw, int) and not isinstance(raw, bool) and 0 <= raw < 2**53:
        return raw
    return None


def _entry(raw: Any) -> Entry | None:
    """One line read from the backend, checked: a known stream and a bounded text
    without control characters (a tab and colour escapes stay)."""
    if not isinstance(raw, list | tuple) or len(raw) != 2:
        return None
    stream, text = raw
    if stream not in STREAMS and stream != DROPPED or not isinstance(text, str):
        return None
    if stream == DROPPED:
        return (DROPPED, text) if text.isascii() and text.isdigit() and len(text) <= 15 else None
    return (stream, cut_line(text).translate(_CONTROLS))


_CONTROLS = {code: "\ufffd" for code in (*range(0x20), 0x7F) if code not in (0x09, 0x1B)}
