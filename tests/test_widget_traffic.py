"""What a job widget sends while nothing changes: a waiting job's clock stands still
(the time it was sent, not a counter), and a finished job shown in a cell is replaced
by static HTML without a last message to its widget."""

import time
from types import SimpleNamespace

from celerynb._display import WidgetRenderer
from celerynb._output_log import OutputTail
from celerynb._schema import ProgressSnapshot


class StandInJob:
    """The parts of a Job a widget reads, set by the test."""

    def __init__(self) -> None:
        self.id, self.name, self.note = "t-1", "simulate", None
        self.state, self.elapsed, self.sent_at = "PENDING", 0.0, time.time()
        self.progress = ProgressSnapshot()
        self.finished, self.remote_traceback = False, None
        self.output = OutputTail()  # what the task printed: nothing here

    def done(self) -> bool:
        return self.finished

    def cancelled(self) -> bool:
        return False

    def exception(self, timeout=None):
        return None

    def result(self, timeout=None):
        return 42

    def short_result_repr(self) -> str:
        return "42"

    def cancel(self) -> bool:
        return False


def sent_values(renderer: WidgetRenderer) -> list[str]:
    values: list[str] = []
    renderer.view.observe(lambda change: values.append(change["new"]), names="value")
    return values


def test_a_waiting_job_shows_when_it_was_sent_and_sends_nothing_as_time_passes():
    job = StandInJob()
    renderer = WidgetRenderer(job)
    sent = sent_values(renderer)
    assert "sent " + time.strftime("%H:%M:%S", time.localtime(job.sent_at)) in renderer.view.value
    for elapsed in (1.0, 2.0, 30.0):
        job.elapsed = elapsed
        renderer.draw()
    assert sent == []
    job.state, job.elapsed = "STARTED", 31.0
    renderer.draw()
    job.elapsed = 32.0
    renderer.draw()
    assert len(sent) == 2 and "32.0s" in sent[-1]  # a running job's clock moves


def test_a_finished_job_in_a_cell_is_replaced_by_static_html_without_a_widget_message():
    job = StandInJob()
    renderer = WidgetRenderer(job)
    published = []
    renderer.handle = SimpleNamespace(update=lambda bundle, raw: published.append(bundle))
    sent = sent_values(renderer)
    job.state, job.finished, job.elapsed = "SUCCESS", True, 1.5
    assert renderer.draw() is True
    assert sent == []
    assert len(published) == 1 and "SUCCESS" in published[0]["text/html"]
    assert "→ 42" in published[0]["text/html"]
    renderer.handle = None  # shown without a cell's handle: the widget itself must change
    job.note = "a note"
    renderer.draw()
    assert len(sent) == 1 and "a note" in sent[0]
