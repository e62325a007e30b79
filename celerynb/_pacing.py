"""When the dashboard redraws and when it asks the cluster again (pure timing).

``RedrawPacer``: a redraw when something changed, at most one per ``min_interval``;
while the task stream moves (tasks running or in its window) one every ``every``
seconds even without news; nothing at all when nothing changed and nothing moves.
``PollSchedule``: each question to the cluster (inspect, queue depths, jobs) at its
own pace, quicker while the cluster is busy. Both read time
from the caller, so tests drive them with a fake clock.
"""

from __future__ import annotations

from collections.abc import Mapping


class RedrawPacer:
    """Decides when to draw (see the module)."""

    def __init__(self, min_interval: float = 0.5) -> None:
        self.min_interval = min_interval
        self._last_drawn = float("-inf")

    def wait(self, now: float, *, dirty: bool, every: float | None = None) -> float | None:
        """Seconds until the next draw (0: now), or None: nothing to draw until news.
        ``every``: redraw this often even without news (the task stream moves)."""
        if dirty:
            return max(self._last_drawn + self.min_interval - now, 0.0)
        if every is not None:
            return max(self._last_drawn + max(every, self.min_interval) - now, 0.0)
        return None

    def drawn(self, now: float) -> None:
        self._last_drawn = now


class PollSchedule:
    """Named polls, each due every ``busy`` or ``idle`` seconds (``intervals``:
    name -> (busy, idle)); a poll never done is due at once."""

    def __init__(self, intervals: Mapping[str, tuple[float, float]]) -> None:
        self.intervals = dict(intervals)
        self._last: dict[str, float] = {}

    def due(self, now: float, *, busy: bool) -> list[str]:
        """The polls to run now."""
        return [name for name in self.intervals if self._next(name, busy) <= now]

    def done(self, name: str, now: float) -> None:
        self._last[name] = now

    def soon(self, name: str) -> None:
        """Make ``name`` due at once (e.g. a worker never seen before was heard)."""
        self._last.pop(name, None)

    def wait(self, now: float, *, busy: bool) -> float:
        """Seconds until the next poll is due (0: one is due)."""
        return max(min(self._next(name, busy) for name in self.intervals) - now, 0.0)

    def _next(self, name: str, busy: bool) -> float:
        last = self._last.get(name)
        if last is None:
            return float("-inf")
        busy_every, idle_every = self.intervals[name]
        return last + (busy_every if busy else idle_every)
