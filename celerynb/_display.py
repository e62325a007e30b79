"""Showing jobs: a live ipywidgets widget in Jupyter, a tqdm text bar elsewhere.

Renderers only draw a Job's state. The watcher thread marks them dirty; one render
thread draws each at most ``MAX_DRAWS_PER_SECOND`` times a second and all of them at
most ``DRAWS_PER_TICK`` per tick, so widget traffic stays bounded however fast
progress arrives and however many jobs are shown.
"""

from __future__ import annotations

import atexit
import heapq
import html
import sys
import threading
import time
import weakref
from collections.abc import Callable
from typing import Any

from celery import states
from tqdm.std import tqdm as std_tqdm

from . import _future
from ._format import bar_line, job_final_line, meter_text, scaled_counts
from ._future import ipython_shell
from ._output import DROPPED
from ._output_view import output_html, output_text, shown_output
from ._schema import LOST, REQUEUED, UNKNOWN

MAX_DRAWS_PER_SECOND = 10  # per renderer
DRAWS_PER_TICK = 10  # for all renderers together: bounds widget traffic with many jobs shown
_REFRESH_SECONDS = 1.0  # redraw running jobs this often so elapsed time moves
_WAITING = (states.PENDING, states.RECEIVED)  # not started: the widget shows when it was sent

_BADGE_COLOURS = {
    states.PENDING: "#6c757d",
    states.RECEIVED: "#6c757d",
    states.STARTED: "#0d6efd",
    "PROGRESS": "#0d6efd",
    states.RETRY: "#fd7e14",
    states.SUCCESS: "#198754",
    states.FAILURE: "#dc3545",
    states.REVOKED: "#fd7e14",
    LOST: "#dc3545",
    UNKNOWN: "#fd7e14",
    REQUEUED: "#fd7e14",
}
_BAR_COLOURS = {  # the static bar of a finished job, as ipywidgets' bar styles colour it
    states.SUCCESS: "#198754",
    states.FAILURE: "#dc3545",
    states.REVOKED: "#fd7e14",
    LOST: "#dc3545",
}
_looks: dict[str, Any] = {}


def _shared_looks() -> dict[str, Any]:
    """Layouts and styles every job widget shares (made once, in the first displaying
    cell): a job opens no comm models of its own for them."""
    if not _looks:
        import ipywidgets as w
        from ipywidgets.widgets.widget_string import HTMLStyle  # not exported by ipywidgets

        _looks.update(
            view=w.Layout(flex="1 1 auto", min_width="20em"),
            html=HTMLStyle(),
            button=w.Layout(width="auto", flex="0 0 auto", align_self="flex-start"),
            button_style=w.ButtonStyle(),
            box=w.Layout(width="100%", align_items="flex-start"),
        )
    return _looks


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


_scheduler = RenderScheduler()
_exit_hook_once = threading.Lock()


def _flush_at_exit() -> None:
    """Stop drawing; in a terminal or script, print the final lines still pending (a
    job that finished just before exit would lose its last line to the 0.1 s tick)."""
    _scheduler.stop(flush=not widgets_available())


class WidgetRenderer:
    """An ipywidgets view of a job: state, description, bar, n/total, rate, ETA,
    elapsed, cancel button; the traceback on failure, the result on success.

    Light on the frontend: one HTML widget holds all of it but the button, so a job
    opens three comm models (the HTML, the button, their box; their layouts and styles
    are shared by every job), and a draw is one message."""

    def __init__(self, job: Any) -> None:
        import ipywidgets as w

        shared = _shared_looks()
        self.job = job
        self.draws = 0
        self.view = w.HTML(layout=shared["view"], style=shared["html"])
        self.cancel_button = w.Button(
            description="Cancel",
            icon="stop",
            tooltip=f"revoke task {job.id}",
            layout=shared["button"],
            style=shared["button_style"],
        )
        self.cancel_button.on_click(lambda _button: self.job.cancel())
        self.widget = w.HBox([self.view, self.cancel_button], layout=shared["box"])
        self.widget.add_class("celerynb-job")
        self.handle: Any = None  # the display, to leave a true final line for nbconvert
        self._final_published: str | None = None  # the final HTML published, once done
        self._html = ""
        self.draw()

    def mimebundle(self) -> dict[str, Any]:
        """While the job runs: the widget view plus a text line for frontends that cannot
        render widgets. Once it is done: the same look as static HTML plus that line, so
        that a saved notebook shows it without widget state (GitHub, nbviewer, nbconvert)."""
        if self.job.done():
            return {"text/html": self.final_html(), "text/plain": final_text(self.job)}
        bundle = self.widget._repr_mimebundle_()
        bundle["text/plain"] = final_text(self.job)
        return bundle

    def final_html(self) -> str:
        """The widget as it is now, in static HTML (its parts are escaped by ``draw``)."""
        return f"<div class='celerynb-job celerynb-final'>{self._html}</div>"

    def draw(self) -> bool:
        job = self.job
        progress = job.progress
        state = job.state
        colour = _BADGE_COLOURS.get(state, "#6c757d")
        badge = (
            f'<span class="celerynb-state" style="background:{colour};color:white;'
            f'padding:1px 6px;border-radius:4px;font-size:85%">{html.escape(state)}</span>'
        )
        label = html.escape(progress.desc or job.name)
        if progress.total:
            value = min(progress.n / progress.total, 1.0)
        else:
            value = 1.0 if job.done() else 0.0
        if state == states.SUCCESS:
            value = 1.0 if progress.total is None else value
        if progress.bars:
            meter = meter_text(progress, job.elapsed, finished=job.done())
        elif state in _WAITING and not job.done():
            # A clock that stands still: a waiting job costs no message a second.
            meter = "sent " + time.strftime("%H:%M:%S", time.localtime(job.sent_at))
        else:
            meter = f"{job.elapsed:.1f}s"
        bar_colour = _BAR_COLOURS.get(state, "#0d6efd" if progress.total else "#6ea8fe")
        self._html = (
            "<div style='font-family:var(--jp-ui-font-family,sans-serif);"
            "font-size:var(--jp-ui-font-size1,13px)'>"
            "<div style='display:flex;align-items:center;gap:6px'>"
            f"{badge}<span style='min-width:6em'><b>{label}</b></span>"
            "<div style='flex:1 1 auto;min-width:6em;height:1em;background:#e9ecef;"
            "border-radius:3px;overflow:hidden'>"
            f"<div class='progress-bar' style='width:{value * 100:.1f}%;height:100%;"
            f"background:{bar_colour}'></div></div>"
            f"<code style='white-space:nowrap'>{html.escape(meter)}</code></div>"
            f"{self._details_html()}</div>"
        )
        replaced = job.done() and self.handle is not None  # by static HTML, below
        if self.view.value != self._html and not replaced:  # one message for the whole view
            self.view.value = self._html
        self.draws += 1
        if self.handle is not None:
            if job.done():  # again when it changes later (a revoke's note delivered)
                final = self.final_html()
                if final != self._final_published:
                    self._final_published = final
                    self.handle.update(self.mimebundle(), raw=True)
            elif self._final_published is not None:  # done, then running again (a retry)
                self._final_published = None
                self.handle.update(self.mimebundle(), raw=True)
        return job.done()

    def _details_html(self) -> str:
        job = self.job
        parts = []
        if job.note:
            parts.append(f"<i class='celerynb-note'>{html.escape(job.note)}</i>")
        if len(job.progress.bars) > 1:
            lines = "\n".join(bar_line(b, 70) for b in job.progress.bars[1:])
            parts.append(f"<pre class='celerynb-bars'>{html.escape(lines)}</pre>")
        entries = shown_output(job)
        if entries:
            parts.append(output_html(entries))
        if job.done() and not job.cancelled():
            error = job.exception(timeout=0)
            if error is not None:
                tb = job.remote_traceback or ""
                text = tb or job.short_result_repr()  # the traceback ends with the error line
                parts.append(
                    "<pre class='celerynb-traceback' style='color:#b02a37;white-space:pre-wrap'>"
                    f"{html.escape(text)}</pre>"
                )
            else:
                parts.append(
                    f"<code class='celerynb-result'>→ {html.escape(job.short_result_repr())}</code>"
                )
        return "".join(parts)


class JobBar(std_tqdm):
    """A tqdm text bar showing a job's reported progress: the worker's count, total and
    rate, and the job's elapsed time, rather than what tqdm would measure itself (a bar
    opened mid-run would otherwise show an absurd first rate)."""

    def __init__(self, job: Any, file: Any) -> None:
        self.job = job
        super().__init__(total=None, desc=job.name, file=file, leave=False, dynamic_ncols=True)

    @property
    def format_dict(self) -> dict[str, Any]:
        drawn = super().format_dict
        progress = self.job.progress
        drawn.update(
            n=progress.n,
            total=progress.total,
            elapsed=self.job.elapsed,
            rate=progress.rate,
            prefix=progress.desc or self.job.name,  # the label the widget and final line show
            unit=progress.unit,
            unit_scale=scaled_counts(progress),
            postfix=self.job.state,
        )
        return drawn


class TextRenderer:
    """A tqdm text bar on stderr, for terminals and scripts; a final line when done.

    The bar is redrawn in place on the terminal's current line. In terminal IPython
    that line belongs to the prompt once the cell that showed the bar ends, so then
    the bar's last state is left as a line of its own (``leave``) and nothing is drawn
    in place any more; the final line is written to ``sys.stderr`` as it is at that
    moment, which IPython routes above its prompt. The final line comes once.
    """

    def __init__(self, job: Any, file: Any = None) -> None:
        self.job = job
        self.file = file or sys.stderr
        self._follows_stderr = file is None  # sys.stderr changes while a prompt waits
        self._lock = threading.Lock()
        self._in_place = True
        self._finished = False
        self._output_mark = 0  # the job's output lines already printed
        self.bar = JobBar(job, self.file)
        # Set once the outcome is shown: a cell waiting in ``result()`` resumes only then,
        # so its own output (``Out[n]``) never lands on the bar's line.
        self._outcome_shown = job._display_pending()
        self.draw()

    def draw(self) -> bool:
        with self._lock:
            if not self._finished and not self.job.done():
                lines = self._new_output()
                if self._in_place:
                    if lines:  # above the bar, as tqdm.write does
                        self.bar.clear()
                        self.file.write(lines + "\n")
                    self.bar.refresh()
                elif lines:
                    sys.stderr.write(lines + "\n")  # above the prompt (see _finish)
                return False
            self._finish()
            return True

    def _new_output(self) -> str:
        """The job's output lines not printed yet, as text ("" when none)."""
        entries, missed, self._output_mark = self.job._output_since(self._output_mark)
        if missed:
            entries.insert(0, (DROPPED, str(missed)))
        return output_text(entries) if entries else ""

    def leave(self) -> None:
        """The terminal's line is needed (a prompt): keep the bar's state as a line and
        stop drawing in place; a job already done shows its final line instead."""
        with self._lock:
            if self._finished or not self._in_place:
                return
            if self.job.done():
                self._finish()
                return
            self._in_place = False
            if _is_terminal(self.file):  # IPython may have written on the bar's line
                self.file.write("\r\x1b[K")  # (``Out[n]:`` after a magic showed the bar)
            self.bar.leave = True
            self.bar.close()  # draws the bar once more, then a newline

    def retire(self) -> None:
        """Another renderer shows the job now: stop without a final line of its own."""
        with self._lock:
            if not self._finished:
                self._finished = True
                self._outcome_shown.set()
                self.bar.close()  # clears the bar's line if it is still drawn in place

    def _finish(self) -> None:
        if self._finished:
            return
        self._finished = True
        try:
            if self._in_place:
                self.bar.close()  # clears the bar's line: the final line takes its place
                file = self.file
            else:
                file = sys.stderr if self._follows_stderr else self.file
            printed_before = self._output_mark > 0
            lines = self._new_output()
            if not printed_before and not lines:  # a cell's captured text, if no line came
                lines = output_text(shown_output(self.job))
            text = final_text(self.job, output=False)
            file.write((f"{lines}\n" if lines else "") + text + "\n")  # one write: unsplit
            file.flush()
        finally:
            self._outcome_shown.set()


def _is_terminal(file: Any) -> bool:
    try:
        return bool(file.isatty())
    except (AttributeError, ValueError):  # no isatty, or closed
        return False


class _CellBars:
    """Text bars drawn in place while an IPython cell runs, left as lines when it ends
    (before IPython draws its next prompt on that line)."""

    def __init__(self) -> None:
        self._in_place: list[TextRenderer] = []
        self._shells: weakref.WeakSet[Any] = weakref.WeakSet()
        self._lock = threading.Lock()

    def add(self, renderer: TextRenderer) -> None:
        shell = ipython_shell()
        if shell is None:
            return  # a script: no prompt, the bar stays in place until the job is done
        with self._lock:
            if shell not in self._shells:
                shell.events.register("post_execute", self.leave_all)
                self._shells.add(shell)
            self._in_place.append(renderer)

    def leave_all(self) -> None:
        with self._lock:
            renderers, self._in_place = self._in_place, []
        for renderer in renderers:  # in the order shown: tqdm's first bar is the top one
            renderer.leave()


_cell_bars = _CellBars()
_text_renderers: weakref.WeakKeyDictionary[Any, TextRenderer] = weakref.WeakKeyDictionary()


def final_text(job: Any, *, output: bool = True) -> str:
    """The final line, then the job's output (``output``), then the remote traceback."""
    parts = [job_final_line(job)]
    entries = shown_output(job) if output else []
    if entries:
        parts.append(output_text(entries))
    if job.remote_traceback:
        parts.append(job.remote_traceback.rstrip())
    return "\n".join(parts)


def widgets_available() -> bool:
    """True in a Jupyter kernel (widgets can render), False in terminals and scripts."""
    shell = ipython_shell()
    return shell is not None and getattr(shell, "kernel", None) is not None


def display_job(job: Any) -> Any:
    """Show ``job`` live: a widget in Jupyter, a text bar elsewhere."""
    if widgets_available():
        from IPython.display import display

        renderer: Any = WidgetRenderer(job)
        renderer.handle = display(renderer.mimebundle(), raw=True, display_id=True)
    else:
        shown = _text_renderers.get(job)
        if shown is not None:
            shown.retire()  # one final line per job, from the latest display
        renderer = _text_renderers[job] = TextRenderer(job)
        _cell_bars.add(renderer)
    if _exit_hook_once.acquire(blocking=False):  # once, at the first display
        atexit.register(_flush_at_exit)
    final_text_line = isinstance(renderer, TextRenderer)
    job.add_listener(
        lambda changed: _scheduler.mark(renderer, urgent=final_text_line and changed.done())
    )
    _scheduler.mark(renderer)
    return renderer


_future.display = display_job
