"""Widget traffic stays bounded however many jobs are shown: the render budget."""

import threading
import time

from conftest import wait_for

from celerynb._display import MAX_DRAWS_PER_SECOND, RenderScheduler, pick_batch


def test_the_renderers_waiting_longest_are_drawn_first():
    never, old, recent = "never", "old", "recent"
    last_drawn = {old: 1.0, recent: 5.0}
    assert pick_batch({recent, old, never}, last_drawn, 2) == [never, old]
    assert set(pick_batch({recent, old}, last_drawn, 5)) == {old, recent}


class CountingRenderer:
    """Stands in for a widget: counts draws, finishes when told to."""

    def __init__(self) -> None:
        self.draws = 0
        self.finish = False
        self.lock = threading.Lock()

    def draw(self) -> bool:
        with self.lock:
            self.draws += 1
        return self.finish


def test_many_busy_renderers_share_one_budget_and_all_get_drawn():
    scheduler = RenderScheduler(draws_per_tick=10)
    renderers = [CountingRenderer() for _ in range(200)]
    stop = threading.Event()

    def busy_progress():  # every job reports progress all the time
        while not stop.is_set():
            for renderer in renderers:
                scheduler.mark(renderer)
            time.sleep(0.01)

    feeder = threading.Thread(target=busy_progress, daemon=True)
    started = time.monotonic()
    feeder.start()
    try:
        drawn_once = wait_for(lambda: all(r.draws for r in renderers), timeout=60)
        elapsed = time.monotonic() - started
        total = sum(r.draws for r in renderers)
    finally:
        stop.set()
        feeder.join(5)
    assert drawn_once, "every job's widget is drawn (fairly), none starves"
    ticks = elapsed * MAX_DRAWS_PER_SECOND + 1
    assert total <= 10 * ticks, f"{total} draws in {elapsed:.1f}s exceed the budget"
    # Finished renderers leave the scheduler after their last draw.
    for renderer in renderers:
        renderer.finish = True
        scheduler.mark(renderer)
    assert wait_for(lambda: not scheduler._live, timeout=60)
