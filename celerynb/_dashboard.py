"""``celerynb.dashboard()`` / ``%celery_dashboard``: one live widget for the whole cluster.

An open dashboard runs two daemon threads. One listens to Celery's event stream on
a broker connection of its own (push): heartbeats, celerynb's worker reports (CPU,
memory) and, from workers that send them, task events for the task stream. The other
asks what no event says, each at its own pace (``PollSchedule``: quicker while the
cluster is busy): ``inspect`` (pool, processes, queues, tasks; without task events
also the task stream, coarsely), queue depths, and the jobs of every kernel; and it
redraws (``RedrawPacer``: at most twice a second, only when something changed or
the task stream moves). ``close()`` ends both; so does closing the session.

Frontend cost: one HTML view (a whole redraw is one message, sent only when it
differs), a Dropdown of unfinished jobs and a Cancel button in two boxes.
"""

from __future__ import annotations

import contextlib
import logging
import re
import threading
import time
from typing import Any

from ._cancel_choices import PLACEHOLDER, next_choices
from ._cluster_view import ClusterView
from ._dashboard_html import MAX_JOB_ROWS, DashboardData, QueueRow, render
from ._dashboard_jobs import JobRow, JobsReader, row_of_job, state_counts
from ._pacing import PollSchedule, RedrawPacer
from ._queues import declared_queues, queue_depths
from ._registry import registry
from ._session import Session, current_session
from ._workers import INSPECT_TIMEOUT, inspect_workers

log = logging.getLogger(__name__)

# (busy, idle) seconds between two rounds of each question to the cluster.
POLL_INTERVALS = {"inspect": (3.0, 15.0), "queues": (2.0, 10.0), "jobs": (2.0, 10.0)}
MIN_REDRAW_SECONDS = 0.5  # at most 2 redraws a second (each a whole drawing, ~10-40 KB)
RUNNING_REDRAW_SECONDS = 1.0  # the task stream moves while tasks run
STREAM_REDRAW_SECONDS = 5.0  # ... and slowly while finished spans are still in its window
MAX_CHOICES = 50  # unfinished jobs offered for cancel
ACTION_SECONDS = 10.0  # how long "cancel sent ..." stays on top
_URL_PASSWORD = re.compile(r"(://[^/@\s]*?:)[^@/\s]*@")
_looks: dict[str, Any] = {}


def _shared_looks() -> dict[str, Any]:
    """The job widgets' shared layouts and styles, plus the dropdown's (made once)."""
    from ._widget_display import _shared_looks as job_looks

    if not _looks:
        import ipywidgets as w
        from ipywidgets.widgets.widget_description import DescriptionStyle  # not exported

        _looks.update(job_looks())
        _looks.update(
            choice=w.Layout(width="auto", min_width="24em", flex="0 1 auto"),
            choice_style=DescriptionStyle(description_width="initial"),
        )
    return _looks


class Dashboard:
    """A live view of the session's cluster: workers, queues, jobs, task stream.

    Made by ``celerynb.dashboard()``; shows as a widget. ``refresh()`` asks and
    redraws at once; ``close()`` stops its threads and closes its widgets.
    """

    def __init__(self, session: Session, *, start: bool = True) -> None:
        self._session = session
        self._app = session.app
        self._cluster = ClusterView()
        self._reader = JobsReader(session)
        self._schedule = PollSchedule(POLL_INTERVALS)
        self._pacer = RedrawPacer(MIN_REDRAW_SECONDS)
        self._lock = threading.Lock()  # the ClusterView and what the polls found
        self._wake = threading.Condition()
        self._dirty = True
        self._stop = threading.Event()
        self._queues: list[QueueRow] = []
        self._jobs: list[JobRow] = []
        self._notes: dict[str, str] = {}
        self._action: tuple[float, str] | None = None
        self._receiver: Any = None
        self._threads: list[threading.Thread] = []
        self.html = ""
        self.draws = 0
        self._build_widget()
        if start:
            self._start()

    # -- widget ---------------------------------------------------------------------
    def _build_widget(self) -> None:
        import ipywidgets as w

        looks = _shared_looks()
        self.view = w.HTML(layout=looks["view"], style=looks["html"])
        self.choice = w.Dropdown(
            options=[PLACEHOLDER], layout=looks["choice"], style=looks["choice_style"]
        )
        self.cancel_button = w.Button(
            description="Cancel job",
            icon="stop",
            tooltip="revoke the job chosen on the left",
            layout=looks["button"],
            style=looks["button_style"],
            disabled=True,
        )
        self.cancel_button.on_click(lambda _button: self.cancel(self.choice.value))
        self.controls = w.HBox([self.choice, self.cancel_button], layout=looks["box"])
        self.widget = w.VBox([self.view, self.controls], layout=looks["box"])
        self.widget.add_class("celerynb-dashboard")
        self._choices: tuple[tuple[str, str], ...] = (PLACEHOLDER,)

    def _repr_mimebundle_(self, **kwargs: Any) -> dict[str, Any]:
        bundle = self.widget._repr_mimebundle_(**kwargs)
        bundle["text/plain"] = self.summary()
        return bundle

    def __repr__(self) -> str:
        return f"<celerynb.Dashboard {'closed' if self.closed else 'live'}: {self.summary()}>"

    def summary(self) -> str:
        """One line: workers online, queues, jobs by state."""
        with self._lock:
            rows = self._cluster.worker_rows(time.time())
            jobs, queues = list(self._jobs), list(self._queues)
        online = sum(1 for row in rows if not row.gone)
        counts = ", ".join(f"{n} {state}" for state, n in state_counts(jobs))
        return (
            f"celerynb dashboard: {online} worker(s) online, {len(queues)} queue(s), "
            f"{len(jobs)} job(s)" + (f" ({counts})" if counts else "")
        )

    # -- actions ----------------------------------------------------------------------
    def cancel(self, job_id: str) -> bool:
        """Cancel the job ``job_id`` (of this kernel or another one, as listed)."""
        if not job_id:
            return False
        done = self._reader.cancel(job_id)
        what = f"cancel sent for job {job_id}" if done else f"job {job_id} is not running"
        with self._lock:
            self._action = (time.monotonic(), what)
        self._schedule.soon("jobs")
        self._mark()
        return done

    def refresh(self) -> str:
        """Ask the cluster everything now and redraw; return the dashboard's HTML."""
        for name in POLL_INTERVALS:
            self._poll(name)
        self._draw()
        return self.html

    @property
    def closed(self) -> bool:
        return self._stop.is_set()

    def close(self, timeout: float = 5.0) -> None:
        """Stop listening and polling, and close the widgets."""
        self._stop.set()
        receiver = self._receiver
        if receiver is not None:
            receiver.should_stop = True
        self._mark()
        for thread in self._threads:
            if thread is not threading.current_thread():
                thread.join(timeout)
        for widget in (self.widget, self.controls, self.view, self.choice, self.cancel_button):
            widget.close()
        with _open_lock:
            if _open.get(id(self._session)) is self:
                del _open[id(self._session)]

    def alive_threads(self) -> list[threading.Thread]:
        """Its threads still running (none once closed)."""
        return [thread for thread in self._threads if thread.is_alive()]

    # -- threads ----------------------------------------------------------------------
    def _start(self) -> None:
        for target, name in ((self._listen, "listen"), (self._run, "refresh")):
            thread = threading.Thread(target=target, name=f"celerynb-dashboard-{name}", daemon=True)
            self._threads.append(thread)
            thread.start()

    def _mark(self) -> None:
        with self._wake:
            self._dirty = True
            self._wake.notify()

    def _listen(self) -> None:
        backoff = 0.5
        while not self._stop.is_set():
            try:
                with self._app.connection_for_read() as connection:
                    receiver = self._app.events.Receiver(connection, handlers={"*": self._on_event})
                    self._receiver = receiver
                    if self._stop.is_set():
                        return
                    connection.ensure_connection(max_retries=1)
                    self._ask_for_task_events()
                    with self._lock:
                        self._cluster.listening_since = time.time()
                        self._notes.pop("events", None)
                    backoff = 0.5
                    receiver.capture(limit=None, timeout=None, wakeup=True)
            except Exception as exc:
                self._note("events", "cannot listen to the workers' events", exc)
                if self._stop.wait(backoff):
                    return
                backoff = min(backoff * 2, 5.0)
            finally:
                with self._lock:
                    self._cluster.listening_since = None

    def _on_event(self, event: dict[str, Any]) -> None:
        hostname = event.get("hostname")
        with self._lock:
            new = hostname not in self._cluster.workers
            changed = self._cluster.on_event(event, time.time())
        if new and changed:  # a worker not seen before: its pool and queues now
            self._schedule.soon("inspect")
            self._schedule.soon("queues")
        if changed:
            self._mark()

    def _run(self) -> None:
        try:
            while not self._stop.is_set():
                if self._session.closed:
                    self.close()
                    return
                busy = self._busy()
                for name in self._schedule.due(time.monotonic(), busy=busy):
                    if self._stop.is_set():
                        return
                    self._poll(name)
                    self._schedule.done(name, time.monotonic())
                now = time.monotonic()
                with self._wake:
                    dirty = self._dirty
                wait = self._pacer.wait(now, dirty=dirty, every=self._redraw_every())
                if wait == 0:
                    self._draw()
                    self._pacer.drawn(now)
                    wait = self._pacer.wait(now, dirty=False, every=self._redraw_every())
                sleep = self._schedule.wait(time.monotonic(), busy=self._busy())
                if wait is not None:
                    sleep = min(sleep, wait)
                with self._wake:
                    if not self._dirty or wait is None or wait > 0:
                        self._wake.wait(max(sleep, 0.01))
        except Exception:  # a dashboard that stops drawing must say why, once
            log.exception("celerynb: the dashboard stopped")

    def _busy(self) -> bool:
        with self._lock:
            if self._cluster.running_count():
                return True
            workers = list(self._cluster.workers.values())
            jobs, queues = list(self._jobs), list(self._queues)
        return (
            any(w.active or w.reserved for w in workers)
            or any(not job.done for job in jobs)
            or any(queue.messages for queue in queues)
        )

    def _redraw_every(self) -> float | None:
        with self._lock:
            if self._cluster.running_count():
                return RUNNING_REDRAW_SECONDS
            if self._cluster.has_spans():
                return STREAM_REDRAW_SECONDS
            if self._action is not None:
                return ACTION_SECONDS
        return None

    # -- polls ------------------------------------------------------------------------
    def _poll(self, name: str) -> None:
        try:
            if name == "inspect":
                self._poll_inspect()
            elif name == "queues":
                self._poll_queues()
            elif name == "jobs":
                self._poll_jobs()
        except Exception as exc:
            self._note(name, f"cannot read the {name}", exc)
        else:
            with self._lock:
                self._notes.pop(name, None)
        self._mark()

    def _ask_for_task_events(self) -> None:
        """Ask every worker to send task events (Celery's ``enable_events`` broadcast, as
        Flower does): workers send none by default, and one started since the last round
        is asked too. They keep sending them until restarted or ``disable_events``."""
        try:
            self._app.control.enable_events()
        except Exception as exc:  # the stream then comes from inspect rounds
            log.debug("celerynb: cannot ask the workers for task events: %s", exc)

    def _poll_inspect(self) -> None:
        self._ask_for_task_events()
        now = time.time()
        with self._lock:
            expected = sum(1 for row in self._cluster.worker_rows(now) if not row.gone)
        answered = inspect_workers(self._app, timeout=INSPECT_TIMEOUT, expected=expected or None)
        with self._lock:
            self._cluster.on_inspect(answered, time.time())

    def _poll_queues(self) -> None:
        now = time.time()
        with self._lock:
            workers = [row for row in self._cluster.worker_rows(now) if not row.gone]
        consumers: dict[str, list[str]] = {}
        for row in workers:
            for queue in row.worker.queues:
                consumers.setdefault(queue, []).append(row.worker.hostname)
        default = getattr(self._app.conf, "task_default_queue", None) or "celery"
        waiting_in = {getattr(job, "queue", None) for job in registry.all() if not job.done()}
        known = {default, *consumers, *(q for q in waiting_in if isinstance(q, str))}
        with self._app.connection_for_read() as connection:
            connection.ensure_connection(max_retries=1)
            # Queues other clients sent to: shown when messages wait in them.
            others = [name for name in declared_queues(connection) if name not in known]
            depths = queue_depths(connection, [*sorted(known), *others])
        names = sorted(known | {name for name in others if depths.get(name)})
        rows = [QueueRow(name, depths.get(name), tuple(consumers.get(name, ()))) for name in names]
        with self._lock:
            self._queues = rows

    def _poll_jobs(self) -> None:
        rows = self._reader.read()
        with self._lock:
            self._jobs = rows
        unfinished = [row for row in rows if not row.done]
        choices = next_choices(self._choices, unfinished, MAX_CHOICES)
        if choices != self._choices:
            self._choices = choices
            chosen = self.choice.value
            ids = {value for _, value in choices}
            with self.choice.hold_sync():
                self.choice.options = choices
                self.choice.value = chosen if chosen in ids else PLACEHOLDER[1]
            self.cancel_button.disabled = not unfinished

    def _note(self, topic: str, what: str, exc: BaseException) -> None:
        text = _URL_PASSWORD.sub(r"\1**@", f"{what}: {type(exc).__name__}: {exc}")[:300]
        log.debug("celerynb dashboard: %s", text)
        with self._lock:
            self._notes[topic] = text
        self._mark()

    # -- drawing ----------------------------------------------------------------------
    def _data(self) -> DashboardData:
        now = time.time()
        with self._lock:
            spans = self._cluster.spans(now)
            names = dict(self._reader.names)
            for span in spans:  # a job of this kernel started since the last jobs round
                if span.task_id not in names and span.task_id in registry:
                    with contextlib.suppress(LookupError):
                        names[span.task_id] = registry.find_exact(span.task_id).name
            notes = list(self._notes.values())
            if self._action is not None:
                at, what = self._action
                if time.monotonic() - at < ACTION_SECONDS:
                    notes.append(what)
                else:
                    self._action = None
            return DashboardData(
                workers=self._cluster.worker_rows(now),
                queues=list(self._queues),
                jobs=_with_live_rows(self._jobs),
                spans=spans,
                now=now,
                window=self._cluster.window,
                task_events=self._cluster.task_events,
                notes=notes,
                names=names,
            )

    def _draw(self) -> None:
        with self._wake:
            self._dirty = False
        html = render(self._data())
        if html != self.html:  # one message, and none when nothing changed
            self.html = html
            self.view.value = html
            self.draws += 1


def _with_live_rows(rows: list[JobRow]) -> list[JobRow]:
    """This kernel's unfinished rows among those shown, as their jobs are now (they
    move between two job polls)."""
    fresh = []
    for index, row in enumerate(rows):
        if row.this_kernel and not row.done and index < MAX_JOB_ROWS:
            try:
                row = row_of_job(registry.find_exact(row.id))
            except LookupError:
                pass
        fresh.append(row)
    return fresh


_open: dict[int, Dashboard] = {}
_open_lock = threading.Lock()


def open_dashboard(session: Session) -> Dashboard | None:
    """The live dashboard of ``session``, if one is open."""
    with _open_lock:
        board = _open.get(id(session))
    return board if board is not None and not board.closed and board._session is session else None


def dashboard(session: Session | None = None) -> Dashboard:
    """The live dashboard of ``session`` (default: the current connection's), made on
    first use: display it (the last line of a cell) to see it; showing it again shows
    the same live view. ``Dashboard.close()`` stops it.

    Raises:
        NotConnectedError: no session given and none is connected.
    """
    session = session or current_session()
    board = open_dashboard(session)
    if board is None:
        with _open_lock:
            board = _open[id(session)] = Dashboard(session)
    return board
