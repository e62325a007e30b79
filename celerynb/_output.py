"""Live output of a job, as lines (pure, shared by the worker side and the kernel side).

A running task's stdout, stderr and logging records become numbered lines. The worker
keeps them in an ``OutputBuffer`` and sends them in bounded batches inside the PROGRESS
meta it writes anyway (key ``"output"``, see ``_schema``)::

    {"run": "3f2a9c1d", "seq": 120, "lines": [["stdout", "epoch 3"], ["dropped", "5000"],
                                              ["log", "WARNING fit: slow"], ...]}

``seq`` numbers the first line; ``run`` tells one run of the task from another (a retry
numbers its lines from 0 again). A ``dropped`` entry stands where lines were dropped
(its text is how many). The kernel merges batches into an ``OutputLog`` by number, so
a batch seen twice or late adds nothing twice, and keeps the last ``KEEP_LINES``.
"""

from __future__ import annotations

import bisect
import time
from collections import deque
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

STREAMS = ("stdout", "stderr", "log")
DROPPED = "dropped"  # an entry standing for lines that were dropped; its text: how many
MAX_LINE_CHARS = 1000  # a longer line keeps its start and says how much was cut
KEEP_LINES = 1000  # lines a job keeps (the kernel); older ones count as dropped
MAX_PENDING_LINES = 1000  # lines a worker holds unsent; older ones are dropped first
MAX_PENDING_CHARS = 256 * 1024
MAX_BATCH_CHARS = 64 * 1024  # text in one write
RATE_CHARS_PER_SECOND = 64 * 1024  # sustained text sent per task (a burst may send more)
BURST_CHARS = 256 * 1024
LINE_COST = 16  # chars charged per line on top of its text (the JSON around it)
RECENT_CHARS = 16 * 1024  # lines already sent that a write may carry again (see ``take``)
MAX_BATCH_LINES_READ = 5000  # entries the kernel reads from one batch (untrusted)

Entry = tuple[str, str]  # (stream, text)


def cut_line(text: str, limit: int = MAX_LINE_CHARS) -> str:
    """``text`` within ``limit`` characters, saying how many were cut."""
    if len(text) <= limit:
        return text
    return f"{text[:limit]}… [{len(text) - limit} characters cut]"


class OutputBuffer:
    """A task's lines not yet sent (worker side, pure: time comes from ``clock``).

    ``write(stream, text)`` takes text as a stream receives it: lines end at ``\\n``; a
    line redrawn after ``\\r`` (a text progress bar) keeps only its last version, as a
    terminal shows it; an unfinished line is held until it ends or the task does
    (``end_lines``). At most ``MAX_PENDING_LINES`` / ``MAX_PENDING_CHARS`` wait: past
    that the oldest are dropped, and a ``dropped`` entry says how many. ``take()``
    gives the next batch, within the rate cap (a token bucket of characters).
    """

    def __init__(
        self,
        run: str,
        *,
        clock: Callable[[], float] = time.monotonic,
        rate: float = RATE_CHARS_PER_SECOND,
        burst: float = BURST_CHARS,
        max_pending_lines: int = MAX_PENDING_LINES,
        max_pending_chars: int = MAX_PENDING_CHARS,
    ) -> None:
        self.run = run
        self._clock = clock
        self._rate, self._burst = rate, burst
        self._tokens = burst
        self._refilled = clock()
        self._max_lines, self._max_chars = max_pending_lines, max_pending_chars
        self._partial: dict[str, str] = {}
        self._pending: deque[Entry] = deque()
        self._pending_chars = 0
        self._dropped = 0  # dropped before the first line waiting: sent as a ``dropped`` entry
        self.dropped_total = 0
        self._next_seq = 0
        self._sent: deque[tuple[float, list[str]]] = deque()  # (when, line), the latest sent
        self._sent_chars = 0

    # -- in ----------------------------------------------------------------------
    def write(self, stream: str, text: str) -> None:
        """Text written to ``stream`` (``stdout`` or ``stderr``)."""
        if not text:
            return
        parts = (self._partial.pop(stream, "") + text).split("\n")
        for line in parts[:-1]:
            self._queue(stream, _last_version(line))
        rest = parts[-1]
        if rest:
            # Only what a redraw would show is kept: the text after the last ``\r`` that
            # has text after it; a trailing ``\r`` waits to see whether ``\n`` follows.
            drawn = rest.rstrip("\r")
            kept = drawn.rpartition("\r")[2][: MAX_LINE_CHARS * 2]  # bounded however long
            self._partial[stream] = kept + rest[len(drawn) :][:1]

    def log(self, text: str) -> None:
        """One logging record, formatted (it may span lines: a traceback)."""
        for line in text.splitlines() or [""]:
            self._queue("log", line)

    def end_lines(self) -> None:
        """The task ends: unfinished lines count as lines."""
        for stream in sorted(self._partial):
            line = _last_version(self._partial.pop(stream))
            if line:
                self._queue(stream, line)

    def _queue(self, stream: str, line: str) -> None:
        line = cut_line(line)
        self._pending.append((stream, line))
        self._pending_chars += len(line) + LINE_COST
        while len(self._pending) > self._max_lines or self._pending_chars > self._max_chars:
            _, old = self._pending.popleft()  # the oldest goes: the latest lines matter most
            self._pending_chars -= len(old) + LINE_COST
            self._dropped += 1
            self.dropped_total += 1

    # -- out ---------------------------------------------------------------------
    @property
    def pending(self) -> bool:
        """Whether lines wait to be sent."""
        return bool(self._pending)

    def take(self, *, final: bool = False, again: float = 0.0) -> dict[str, Any] | None:
        """The next batch (None: nothing to send now), within ``MAX_BATCH_CHARS`` and the
        rate cap. ``final``: the task is ending: the rate cap does not hold back (what
        waits is bounded anyway); call until it gives None. ``again``: the batch also
        carries the lines sent in the last ``again`` seconds (at most ``RECENT_CHARS``),
        for a kernel that polls and so reads only some of the writes."""
        now = self._clock()
        self._tokens = min(self._burst, self._tokens + (now - self._refilled) * self._rate)
        self._refilled = now
        budget = MAX_BATCH_CHARS if final else min(MAX_BATCH_CHARS, self._tokens)
        lines: list[list[str]] = []
        spent = 0
        if self._pending and self._dropped:
            lines.append([DROPPED, str(self._dropped)])
            spent, self._dropped = LINE_COST, 0
        while self._pending:
            stream, text = self._pending[0]
            cost = len(text) + LINE_COST
            if spent + cost > budget and (lines or not final):
                break
            self._pending.popleft()
            self._pending_chars -= cost
            spent += cost
            lines.append([stream, text])
        if not any(stream != DROPPED for stream, _ in lines):
            if lines:  # nothing fits yet: the count waits with the lines
                self._dropped = int(lines[0][1])
            return None
        if not final:
            self._tokens -= spent
        repeated = [line for when, line in self._sent if when >= now - again] if again else []
        batch = {"run": self.run, "seq": self._next_seq - len(repeated), "lines": repeated + lines}
        self._next_seq += len(lines)
        for line in lines:
            self._sent.append((now, line))
            self._sent_chars += len(line[1]) + LINE_COST
        while self._sent_chars > RECENT_CHARS:
            self._sent_chars -= len(self._sent.popleft()[1][1]) + LINE_COST
        return batch

    def recent(self) -> dict[str, Any] | None:
        """The latest lines sent (at most ``RECENT_CHARS``), as a batch: for the task's
        final state, which replaces the PROGRESS that carried them."""
        if not self._sent:
            return None
        lines = [line for _, line in self._sent]
        return {"run": self.run, "seq": self._next_seq - len(lines), "lines": lines}


def _last_version(line: str) -> str:
    """A line as a terminal shows it once redrawn after carriage returns."""
    line = line.rstrip("\r")
    return line.rpartition("\r")[2]


# -- kernel side ----------------------------------------------------------------------
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
    ``keep`` lines are kept, the latest by number.
    """

    def __init__(self, keep: int = KEEP_LINES) -> None:
        self.keep = keep
        self._lines: dict[int, Entry] = {}
        self._order: list[int] = []  # the numbers kept, sorted
        self._high = 0  # one past the highest number seen
        self._base = 0  # where the current run's numbers start
        self._run: str | None = None
        self._old_runs: set[str] = set()
        self._extra_dropped = 0  # lines lost before they reached this log
        self._trimmed = 0  # lines no longer kept (a ``dropped`` entry: its count)
        self.received = 0  # lines accepted so far, and the latest of them in arrival order:
        self._arrived: deque[Entry] = deque(maxlen=keep)  # for readers that follow along

    def merge(self, batch: Any) -> list[Entry]:
        """Take a batch ``{"run", "seq", "lines"}``; return the lines it added."""
        if not isinstance(batch, Mapping):
            return []
        run, seq, lines = batch.get("run"), batch.get("seq"), batch.get("lines")
        if not isinstance(seq, int) or isinstance(seq, bool) or not 0 <= seq < 2**53:
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
        if len(self._order) >= self.keep and number < self._order[0]:
            return False  # older than every line kept
        bisect.insort(self._order, number)
        self._lines[number] = entry
        if len(self._order) > self.keep:
            stream, text = self._lines.pop(self._order.pop(0))
            self._trimmed += int(text) if stream == DROPPED else 1
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
        never_received = self._high - self.received
        return OutputTail(lines, never_received + self._trimmed + self._extra_dropped)


def _entry(raw: Any) -> Entry | None:
    """One line read from the backend, checked: a known stream and a bounded text
    without control characters (a tab and colour escapes stay)."""
    if not isinstance(raw, list | tuple) or len(raw) != 2:
        return None
    stream, text = raw
    if stream not in STREAMS and stream != DROPPED or not isinstance(text, str):
        return None
    if stream == DROPPED:
        return (DROPPED, text) if text.isdigit() and len(text) <= 15 else None
    return (stream, cut_line(text).translate(_CONTROLS))


_CONTROLS = {code: "\ufffd" for code in (*range(0x20), 0x7F) if code not in (0x09, 0x1B)}
