"""Tables of jobs and workers, as text and as HTML (pure formatting)."""

from __future__ import annotations

import html
from collections import Counter
from collections.abc import Iterable, Sequence
from typing import Any

from tqdm.std import tqdm as std_tqdm

from ._workers import WorkerInfo


def text_table(headers: Sequence[str], rows: Iterable[Sequence[str]]) -> str:
    """Columns padded to their widest cell."""
    rows = [list(r) for r in rows]
    widths = [max(len(str(c)) for c in column) for column in zip(headers, *rows)]
    lines = [list(headers), *rows]
    return "\n".join(
        "  ".join(str(c).ljust(w) for c, w in zip(line, widths)).rstrip() for line in lines
    )


def html_table(headers: Sequence[str], rows: Iterable[Sequence[str]], css_class: str) -> str:
    """A plain HTML table; every cell escaped."""
    head = "".join(f"<th style='text-align:left'>{html.escape(h)}</th>" for h in headers)
    body = "".join(
        "<tr>"
        + "".join(f"<td style='text-align:left'>{html.escape(str(c))}</td>" for c in r)
        + "</tr>"
        for r in rows
    )
    return f"<table class='{css_class}'><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


class _Table(list):
    """A list that shows as a table: text in terminals, HTML in notebooks.

    Only the last ``max_rows`` entries are shown, after a one-line summary, so a
    table of thousands of jobs stays readable (the list itself keeps them all).
    """

    headers: tuple[str, ...] = ()
    empty_text = ""
    css_class = ""
    max_rows = 50

    def row(self, item: Any) -> list[str]:
        raise NotImplementedError

    def rows(self) -> list[list[str]]:
        """The rows shown: the last ``max_rows`` entries."""
        return [self.row(item) for item in self[-self.max_rows :]]

    def summary(self) -> str:
        """A line above the rows when some are not shown."""
        hidden = len(self) - self.max_rows
        return f"{len(self)} entries; the last {self.max_rows} shown" if hidden > 0 else ""

    def __str__(self) -> str:
        if not self:
            return self.empty_text
        table = text_table(self.headers, self.rows())
        summary = self.summary()
        return f"{summary}\n{table}" if summary else table

    def __repr__(self) -> str:
        return str(self)

    def _repr_html_(self) -> str:
        if not self:
            return f"<i>{html.escape(self.empty_text)}</i>"
        summary = self.summary()
        caption = f"<p>{html.escape(summary)}</p>" if summary else ""
        return caption + html_table(self.headers, self.rows(), self.css_class)

    def _repr_pretty_(self, printer: Any, cycle: bool) -> None:
        printer.text(str(self))


class JobTable(_Table):
    """This kernel's jobs (a list of Jobs) that shows as a table."""

    headers = ("id", "call", "state", "progress", "elapsed")
    empty_text = "no jobs in this kernel yet"
    css_class = "celerynb-jobs"

    def row(self, job: Any) -> list[str]:
        return [
            job.id,
            job.call_repr,
            job.state,
            _progress_cell(job),
            std_tqdm.format_interval(job.elapsed),
        ]

    def summary(self) -> str:
        """``1200 jobs: 1100 SUCCESS, 100 PENDING; the last 50 shown`` when long."""
        if len(self) <= self.max_rows:
            return ""
        by_state = Counter(job.state for job in self)
        counts = ", ".join(f"{n} {state}" for state, n in by_state.most_common())
        return f"{len(self)} jobs: {counts}; the last {self.max_rows} shown"

    def running(self) -> JobTable:
        """The jobs not finished yet."""
        return JobTable(job for job in self if not job.done())

    def cancel(self) -> list[Any]:
        """Cancel every unfinished job; return those that were cancelled."""
        return [job for job in self.running() if job.cancel()]

    def show(self) -> None:
        """Show every job live (a widget or text bar each)."""
        for job in self:
            job.show()


class WorkerTable(_Table):
    """Online workers (a list of WorkerInfo) that shows as a table; ``memory``: the
    resident bytes of a worker's pool processes, by worker name, where known (workers
    on this machine); ``note``: a line above the table (the LocalCluster's state)."""

    headers = ("worker", "pool", "concurrency", "memory", "queues", "active", "reserved")
    empty_text = "no worker answered"
    css_class = "celerynb-workers"

    def __init__(
        self,
        workers: Iterable[WorkerInfo] = (),
        memory: dict[str, int] | None = None,
        note: str = "",
    ) -> None:
        super().__init__(workers)
        self.memory = memory or {}
        self.note = note

    def row(self, worker: WorkerInfo) -> list[str]:
        cells = _worker_row(worker)
        used = self.memory.get(worker.name)
        cells.insert(3, "?" if used is None else f"{used / 2**20:,.0f} MiB")
        return cells

    def summary(self) -> str:
        return "\n".join(line for line in (self.note, super().summary()) if line)

    @property
    def processes(self) -> int:
        """Total concurrency of the online workers."""
        return sum(worker.concurrency or 0 for worker in self)

    def online_summary(self) -> str:
        """``2 workers online (8 processes)``."""
        if not self:
            return "no worker answered"
        noun = "worker" if len(self) == 1 else "workers"
        return f"{len(self)} {noun} online ({self.processes} processes)"


def _progress_cell(job: Any) -> str:
    progress = job.progress
    if progress.percent is not None:
        return f"{progress.percent:.0f}% ({progress.n:g}/{progress.total:g})"
    if progress.bars:
        return f"{progress.n:g}"
    return ""


def _worker_row(worker: WorkerInfo) -> list[str]:
    def tasks(entries: tuple[tuple[str, str], ...]) -> str:
        if not entries:
            return "0"
        names = ", ".join(f"{name} {task_id[:8]}" for task_id, name in entries[:3])
        more = f", +{len(entries) - 3}" if len(entries) > 3 else ""
        return f"{len(entries)}: {names}{more}"

    return [
        worker.name,
        worker.pool,
        "?" if worker.concurrency is None else str(worker.concurrency),
        ",".join(worker.queues) or "?",
        tasks(worker.active),
        tasks(worker.reserved),
    ]
