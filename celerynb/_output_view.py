"""How displays show a job's output lines (pure): escaped HTML with the streams told
apart, or plain text; the latest within a size, the rest counted as dropped."""

from __future__ import annotations

import html
from typing import Any

from ._cell import captured_output
from ._output import DROPPED, Entry, lines_in
from ._output_log import dropped_text

MAX_SHOWN_OUTPUT_CHARS = 64 * 1024  # of a job's output lines, in a widget or text


def shown_output(job: Any, limit: int = MAX_SHOWN_OUTPUT_CHARS) -> list[Entry]:
    """The output lines a display shows: the job's live lines (a cell job's captured
    text when none came live: a polled backend, a job watched after it ended), the
    latest within ``limit`` characters, a ``dropped`` entry first for what is left out."""
    entries = job.output.entries()
    if not entries:
        cell = captured_output(job)
        if cell is not None:
            entries = [
                (stream, line)
                for stream in ("stdout", "stderr")
                for line in getattr(cell, stream).splitlines()
            ]
    return latest_within(entries, limit)


def latest_within(entries: list[Entry], limit: int) -> list[Entry]:
    """The last entries whose text fits in ``limit`` characters; those left out are
    counted in a ``dropped`` entry first (pure)."""
    kept: list[Entry] = []
    size = 0
    for stream, text in reversed(entries):
        size += len(text) + 1
        if size > limit:
            break
        kept.append((stream, text))
    left_out = entries[: len(entries) - len(kept)]
    if left_out:
        count = lines_in(left_out)
        if kept and kept[-1][0] == DROPPED:
            count += int(kept.pop()[1])
        kept.append((DROPPED, str(count)))
    return kept[::-1]


_OUTPUT_STYLES = {  # stream -> (class, inline style): stderr and logging told apart
    "stdout": ("celerynb-stdout", ""),
    "stderr": ("celerynb-stderr", "color:#b02a37"),
    "log": ("celerynb-log", "color:#6f42c1"),
    DROPPED: ("celerynb-dropped", "color:#6c757d;font-style:italic"),
}


def output_html(entries: list[Entry]) -> str:
    """Output lines as an escaped, scrollable block that stays scrolled to its end."""
    lines = []
    for stream, text in entries:
        css, style = _OUTPUT_STYLES[stream]
        shown = dropped_text(int(text)) if stream == DROPPED else text
        lines.append(f"<span class='{css}' style='{style}'>{html.escape(shown)}</span>")
    body = "\n".join(lines)
    # column-reverse: the block opens (and stays) scrolled to its last line.
    return (
        "<div class='celerynb-output' style='max-height:20em;overflow:auto;display:flex;"
        "flex-direction:column-reverse;margin:2px 0'>"
        f"<pre style='margin:0;white-space:pre-wrap'>{body}</pre></div>"
    )


def output_text(entries: list[Entry]) -> str:
    """Output lines as plain text; stderr and logging lines marked apart."""
    marks = {"stdout": "", "stderr": "[stderr] ", "log": "[log] "}
    return "\n".join(
        dropped_text(int(text)) if stream == DROPPED else marks[stream] + text
        for stream, text in entries
    )
