"""Kernel side: a Celery chain or chord, attached by its final result, watched as one.

``chain(a, b, c).apply_async()`` returns the AsyncResult of ``c``, whose ``parent`` is
``b``'s, whose parent is ``a``'s; a chord's body result has the header's GroupResult
as parent. ``attach`` follows those links back: every task of every step joins one
JobGroup whose bar says which step runs ("step 2 of 3: tasks.train") and whose result
is the last step's (a chain's value, a chord body's).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any

from celery import states
from celery.result import ResultSet

from ._group import JobGroup
from ._job import Job
from ._schema import LOST, ProgressSnapshot

Step = list[str]  # the task ids of one step (one task, or a group / chord header)
FAILED_STATES = frozenset({states.FAILURE, LOST})


def canvas_steps(result: Any) -> list[Step] | None:
    """The steps ending in ``result``, first step first; None when it has no parent."""
    steps = [[r.id for r in results] for results, _ in _step_results(result)]
    return steps if len(steps) > 1 else None


def canvas_kind(result: Any) -> str:
    """``chord`` for a group's results followed by one step (a chord's header and body,
    however many tasks its header has), else ``chain``."""
    steps = _step_results(result)
    return "chord" if len(steps) == 2 and steps[0][1] else "chain"


def canvas_names(result: Any) -> list[str | None]:
    """The task name of every task of the steps, in their order (None: not known here)."""
    names = []
    for results, _ in _step_results(result):
        for r in results:
            name = getattr(r, "name", None)
            names.append(name if isinstance(name, str) and name else None)
    return names


def _step_results(result: Any) -> list[tuple[list[Any], bool]]:
    """Each step's results, first step first, and whether the step is a group."""
    steps: list[tuple[list[Any], bool]] = []
    node, seen = result, set()
    while node is not None and id(node) not in seen:
        seen.add(id(node))
        group = isinstance(node, ResultSet)
        steps.append((list(node.results) if group else [node], group))
        node = getattr(node, "parent", None)
    return steps[::-1]


def current_step(step_states: Sequence[Sequence[str]]) -> int:
    """The 0-based step that runs now: the first with a task not finished (the last
    step once all are finished). Pure."""
    for number, step in enumerate(step_states):
        if not all(state in states.READY_STATES for state in step):
            return number
    return max(len(step_states) - 1, 0)


def failed_step(step_states: Sequence[Sequence[str]]) -> int | None:
    """The 0-based step that failed first (Celery fails the steps after it too), or
    None. Pure."""
    for number, step in enumerate(step_states):
        if any(state in FAILED_STATES for state in step):
            return number
    return None


class CanvasGroup(JobGroup):
    """A chain or chord as one job: its bar counts tasks and names the running step;
    its result is the last step's value (a list for a group as last step)."""

    def __init__(
        self,
        jobs: Sequence[Job],
        steps: list[Step],
        *,
        name: str,
        session: Any,
        kind: str = "chain",  # or "chord" (``canvas_kind`` tells them apart)
    ):
        self._steps = steps
        super().__init__(jobs, name=name or kind, call_repr=name or kind, session=session)
        self.kind = kind

    @property
    def stage(self) -> str:
        """``step 2 of 3: tasks.train`` (a chord: ``header, 7 tasks`` / ``body``); once a
        step failed, that one: ``step 2 of 3 failed: tasks.train``."""
        by_id = {job.id: job for job in self.jobs}
        step_jobs = [[by_id[task_id] for task_id in step] for step in self._steps]
        step_states = [[job.state for job in step] for step in step_jobs]
        failed = failed_step(step_states)
        number = current_step(step_states) if failed is None else failed
        shown = step_jobs[number]
        if len(shown) == 1:
            what = shown[0].name
        elif failed is not None:
            bad = sum(state in FAILED_STATES for state in step_states[number])
            what = f"{bad} of {len(shown)} tasks"
        else:
            what = f"{len(shown)} tasks"
        if self.kind == "chord":
            where = "header" if number == 0 else "body"
            if failed is not None:
                return f"{where} failed: {what}"
            return f"header, {what}" if number == 0 else f"body: {what}"
        failed_word = " failed" if failed is not None else ""
        return f"step {number + 1} of {len(self._steps)}{failed_word}: {what}"

    @property
    def progress(self) -> ProgressSnapshot:
        snapshot = super().progress
        desc = f"{self.name} ({self.stage})"
        bars = tuple(dataclasses.replace(bar, desc=desc) for bar in snapshot.bars)
        return ProgressSnapshot(snapshot.state, bars)

    def _finish(self) -> None:
        """Ends as a JobGroup does, but a success is the last step's value."""
        if self._items.errors or any(self._items.cancelled):
            super()._finish()
            return
        if not self._claim_end():
            return
        last = self._steps[-1]
        position = {job.id: number for number, job in enumerate(self.jobs)}
        values = [self._items.values[position[task_id]] for task_id in last]
        self.set_result(values[0] if len(last) == 1 else values)
