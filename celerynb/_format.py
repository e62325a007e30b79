"""Pure text formatting of progress, reusing tqdm's formatters."""

from __future__ import annotations

from typing import Any

from tqdm.std import tqdm as std_tqdm

from ._schema import BarSnapshot, ProgressSnapshot

_RUNNING = "{n_fmt}/{total_fmt} [{elapsed}<{remaining}, {rate_fmt}{postfix}]"
_FINISHED = "{n_fmt}/{total_fmt} [{elapsed}, {rate_fmt}{postfix}]"
_WITHOUT_TOTAL = "{n_fmt} [{elapsed}, {rate_fmt}{postfix}]"


def scaled_counts(bar: ProgressSnapshot | BarSnapshot) -> bool:
    """Counts in tqdm's scaled form (``20.0M``) for big totals; ``30/30`` stays as is."""
    return (bar.total or bar.n or 0) >= 10_000


def meter_text(
    snapshot: ProgressSnapshot | BarSnapshot, elapsed: float, *, finished: bool = False
) -> str:
    """``20.0M/20.0M [00:02<00:01, 10.4Mit/s]`` as tqdm writes it; no ETA once finished."""
    bar = snapshot.primary if isinstance(snapshot, ProgressSnapshot) else snapshot
    bar_format = _WITHOUT_TOTAL if not bar.total else (_FINISHED if finished else _RUNNING)
    return std_tqdm.format_meter(
        bar.n,
        bar.total,
        elapsed,
        unit=bar.unit,
        unit_scale=scaled_counts(bar),
        rate=bar.rate,
        postfix=bar.postfix or None,
        bar_format=bar_format,
    )


def bar_line(bar: BarSnapshot, ncols: int = 80) -> str:
    """A full tqdm text bar for one reported bar (nested bars, text display)."""
    return std_tqdm.format_meter(
        bar.n,
        bar.total,
        bar.elapsed,
        ncols=ncols,
        prefix=bar.desc,
        unit=bar.unit,
        rate=bar.rate,
        postfix=bar.postfix or None,
    )


def job_status_line(job: Any) -> str:
    """``simulate: PROGRESS 45% 4500/10000 [00:02<00:02, 2.1kit/s]``."""
    progress = job.progress
    label = progress.desc or job.name
    percent = f" {progress.percent:.0f}%" if progress.percent is not None else ""
    meter = f" {meter_text(progress, job.elapsed, finished=job.done())}" if progress.bars else ""
    note = f" ({job.note})" if job.note else ""
    return f"{label}: {job.state}{percent}{meter}{note}"


def job_final_line(job: Any) -> str:
    """The status line, plus ``-> result`` (or the error) once the job is done."""
    line = job_status_line(job)
    return f"{line} -> {job.short_result_repr()}" if job.done() else line
