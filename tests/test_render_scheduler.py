"""Widget traffic stays bounded however many jobs are shown: the render budget, its
timing (driven by a clock the tests control) and the render thread's stop."""

import threading
import time

from conftest import FakeClock, wait_for

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


def scheduler_on(clock, draws_per_tick=10):
    return RenderScheduler(draws_per_tick, clock=clock, threaded=False)


def test_a_tick_draws_the_budget_and_the_next_batch_waits_a_tenth_of_a_second():
    clock = FakeClock(0.0)
    scheduler = scheduler_on(clock)
    renderers = [CountingRenderer() for _ in range(25)]
    for renderer in renderers:
        scheduler.mark(renderer)
    first = scheduler.tick()
    assert len(first) == 10
    assert scheduler.seconds_to_next_tick() == 1 / MAX_DRAWS_PER_SECOND
    clock.now = 0.099
    assert scheduler.tick() == [], "a second batch within the same tick"
    for renderer in first:  # news again for those just drawn: they wait their turn
        scheduler.mark(renderer)
    clock.now = 0.1
    second = scheduler.tick()
    assert len(second) == 10 and not set(second) & set(first), "never-drawn ones go first"
    clock.now = 0.2
    third = scheduler.tick()
    left = set(renderers) - set(first) - set(second)
    assert len(third) == 10 and set(third) > left, "the 5 never drawn, then 5 redrawn"
    assert sum(r.draws for r in renderers) == 30


def test_a_renderer_with_news_all_the_time_is_drawn_ten_times_a_second():
    clock = FakeClock(0.0)
    scheduler = scheduler_on(clock)
    renderer = CountingRenderer()
    for step in range(300):  # three seconds, news every 10 ms
        clock.now = step / 100
        scheduler.mark(renderer)
        scheduler.tick()
    assert renderer.draws == 3 * MAX_DRAWS_PER_SECOND


def test_an_urgent_final_draw_does_not_wait_for_the_next_tick():
    """A text display's final line is drawn at once: ``result()`` waits for it."""
    clock = FakeClock(0.0)
    scheduler = scheduler_on(clock)
    busy, finishing = CountingRenderer(), CountingRenderer()
    scheduler.mark(busy)
    scheduler.mark(finishing)
    assert len(scheduler.tick()) == 2  # a tick: the next one is due in 0.1 s
    clock.now = 0.01
    scheduler.mark(busy)
    scheduler.mark(finishing, urgent=True)
    assert scheduler.seconds_to_next_tick() == 0.0
    assert scheduler.tick() == [finishing]  # drawn now; the other waits for its tick
    assert (finishing.draws, busy.draws) == (2, 1)
    clock.now = 0.1
    assert scheduler.tick() == [busy]


def test_a_live_renderer_without_news_is_redrawn_once_a_second_until_it_finishes():
    clock = FakeClock(0.0)
    scheduler = scheduler_on(clock)
    renderer = CountingRenderer()
    scheduler.mark(renderer)
    for step in range(31):  # a tick every 0.1 s for three seconds
        clock.now = step / 10
        scheduler.tick()
    assert renderer.draws == 4  # at 0 (marked), then 1, 2 and 3 s (elapsed moves)
    clock.now = 3.05
    assert scheduler.seconds_to_next_tick() == 4.0 - 3.05
    renderer.finish = True
    clock.now = 4.0
    assert scheduler.tick() == [renderer]
    clock.now = 10.0
    assert scheduler.tick() == [] and scheduler.seconds_to_next_tick() is None


def test_stop_ends_the_render_thread_and_later_marks_start_none():
    scheduler = RenderScheduler()
    renderer = CountingRenderer()
    scheduler.mark(renderer)
    assert wait_for(lambda: renderer.draws >= 1, timeout=10)
    thread = scheduler._thread
    scheduler.stop(timeout=5)
    assert not thread.is_alive()
    drawn = renderer.draws
    scheduler.mark(CountingRenderer())
    assert scheduler._thread is thread, "a mark after stop() started a thread"
    assert renderer.draws == drawn


def test_stop_with_flush_draws_every_live_renderer_once_more_at_once():
    """What a script's exit does: a job that finished just before would otherwise lose
    its final line to the next tick."""
    clock = FakeClock(0.0)
    scheduler = scheduler_on(clock)
    done, running = CountingRenderer(), CountingRenderer()
    scheduler.mark(done)
    scheduler.mark(running)
    scheduler.tick()
    done.finish = True  # finished, no tick due yet: nothing would draw it now
    scheduler.stop(flush=True)
    assert done.draws == 2 and running.draws == 2
    scheduler.stop(flush=True)
    assert done.draws == 2, "a finished renderer was drawn after its last draw"
