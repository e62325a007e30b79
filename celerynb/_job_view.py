"""How a job's state reads, pure: the widget's HTML markup and colours, the final text.

Functions of a job's state only (no widgets, no I/O), shared by the widget and text
displays and by the dashboard (its badges take the widget's colours).
"""

from __future__ import annotations

import html
import time
from typing import Any

from celery import states

from ._format import bar_line, job_final_line, meter_text
from ._output_view import output_html, output_text, shown_output
from ._schema import LOST, REQUEUED, UNKNOWN

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


def job_html(job: Any) -> str:
    """The widget's view of ``job`` as it is now: state badge, description, bar,
    meter; then its details (see ``details_html``). Every part is escaped."""
    progress = job.progress
    state = job.state
    colour = _BADGE_COLOURS.get(state, "#6c757d")
    badge = (
        f'<span class="celerynb-state" style="background:{colour};color:white;'
        f'padding:1px 6px;border-radius:4px;font-size:85%">{html.escape(state)}</span>'
    )
    label = html.escape(progress.desc or job.name)
    if progress.total:  # noqa: SIM108 - a nested ternary would read worse
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
    return (
        "<div style='font-family:var(--jp-ui-font-family,sans-serif);"
        "font-size:var(--jp-ui-font-size1,13px)'>"
        "<div style='display:flex;align-items:center;gap:6px'>"
        f"{badge}<span style='min-width:6em'><b>{label}</b></span>"
        "<div style='flex:1 1 auto;min-width:6em;height:1em;background:#e9ecef;"
        "border-radius:3px;overflow:hidden'>"
        f"<div class='progress-bar' style='width:{value * 100:.1f}%;height:100%;"
        f"background:{bar_colour}'></div></div>"
        f"<code style='white-space:nowrap'>{html.escape(meter)}</code></div>"
        f"{details_html(job)}</div>"
    )


def details_html(job: Any) -> str:
    """Under the bar: the job's note, its inner bars, its output, then the traceback on
    failure or the result on success."""
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


def final_text(job: Any, *, output: bool = True) -> str:
    """The final line, then the job's output (``output``), then the remote traceback."""
    parts = [job_final_line(job)]
    entries = shown_output(job) if output else []
    if entries:
        parts.append(output_text(entries))
    if job.remote_traceback:
        parts.append(job.remote_traceback.rstrip())
    return "\n".join(parts)
