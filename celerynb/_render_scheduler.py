"""Pacing the drawing of job displays: one render thread for all of them.

The watcher thread marks renderers dirty; the scheduler draws each at most
``MAX_DRAWS_PER_SECOND`` times a second and all of them at most ``DRAWS_PER_TICK``
per tick, so widget traffic stays bounded however fast progress arrives and however
many jobs are shown. A renderer is anything with a ``draw() -> bool`` (True: done,
drop it).
"""

from __future__ import annotations

import heapq
import threading
import time
from collections.abc import Callable
from typing import Any

MAX_DRAWS_PER_SECOND = 10  # per renderer
DRAWS_PER_TICK = 10  # for all renderers together: bounds widget traffic with many jobs shown
_REFRESH_SECONDS = 1.0  # redraw running jobs this often so elapsed time moves


def pick_batch(dirty: set[Any], last_drawn: dict[Any, float], budget: int) -> list[Any]:
    """The ``budget`` dirty renderers drawn longest ago (never drawn: first)."""
    if len(dirty) <= budget:
        return list(dirty)
    return heapq.nsmallest(budget, dirty, key=lambda r: last_drawn.get(r, float("-inf")))


class RenderScheduler:
    """One daemon thread drawing dirty renderers: each at most ``MAX_DRAWS_PER_SECOND``
    times a second, and at most ``draws_per_tick`` of them per tick in all, the ones
    waiting longest first, so a thousand live widgets cannot flood the page. Live
    renderers are redrawn every ``refresh_seconds`` even without news (elapsed moves).

    ``tick()`` holds all the timing, read from ``clock`` (swappable, for unit tests);
    the thread only sleeps until the next tick is due (``threaded=False``: no thread,
    the caller ticks). ``stop()`` ends the thread (and can draw what is pending one
    last time); marks after it are ignored.
    """

    def __init__(
        self,
        draws_per_tick: int = DRAWS_PER_TICK,
        *,
        clock: Callable[[], float] = time.monotonic,
        tick_seconds: float = 1.0 / MAX_DRAWS_PER_SECOND,
        refresh_seconds: float = _REFRESH_SECONDS,
        threaded: bool = True,
    ) -> None:
        self.draws_per_tick = draws_per_tick
        self.tick_seconds = tick_seconds
        self.refresh_seconds = refresh_seconds
        self._clock = clock
        self._dirty: set[Any] = set()
        self._urgent: set[Any] = set()  # final draws that do not wait for the next tick
        self._live: set[Any] = set()
        self._last_drawn: dict[Any, float] = {}
        self._next_tick = float("-inf")
        self._next_refresh = float("-inf")
        self._cv = threading.Condition()
        self._thread: threading.Thread | None = None
        self._threaded = threaded
        self._stopped = False

    def mark(self, renderer: Any, *, urgent: bool = False) -> None:
        """``renderer`` has news: draw it at the next tick. Safe from any thread.

        ``urgent``: at once, whatever the pace (a text display's final line, which
        ``result()`` waits for; there is one per job, so they cannot flood anything).
        """
        with self._cv:
            if self._stopped:
                return
            was_idle = not self._dirty
            (self._urgent if urgent else self._dirty).add(renderer)
            self._live.add(renderer)
            if not self._threaded:
                return
            if self._thread is None or not self._thread.is_alive():
                self._thread = threading.Thread(
                    target=self._run, name="celerynb-render", daemon=True
                )
                self._thread.start()
            elif was_idle or urgent:  # else the thread already sleeps until the next tick
                self._cv.notify()

    def tick(self) -> list[Any]:
        """Draw the renderers due now (none before the next tick is due); return them."""
        now = self._clock()
        with self._cv:
            urgent, self._urgent = list(self._urgent), set()
            self._dirty.difference_update(urgent)
        if urgent:
            self._draw(urgent, now)
        with self._cv:
            if now < self._next_tick:
                return urgent
            if now >= self._next_refresh:
                self._next_refresh = now + self.refresh_seconds
                self._dirty.update(self._live)
            batch = pick_batch(self._dirty, self._last_drawn, self.draws_per_tick)
            self._dirty.difference_update(batch)
            if batch:
                self._next_tick = now + self.tick_seconds
        self._draw(batch, now)
        return urgent + batch

    def seconds_to_next_tick(self) -> float | None:
        """How long the thread may sleep: None while nothing is live (until a mark)."""
        with self._cv:
            return self._seconds_to_next_tick(self._clock())

    def _seconds_to_next_tick(self, now: float) -> float | None:
        if self._urgent:
            return 0.0
        if self._dirty:
            return max(self._next_tick - now, 0.0)
        if self._live:  # the next refresh, on a tick
            return max(max(self._next_refresh, self._next_tick) - now, 0.0)
        return None

    def stop(self, timeout: float = 5.0, *, flush: bool = False) -> None:
        """End the thread. ``flush``: then draw every live renderer once more, here
        (a script's last job prints its final line before the interpreter exits)."""
        with self._cv:
            self._stopped = True
            self._cv.notify()
            thread = self._thread
        if thread is not None and thread is not threading.current_thread():
            thread.join(timeout)
            if thread.is_alive():
                return  # stuck in a draw: drawing here too could draw twice
        if flush:
            with self._cv:
                batch = list(self._live)
                self._dirty.clear()
            self._draw(batch, self._clock())

    def _draw(self, batch: list[Any], now: float) -> None:
        for renderer in batch:
            try:
                finished = renderer.draw()
            except Exception:
                finished = True
            with self._cv:
                if finished:
                    self._live.discard(renderer)
                    self._last_drawn.pop(renderer, None)
                else:
                    self._last_drawn[renderer] = now

    def _run(self) -> None:
        while True:
            self.tick()
            with self._cv:
                if self._stopped:
                    return
                wait = self._seconds_to_next_tick(self._clock())
                if wait is None or wait > 0:
                    self._cv.wait(wait)
                if self._stopped:
                    return
