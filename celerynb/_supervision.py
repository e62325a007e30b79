"""LocalCluster's worker kept alive: the pure parts (a restart budget, how a process
ended, the last lines of a log)."""

from __future__ import annotations

import signal
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path

EARLY_DEATHS = 3  # deaths in a row before the worker was ready, each followed by a restart
MAX_RESTARTS = 10  # deaths within RESTART_WINDOW, each followed by a restart
RESTART_WINDOW = 60.0  # seconds


@dataclass
class RestartBudget:
    """When a dead worker is replaced: a worker that dies before it is ready more than
    ``early_limit`` times in a row (at import, say), or more than ``limit`` times
    within ``window`` seconds, is given up on instead of restarted for ever. A worker
    killed while it works (out of memory, ``kill -9``) is replaced each time."""

    early_limit: int = EARLY_DEATHS
    limit: int = MAX_RESTARTS
    window: float = RESTART_WINDOW
    deaths: list[float] = field(default_factory=list)
    early_deaths: int = 0

    def allows_restart(self, now: float, was_ready: bool) -> bool:
        """Count a death at ``now`` (of a worker that was ready, or not yet); whether
        a restart may follow it."""
        self.deaths = [t for t in self.deaths if now - t < self.window] + [now]
        self.early_deaths = 0 if was_ready else self.early_deaths + 1
        return self.early_deaths <= self.early_limit and len(self.deaths) <= self.limit

    def why_not(self, ended: str) -> str:
        """Why the last death is not followed by a restart (``ended``: how it ended)."""
        if self.early_deaths > self.early_limit:
            what = f"{ended} before it was ready {self.early_deaths} times in a row"
        else:
            what = f"died {len(self.deaths)} times within {self.window:.0f} s (last: {ended})"
        return (
            f"its worker {what} and is not restarted again "
            "(see cluster.logs(); cluster.restart() tries again)"
        )


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
