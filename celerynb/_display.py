"""Showing jobs: a live ipywidgets widget in Jupyter, a tqdm text bar elsewhere.

Renderers only draw a Job's state. The watcher thread marks them dirty; one render
thread draws each at most ``MAX_DRAWS_PER_SECOND`` times a second and all of them at
most ``DRAWS_PER_TICK`` per tick, so widget traffic stays bounded however fast
progress arrives and however many jobs are shown.

This module chooses the display and wires it to the job; the parts live beside it:
``_render_scheduler`` (the pacing), ``_job_view`` (pure markup, colours and final
text), ``_widget_display`` (the widget) and ``_text_display`` (the text bar).
"""

from __future__ import annotations

import atexit
import threading
import weakref
from typing import Any

from . import _future
from ._future import ipython_shell
from ._job_view import final_text
from ._render_scheduler import DRAWS_PER_TICK, MAX_DRAWS_PER_SECOND, RenderScheduler, pick_batch
from ._text_display import JobBar, TextRenderer, _CellBars
from ._widget_display import WidgetRenderer

__all__ = [  # what other modules and the tests import from here
    "DRAWS_PER_TICK",
    "MAX_DRAWS_PER_SECOND",
    "JobBar",
    "RenderScheduler",
    "TextRenderer",
    "WidgetRenderer",
    "display_job",
    "final_text",
    "pick_batch",
    "widgets_available",
]

_scheduler = RenderScheduler()
_exit_hook_once = threading.Lock()


def _flush_at_exit() -> None:
    """Stop drawing; in a terminal or script, print the final lines still pending (a
    job that finished just before exit would lose its last line to the 0.1 s tick)."""
    _scheduler.stop(flush=not widgets_available())


_cell_bars = _CellBars()
_text_renderers: weakref.WeakKeyDictionary[Any, TextRenderer] = weakref.WeakKeyDictionary()


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
