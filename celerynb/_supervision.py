"""LocalCluster's worker kept alive: the pure parts (a restart budget, how a process
ended, the last lines of a log)."""

from __future__ import annotations

import signal
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path

MAX_RESTARTS = 3  # deaths within RESTART_WINDOW that are still followed by a restart
RESTART_WINDOW = 60.0  # seconds


@dataclass
class RestartBudget:
    """At most ``limit`` restarts for the deaths of any ``window`` seconds: a worker
    that dies in a loop (at import, say) is given up on instead of restarted for ever."""

    limit: int = MAX_RESTARTS
    window: float = RESTART_WINDOW
    deaths: list[float] = field(default_factory=list)

    def allows_restart(self, now: float) -> bool:
        """Count a death at ``now``; whether a restart may follow it."""
        self.deaths = [t for t in self.deaths if now - t < self.window] + [now]
        return len(self.deaths) <= self.limit


def how_it_ended(returncode: int) -> str:
    """A process's end in words: ``killed by SIGKILL``, ``exited with code 1``."""
    if returncode < 0:
        try:
            name = signal.Signals(-returncode).name
        except ValueError:
            name = f"signal {-returncode}"
        return f"killed by {name}"
    return f"exited with code {returncode}"


def last_lines(path: Path, count: int) -> list[str]:
    """The last ``count`` lines of the text file ``path`` (none if it is missing)."""
    if count <= 0:
        return []
    try:
        with path.open(errors="replace") as file:
            return [line.rstrip("\n") for line in deque(file, maxlen=count)]
    except FileNotFoundError:
        return []


class LogText(str):
    """Log lines that show as they are in IPython (not as a quoted string)."""

    def _repr_pretty_(self, printer: object, cycle: bool) -> None:
        printer.text(str(self))  # type: ignore[attr-defined]
