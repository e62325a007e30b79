"""Live output of a job, as lines (pure, shared by the worker side and the kernel side).

A running task's stdout, stderr and logging records become numbered lines. The worker
keeps them in an ``OutputBuffer`` and sends them in bounded batches inside the PROGRESS
meta it writes anyway (key ``"output"``, see ``_schema``)::

    {"run": "3f2a9c1d", "seq": 120, "lines": [["stdout", "epoch 3"], ["dropped", "5000"],
                                              ["log", "WARNING fit: slow"], ...]}

``seq`` numbers the first line; ``run`` tells one run of the task from another (a retry
numbers its lines from 0 again). A ``dropped`` entry stands where lines were dropped
(its text is how many). ``through`` counts the lines written so far that are accounted
for, sent or dropped: a kernel that missed a batch (subscribed late, reconnected) still
counts every line. The kernel merges batches by number (``_output_log``), so a batch
seen twice or late adds nothing twice, and keeps the last ``KEEP_LINES``.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable, Iterable, Sequence
from typing import Any

STREAMS = ("stdout", "stderr", "log")
DROPPED = "dropped"  # an entry standing for lines that were dropped; its text: how many
MAX_LINE_CHARS = 1000  # a longer line keeps its start and says how much was cut
MAX_PENDING_LINES = 1000  # lines a worker holds unsent; older ones are dropped first
MAX_PENDING_CHARS = 256 * 1024
MAX_BATCH_CHARS = 64 * 1024  # text in one write
RATE_CHARS_PER_SECOND = 64 * 1024  # sustained text sent per task (a burst may send more)
BURST_CHARS = 256 * 1024
LINE_COST = 16  # chars charged per line on top of its text (the JSON around it)
RECENT_CHARS = 16 * 1024  # lines already sent that a write may carry again (see ``take``)

Entry = tuple[str, str]  # (stream, text)


def lines_in(entries: Iterable[Sequence[str]]) -> int:
    """How many lines ``entries`` stand for (a ``dropped`` entry: the count it says)."""
    return sum(int(text) if stream == DROPPED else 1 for stream, text in entries)


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
        self._through = 0  # lines sent or counted in a ``dropped`` entry sent
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
        self._next_seq += len(lines)
        self._through += lines_in(lines)
        batch = {
            "run": self.run,
            "seq": self._next_seq - len(lines) - len(repeated),
            "lines": repeated + lines,
            "through": self._through,
        }
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
        seq = self._next_seq - len(lines)
        return {"run": self.run, "seq": seq, "lines": lines, "through": self._through}


def _last_version(line: str) -> str:
    """A line as a terminal shows it once redrawn after carriage returns."""
    line = line.rstrip("\r")
    return line.rpartition("\r")[2]
