"""A job's tqdm text bar on stderr, for terminals and scripts, and its final line."""

from __future__ import annotations

import sys
import threading
import weakref
from typing import Any

from tqdm.std import tqdm as std_tqdm

from ._format import scaled_counts
from ._future import ipython_shell
from ._job_view import final_text
from ._output import DROPPED
from ._output_view import output_text, shown_output


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
