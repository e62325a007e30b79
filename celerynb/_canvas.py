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
from ._schema import ProgressSnapshot

Step = list[str]  # the task ids of one step (one task, or a group / chord header)


def canvas_steps(result: Any) -> list[Step] | None:
    """The steps ending in ``result``, first step first; None when it has no parent."""
    steps = [[r.id for r in results] for results in _step_results(result)]
    return steps if len(steps) > 1 else None


def canvas_names(result: Any) -> list[str | None]:
    """The task name of every task of the steps, in their order (None: not known here)."""
    names = []
    for results in _step_results(result):
        for r in results:
            name = getattr(r, "name", None)
            names.append(name if isinstance(name, str) and name else None)
    return names


def _step_results(result: Any) -> list[list[Any]]:
    steps: list[list[Any]] = []
    node, seen = result, set()
    while node is not None and id(node) not in seen:
        seen.add(id(node))
        steps.append(list(node.results) if isinstance(node, ResultSet) else [node])
        node = getattr(node, "parent", None)
    return steps[::-1]


def current_step(step_states: Sequence[Sequence[str]]) -> int:
    """The 0-based step that runs now: the first with a task not finished (the last
    step once all are finished). Pure."""
    for number, step in enumerate(step_states):
        if not all(state in states.READY_STATES for state in step):
            return number
    return max(len(step_states) - 1, 0)


class CanvasGroup(JobGroup):
    """A chain or chord as one job: its bar counts tasks and names the running step;
    its result is the last step's value (a list for a group as last step)."""

    def __init__(self, jobs: Sequence[Job], steps: list[Step], *, name: str, session: Any):
        self._steps = steps
        kind = "chord" if len(steps) == 2 and len(steps[0]) > 1 else "chain"
        super().__init__(jobs, name=name or kind, call_repr=name or kind, session=session)
        self.kind = kind

    @property
    def stage(self) -> str:
        """``step 2 of 3: tasks.train`` (a chord: ``header, 7 tasks`` / ``body``)."""
        by_id = {job.id: job for job in self.jobs}
        step_jobs = [[by_id[task_id] for task_id in step] for step in self._steps]
        number = current_step([[job.state for job in step] for step in step_jobs])
        running = step_jobs[number]
        what = running[0].name if len(running) == 1 else f"{len(running)} tasks"
        if self.kind == "chord":
            return f"header, {what}" if number == 0 else f"body: {what}"
        return f"step {number + 1} of {len(self._steps)}: {what}"

    @property
    def progress(self) -> ProgressSnapshot:
        snapshot = super().progress
        desc = f"{self.name} ({self.stage})"
        bars = tuple(dataclasses.replace(bar, desc=desc) for bar in snapshot.bars)
        return ProgressSnapshot(snapshot.state, bars)

    def _finish(self) -> None:
        """Ends as a JobGroup does, but a success is the last step's value."""
        if self._errors or any(self._task_cancelled):
            super()._finish()
            return
        if not self._claim_end():
            return
        last = self._steps[-1]
        position = {job.id: number for number, job in enumerate(self.jobs)}
        values = [self._values[position[task_id]] for task_id in last]
        self.set_result(values[0] if len(last) == 1 else values)
