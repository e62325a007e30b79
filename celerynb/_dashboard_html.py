"""The dashboard drawn as one piece of HTML: workers, queues, jobs, task stream (pure).

Every string in it comes from workers, the broker, the backend or the job store and
is escaped here; the task stream is inline SVG (no plotting library). Sizes are
bounded: ``MAX_JOB_ROWS`` jobs, ``MAX_LANES`` process lanes and ``MAX_DRAWN`` task
spans (the latest), so one redraw stays a message of a few tens of kilobytes.
"""

from __future__ import annotations

import html
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from celery import states
from tqdm.std import tqdm as std_tqdm

from ._cluster_view import ENDED, RUNNING, TaskSpan, WorkerRow
from ._dashboard_jobs import JobRow, state_counts
from ._job_view import _BADGE_COLOURS

MAX_JOB_ROWS = 20
MAX_LANES = 24
MAX_DRAWN = 400
SVG_WIDTH = 1000
LABEL_WIDTH = 260
LANE_HEIGHT = 20
AXIS_HEIGHT = 18
# A span's CSS class by its state (fixed names: never a string from a worker).
_SPAN_CLASSES = {
    RUNNING: "run",
    states.SUCCESS: "ok",
    states.FAILURE: "bad",
    states.REVOKED: "off",
    states.RETRY: "off",
    states.REJECTED: "off",
    ENDED: "end",  # polled: how it ended is not known (grey)
}
_FONT = "font-family:var(--jp-ui-font-family,sans-serif);font-size:var(--jp-ui-font-size1,13px)"
# Once per drawing rather than on every cell and bar: a redraw is one message, and most
# of its bytes were these. Every selector is under .celerynb-dashboard.
_STYLE = (
    "<style>"
    ".celerynb-dashboard table{border-collapse:collapse;font-size:inherit}"
    ".celerynb-dashboard th,.celerynb-dashboard td{text-align:left;padding:1px 8px 1px 0}"
    ".celerynb-dashboard .cnb-bar{display:inline-block;width:6em;height:0.8em;"
    "background:#e9ecef;border-radius:3px;overflow:hidden;vertical-align:middle}"
    ".celerynb-dashboard .cnb-bar>span{display:block;height:100%;background:#0d6efd}"
    ".celerynb-dashboard .celerynb-state{color:white;padding:0 5px;border-radius:4px;"
    "font-size:85%}"
    ".celerynb-timeline rect{fill:#6c757d}.celerynb-timeline .run{fill:#0d6efd}"
    ".celerynb-timeline .ok{fill:#198754}.celerynb-timeline .bad{fill:#dc3545}"
    ".celerynb-timeline .off{fill:#fd7e14}"
    "</style>"
)


@dataclass(frozen=True)
class QueueRow:
    """A queue: messages waiting (None: unknown) and the workers consuming it."""

    name: str
    messages: int | None
    consumers: tuple[str, ...]

    @property
    def stranded(self) -> bool:
        """Messages wait and no online worker consumes it: they wait for ever."""
        return bool(self.messages) and not self.consumers


@dataclass(frozen=True)
class DashboardData:
    """Everything one redraw shows."""

    workers: Sequence[WorkerRow]
    queues: Sequence[QueueRow]
    jobs: Sequence[JobRow]
    spans: Sequence[TaskSpan]
    now: float
    window: float
    task_events: bool
    notes: Sequence[str] = field(default=())
    names: Mapping[str, str] = field(default_factory=dict)  # task id -> its job's name


def render(data: DashboardData) -> str:
    """The whole dashboard."""
    notes = "".join(
        f"<div class='celerynb-note' style='color:#b02a37'>{_e(note)}</div>" for note in data.notes
    )
    stream = stream_html(
        data.spans, data.workers, data.now, data.window, data.task_events, data.names
    )
    return (
        f"<div class='celerynb-dashboard' style='{_FONT}'>{_STYLE}{notes}"
        f"{workers_html(data.workers)}{queues_html(data.queues)}{jobs_html(data.jobs)}"
        f"{stream}</div>"
    )


def _e(value: object) -> str:
    return html.escape(str(value), quote=True)


def _section(title: str, body: str, css: str) -> str:
    return (
        f"<div class='{css}' style='margin:4px 0 8px 0'>"
        f"<div style='font-weight:bold;margin-bottom:2px'>{_e(title)}</div>{body}</div>"
    )


def _table(headers: Sequence[str], rows: Sequence[str]) -> str:
    head = "".join(f"<th>{_e(h)}</th>" for h in headers)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{''.join(rows)}</tbody></table>"


def _row(cells: Sequence[str], style: str = "", css: str = "") -> str:
    """A table row of cells that are already HTML (escape what goes in them)."""
    tds = "".join(f"<td>{cell}</td>" for cell in cells)
    shown = f" style='{style}'" if style else ""
    return f"<tr class='{css}'{shown}>{tds}</tr>"


def badge(state: str) -> str:
    colour = _BADGE_COLOURS.get(state, "#6c757d")
    return f"<span class='celerynb-state' style='background:{colour}'>{_e(state)}</span>"


def size(num: int | None) -> str:
    return "?" if num is None else std_tqdm.format_sizeof(num, "B", 1024)


# -- workers -----------------------------------------------------------------------
def workers_html(rows: Sequence[WorkerRow]) -> str:
    online = sum(1 for row in rows if not row.gone)
    gone = len(rows) - online
    title = f"Workers: {online} online" + (f", {gone} gone" if gone else "")
    if not rows:
        return _section(title, "<i>no worker heard yet</i>", "celerynb-workers")
    headers = ("worker", "pool", "processes", "load", "CPU", "memory", "active", "reserved")
    body = [_worker_row(row) for row in rows]
    return _section(title, _table((*headers, "queues"), body), "celerynb-workers")


def _worker_row(row: WorkerRow) -> str:
    w = row.worker
    name = _e(w.hostname) + (
        " <span class='celerynb-gone' style='color:#b02a37'>(gone)</span>" if row.gone else ""
    )
    processes = "?" if w.concurrency is None else str(w.concurrency)
    load = " ".join(f"{v:.2f}" for v in w.loadavg) or "?"
    cpus = [p.cpu for p in w.processes if p.cpu is not None]
    each = "; ".join(
        f"pid {p.pid}: {'?' if p.cpu is None else f'{p.cpu:.0f}%'} CPU, {size(p.rss)}"
        for p in w.processes
    )
    cpu = f"<span title='{_e(each)}'>{_e(f'{sum(cpus):.0f}%' if cpus else '?')}</span>"
    rss = [p.rss for p in w.processes if p.rss is not None]
    memory = size(sum(rss)) if rss else "?"
    if rss and w.memory_total:
        memory += f" ({100 * sum(rss) / w.memory_total:.1f}%)"
    cells = [
        name,
        _e(w.pool or "?"),
        _e(processes),
        _e(load),
        cpu,
        _e(memory),
        _e("?" if w.active is None else w.active),
        _e("?" if w.reserved is None else w.reserved),
        _e(", ".join(w.queues) or "?"),
    ]
    style = "opacity:0.55" if row.gone else ""
    return _row(cells, style, "celerynb-worker-gone" if row.gone else "celerynb-worker")


# -- queues ------------------------------------------------------------------------
def queues_html(rows: Sequence[QueueRow]) -> str:
    stranded = sum(1 for row in rows if row.stranded)
    title = "Queues" + (f": {stranded} with messages and no consumer" if stranded else "")
    if not rows:
        return _section(title, "<i>no queue known yet</i>", "celerynb-queues")
    body = []
    for row in rows:
        waiting = "?" if row.messages is None else str(row.messages)
        consumers = _e(", ".join(row.consumers)) if row.consumers else "<b>no consumer</b>"
        style = "background:#f8d7da;color:#842029" if row.stranded else ""
        css = "celerynb-queue-stranded" if row.stranded else "celerynb-queue"
        body.append(_row([_e(row.name), _e(waiting), consumers], style, css))
    return _section(title, _table(("queue", "waiting", "consumed by"), body), "celerynb-queues")


# -- jobs --------------------------------------------------------------------------
def jobs_html(rows: Sequence[JobRow], max_rows: int = MAX_JOB_ROWS) -> str:
    if not rows:
        return _section("Jobs", "<i>no jobs sent on this backend yet</i>", "celerynb-jobs")
    counts = ", ".join(f"{n} {state}" for state, n in state_counts(rows))
    shown = f"; the latest {max_rows} shown" if len(rows) > max_rows else ""
    title = f"Jobs: {len(rows)} ({counts}){shown}"
    body = [_job_row(row) for row in rows[:max_rows]]
    headers = ("job", "id", "from", "state", "progress", "tasks")
    return _section(title, _table(headers, body), "celerynb-jobs")


def _job_row(row: JobRow) -> str:
    percent = row.percent
    if percent is None:
        progress = ""
    else:
        width = min(max(percent, 0.0), 100.0)
        progress = (
            f"<span class='cnb-bar'><span style='width:{width:.1f}%'></span></span> {width:.0f}%"
        )
    tasks = f"{row.finished_tasks}/{row.tasks}" if row.tasks > 1 else ""
    cells = [_e(row.name), f"<code>{_e(row.id[:8])}</code>", _e(row.where), badge(row.state)]
    return _row([*cells, progress, _e(tasks)], css="celerynb-job-row")


# -- task stream -------------------------------------------------------------------
@dataclass(frozen=True)
class Lane:
    """A row of the task stream: one pool process of a worker (its pid when known,
    else a slot: one per process of its pool)."""

    hostname: str
    pid: int | None
    slot: int

    @property
    def label(self) -> str:
        which = f"pid {self.pid}" if self.pid is not None else f"#{self.slot + 1}"
        return f"{self.hostname} · {which}"


def place(
    spans: Sequence[TaskSpan], workers: Sequence[WorkerRow]
) -> tuple[list[Lane], dict[str, int]]:
    """The lanes (each online worker's pool processes, and a lane for any other worker
    with spans) and the lane of each span, by task id. A span whose pool process is
    known goes on that process's lane; the others, in order of start, on the first
    lane of their worker free at their start (as dask's task stream does)."""
    lanes: list[Lane] = []
    by_host: dict[str, list[int]] = {}

    def add(hostname: str, pids: Sequence[int | None]) -> None:
        by_host[hostname] = []
        for slot, pid in enumerate(pids):
            by_host[hostname].append(len(lanes))
            lanes.append(Lane(hostname, pid, slot))

    for row in sorted(workers, key=lambda r: r.worker.hostname):
        if not row.gone:
            pids = sorted(row.worker.pids)
            add(row.worker.hostname, pids or [None] * max(row.worker.concurrency or 1, 1))
    for hostname in sorted({s.hostname for s in spans} - set(by_host)):
        add(hostname, [None])
    where: dict[str, int] = {}
    free_at: dict[int, float] = {}
    for span in sorted(spans, key=lambda s: s.start):
        candidates = by_host[span.hostname]
        exact = [i for i in candidates if span.pid is not None and lanes[i].pid == span.pid]
        if exact:
            lane = exact[0]
        else:
            lane = min(candidates, key=lambda i: (free_at.get(i, float("-inf")) > span.start, i))
        where[span.task_id] = lane
        end = float("inf") if span.end is None else span.end
        free_at[lane] = max(free_at.get(lane, float("-inf")), end)
    return lanes, where


def stream_html(
    spans: Sequence[TaskSpan],
    workers: Sequence[WorkerRow],
    now: float,
    window: float,
    task_events: bool,
    names: Mapping[str, str] | None = None,
) -> str:
    minutes = f"{window / 60:g}"
    how = "task events" if task_events else "polled every few seconds: coarse"
    title = f"Task stream: the last {minutes} minutes per process ({how})"
    lanes, where = place(spans, workers)
    svg = timeline_svg(spans, lanes, where, now, window, names or {})
    return _section(title, svg, "celerynb-stream")


def timeline_svg(
    spans: Sequence[TaskSpan],
    lanes: Sequence[Lane],
    where: Mapping[str, int],
    now: float,
    window: float,
    names: Mapping[str, str],
) -> str:
    """Inline SVG: a row per lane, a bar per span; its tooltip says what ran (by the
    job's name where ``names`` knows the task)."""
    shown = min(len(lanes), MAX_LANES)
    start = now - window
    plot = SVG_WIDTH - LABEL_WIDTH
    height = AXIS_HEIGHT + LANE_HEIGHT * max(shown, 1)

    def x(t: float) -> float:
        return LABEL_WIDTH + (min(max(t, start), now) - start) / window * plot

    parts = [
        f"<svg class='celerynb-timeline' xmlns='http://www.w3.org/2000/svg' width='{SVG_WIDTH}' "
        f"viewBox='0 0 {SVG_WIDTH} {height}' style='max-width:100%;height:auto;font-size:13px'>"
    ]
    for step in range(int(window // 60) + 1):
        tick = x(now - step * 60)
        label = "now" if step == 0 else f"-{step}m"
        parts.append(
            f"<line x1='{tick:.1f}' y1='{AXIS_HEIGHT - 4}' x2='{tick:.1f}' y2='{height}' "
            "stroke='#dee2e6'/>"
            f"<text x='{tick:.1f}' y='{AXIS_HEIGHT - 6}' text-anchor='end' fill='#6c757d'>"
            f"{label}</text>"
        )
    for i, lane in enumerate(lanes[:shown]):
        y = AXIS_HEIGHT + i * LANE_HEIGHT
        parts.append(
            f"<text x='{LABEL_WIDTH - 6}' y='{y + LANE_HEIGHT - 6}' text-anchor='end'>"
            f"{_e(_cut(lane.label, 34))}</text>"
        )
    visible = [s for s in spans if (s.end is None or s.end >= start) and s.start <= now]
    drawn = [s for s in visible if where.get(s.task_id, shown) < shown][-MAX_DRAWN:]
    for span in drawn:
        y = AXIS_HEIGHT + where[span.task_id] * LANE_HEIGHT + 2
        left = x(span.start)
        width = max(x(now if span.end is None else span.end) - left, 1.5)
        took = (now if span.end is None else span.end) - span.start
        name = names.get(span.task_id) or span.name
        tip = f"{name} {span.task_id[:8]} {span.state} {took:.1f}s"  # the lane names the worker
        css = _SPAN_CLASSES.get(span.state, "end")
        parts.append(
            f"<rect class='{css}' x='{left:.1f}' y='{y}' width='{width:.1f}' "
            f"height='{LANE_HEIGHT - 4}'><title>{_e(tip)}</title></rect>"
        )
    parts.append("</svg>")
    notes = []
    if len(visible) > len(drawn):
        notes.append(f"{len(visible) - len(drawn)} tasks not drawn (older, or on lanes not shown)")
    if len(lanes) > shown:
        notes.append(f"{len(lanes) - shown} more processes not shown")
    if not lanes:
        notes.append("no worker process known yet")
    tail = "".join(f"<div style='color:#6c757d'>{_e(note)}</div>" for note in notes)
    return "".join(parts) + tail


def _cut(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"
