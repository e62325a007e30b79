"""Kernel side: one background thread that feeds every job's state.

It keeps running while cells run (a thread, not an asyncio task: the kernel's
loop freezes while a cell blocks). Jobs only receive decoded metas; how states
arrive is the source's business.
"""

from __future__ import annotations

import contextlib
import logging
import queue
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from typing import Any, cast

from celery import states

from ._liveness import WorkerMonitor, tasks_on_workers
from ._queues import QueueCheck
from ._sources import CoveringSource, StateSource, Update
from ._watched import Watched
from ._watcher_checks import (
    RUNNING_STATES,
    WorkerStopped,
    attached_jobs_to_ask,
    check_workers_of_running_jobs,
    finished_job_ids,
    runs_on,
    tell_attached_jobs,
)

__all__ = [  # Watched and RUNNING_STATES are also importable from here, as they were
    "FIRST_BACKOFF",
    "FULL_CHECK_SECONDS",
    "MAX_BACKOFF",
    "RUNNING_STATES",
    "Watched",
    "Watcher",
]

log = logging.getLogger(__name__)

FULL_CHECK_SECONDS = 1.0
FIRST_BACKOFF = 0.25  # seconds before the first reconnection attempt; doubles up to MAX
MAX_BACKOFF = 5.0


class Watcher:
    """Serves all jobs of a connection from one thread and one source."""

    def __init__(
        self,
        source: StateSource,
        poll_timeout: float = 0.5,
        monitor: WorkerMonitor | None = None,
        app: Any = None,
    ) -> None:
        self._source = source
        # A source that covers the ids it makes: calls sent meanwhile need no catch-up.
        self._covers: CoveringSource | None = (
            cast(CoveringSource, source) if hasattr(source, "covering") else None
        )
        self._monitor = monitor
        self._app = app
        self._poll_timeout = poll_timeout
        self._jobs: dict[str, Watched] = {}
        self._watched_since: dict[str, float] = {}  # monotonic time each job was first watched
        # Jobs to follow (with the connection whose pattern covered each as it was
        # queued, see ``watch``), and Events set once the jobs queued before them are
        # caught up.
        self._incoming: queue.SimpleQueue[
            tuple[Watched, int | None] | threading.Event | WorkerStopped
        ] = queue.SimpleQueue()
        self._stop = threading.Event()
        self._wake_pending = threading.Event()
        self._held = threading.local()  # .depth: this thread batches its watch() calls
        self._thread: threading.Thread | None = None
        self._start_lock = threading.Lock()
        self.status = "idle"
        self.outage_since: float | None = None  # while the backend cannot be reached
        self.reconnects = 0  # times the source's connection was lost and made again
        self._outage_reason = ""
        self._finished_by_updates: set[str] = set()
        self._queue_check = QueueCheck(app) if app is not None else None
        self._next_full_check = 0.0

    def watch(self, job: Watched, before_sending: bool = False) -> None:
        """Follow ``job`` until it is done. Safe from any thread.

        ``before_sending``: its call leaves after this returns. Where the source's
        subscriptions already cover its task id, every state it gets will reach the
        watcher's next poll: nothing to catch up, so the watcher is not even woken (it
        takes the job when its first state comes, or within a poll's timeout)."""
        covered = None
        if before_sending and self._covers is not None:
            covered = self._covers.stamp(job.id)
        self._incoming.put((job, covered))
        if covered is not None:
            self._ensure_running()
        elif not getattr(self._held, "depth", 0):
            self._wake()

    def new_task_id(self) -> str:
        """An id for a call about to be sent: one the source covers where it can."""
        return self._covers.new_task_id() if self._covers is not None else str(uuid.uuid4())

    def _covering(self, task_id: str) -> int | None:
        return self._covers.covering(task_id) if self._covers is not None else None

    @contextlib.contextmanager
    def batch(self) -> Iterator[None]:
        """Within it, this thread's ``watch`` calls only queue their jobs; the watcher
        is woken once at the end and subscribes to all of them at once (a map's chunks:
        one wake instead of one per chunk; states written meanwhile are caught up)."""
        self._held.depth = getattr(self._held, "depth", 0) + 1
        try:
            yield
        finally:
            self._held.depth -= 1
            if not self._held.depth:
                self._wake()

    def worker_stopped(self, hostname: str, why: str) -> None:
        """The worker ``hostname`` is gone (its LocalCluster stopped it): its running
        jobs end LOST now, with ``why``, not after heartbeats go missing. Safe from any
        thread."""
        self._incoming.put(WorkerStopped(hostname, why))
        self._wake()

    def sync(self, timeout: float = 5.0) -> bool:
        """Wait until every job watched so far has received its current state
        (True), or ``timeout`` passes (False: e.g. the backend is unreachable).
        A covered call taken before the sync (see ``watch``) is not read back: its
        states come by the source's subscription, in a poll that may end after this."""
        caught_up = threading.Event()
        self._incoming.put(caught_up)
        self._wake()
        return caught_up.wait(timeout)

    def _wake(self) -> None:
        self._ensure_running()
        if self._wake_pending.is_set():
            return  # one wake per batch: the thread drains every new job at once
        self._wake_pending.set()
        try:
            self._source.wake()
        except Exception as exc:  # the thread will catch up when it polls
            log.debug("celerynb: wake failed: %s", exc)

    def workers_heard(self) -> list[str]:
        """Workers whose heartbeats were heard (none without a monitor)."""
        return self._monitor.workers_heard() if self._monitor is not None else []

    @property
    def sees_every_update(self) -> bool:
        """True when every state written reaches the jobs (push); False when only
        the latest state at each poll does."""
        return getattr(self._source, "sees_every_update", False)

    @property
    def watched_count(self) -> int:
        return len(self._jobs)

    def alive(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def stop(self, timeout: float = 5.0) -> None:
        self._stop.set()
        if self._monitor is not None:
            self._monitor.stop(timeout)
        try:
            self._source.wake()
        except Exception:
            pass
        if self._thread is not None:
            self._thread.join(timeout)

    def _ensure_running(self) -> None:
        if self._monitor is not None:
            self._monitor.start()
        with self._start_lock:
            if self._thread is None or not self._thread.is_alive():
                self._stop.clear()
                self._thread = threading.Thread(
                    target=self._run, name="celerynb-watcher", daemon=True
                )
                self._thread.start()

    @property
    def outage_note(self) -> str | None:
        """What to say under every unfinished job while the backend is unreachable."""
        since = self.outage_since
        if since is None:
            return None
        return (
            f"the result backend has been unreachable for {time.monotonic() - since:.0f}s "
            f"({self._outage_reason}); reconnecting, the bar resumes when it is back"
        )

    def _run(self) -> None:
        backoff = FIRST_BACKOFF
        lost_since: float | None = None  # an outage is reported once, in one line
        while not self._stop.is_set():
            try:
                if lost_since is not None:
                    updates = self._source.resync()  # subscribe again, catch up
                    self._dispatch(updates, live=True)
                    log.info(
                        "celerynb: reconnected to the result backend after %.1fs; "
                        "watching %d job(s) again",
                        time.monotonic() - lost_since,
                        len(self._jobs),
                    )
                    if self.outage_since is None and getattr(self._source, "restarted", False):
                        log.warning(
                            "celerynb: the result backend restarted; reconnected after %.1fs",
                            time.monotonic() - lost_since,
                        )
                    lost_since = None
                    self.reconnects += 1
                    self._end_outage()
                    if getattr(self._source, "data_lost", False):
                        self._tell_jobs_lost_with_the_data()
                self._step()
                backoff = FIRST_BACKOFF
                self.status = "watching"
            except Exception as exc:
                self.status = f"reconnecting: {type(exc).__name__}: {exc}"
                if lost_since is None:
                    # A healthy server may drop a subscriber (e.g. its pub/sub output
                    # buffer limit): say nothing unless reconnecting fails too.
                    lost_since = time.monotonic()
                    log.debug("celerynb watcher: connection dropped, reconnecting: %s", exc)
                elif self.outage_since is None:
                    self._begin_outage(lost_since, f"{type(exc).__name__}: {exc}")
                else:
                    log.debug("celerynb watcher: still reconnecting: %s", exc)
                if self._stop.wait(backoff):
                    break
                backoff = min(backoff * 2, MAX_BACKOFF)
        try:
            self._source.close()
        except Exception:
            pass

    def _begin_outage(self, since: float, reason: str) -> None:
        self.outage_since, self._outage_reason = since, reason
        log.warning(
            "celerynb: lost the connection to the result backend (%s); reconnecting in the "
            "background, the bars say so and resume when it is back",
            reason,
        )
        self._notify_all()

    def _end_outage(self) -> None:
        if self.outage_since is not None:
            self.outage_since = None
            self._notify_all()

    def _notify_all(self) -> None:
        for job in list(self._jobs.values()):
            job._notify()

    def _tell_jobs_lost_with_the_data(self) -> None:
        """The backend came back empty (restarted without persistence): a job still
        PENDING whose task no worker holds lost its queued message with it, when the
        broker is the same server. Asked in a thread (the answer takes a second)."""
        if self._app is None or not getattr(self._source, "broker_shares_server", False):
            return
        waiting = [job for job in self._jobs.values() if job.state == states.PENDING]

        def tell(held: dict[str, str]) -> None:
            lost = [job for job in waiting if job.id not in held]
            if lost:
                log.warning(
                    "celerynb: the broker restarted without its data: %d queued job(s) "
                    "were lost with it and will not run",
                    len(lost),
                )
            for job in lost:
                job._lose_message()

        self._ask_workers_about(waiting, tell)

    def _ask_workers_about(
        self, jobs: list[Watched], then: Callable[[dict[str, str]], None]
    ) -> None:
        """Ask the workers which of ``jobs`` they hold (``tasks_on_workers``) in a thread
        of its own (the answer takes up to a second), and call ``then`` with it."""
        if not jobs or self._app is None:
            return
        app = self._app

        def ask() -> None:
            try:
                held = tasks_on_workers(app, [job.id for job in jobs])
            except Exception as exc:  # the broker is away: nothing learnt this time
                log.debug("celerynb: asking the workers about %d job(s) failed: %s", len(jobs), exc)
                return
            then(held)

        threading.Thread(target=ask, name="celerynb-ask-workers", daemon=True).start()

    def _step(self) -> None:
        self._wake_pending.clear()  # before draining: a job queued from now on wakes again
        stopped: list[WorkerStopped] = []
        new, caught_up = self._take_incoming(stopped)
        self._follow(new, adopt=not caught_up)  # sync(): read every job back
        for event in caught_up:
            event.set()
        updates = self._source.poll(self._poll_timeout if self._jobs else 1.0)
        # Jobs queued while it polled: states of theirs may be among what it read.
        new, caught_up = self._take_incoming(stopped)
        self._dispatch(updates, live=True)
        self._follow(new, adopt=not caught_up)
        for event in caught_up:
            event.set()
        for worker in stopped:  # after the news: a job that finished just before is not lost
            self._lose_jobs_of(worker)
        # Jobs finished by an update are let go at once; all jobs are checked now
        # and then for those finished in the kernel (cancelled, abandoned).
        finished = self._finished_by_updates
        now = time.monotonic()
        if now >= self._next_full_check:
            self._next_full_check = now + FULL_CHECK_SECONDS
            self._check_workers_of_running_jobs(now)
            if self._queue_check is not None:
                self._queue_check.check(list(self._jobs.values()), now)
            self._ask_workers_about_attached_jobs(now)
            finished |= finished_job_ids(self._jobs)  # a LOST job stays watched (see there)
        if finished:
            self._source.unwatch(list(finished))
            for task_id in finished:
                self._jobs.pop(task_id, None)
                self._watched_since.pop(task_id, None)
            self._finished_by_updates = set()

    def _take_incoming(
        self, stopped: list[WorkerStopped]
    ) -> tuple[list[tuple[Watched, int | None]], list[threading.Event]]:
        """Everything queued so far: the new jobs (now followed by the watcher, their
        states applied from here on) and the sync events; stopped workers go to
        ``stopped``."""
        new: list[tuple[Watched, int | None]] = []
        caught_up: list[threading.Event] = []
        while True:
            try:
                item = self._incoming.get_nowait()
            except queue.Empty:
                break
            if isinstance(item, threading.Event):
                caught_up.append(item)
            elif isinstance(item, WorkerStopped):
                stopped.append(item)
            else:
                new.append(item)
        now = time.monotonic()
        for job, _covered in new:
            self._jobs[job.id] = job
            self._watched_since.setdefault(job.id, now)
            # Sent again (Job.retry) after an update ended it earlier in this step.
            self._finished_by_updates.discard(job.id)
        return new, caught_up

    def _follow(self, new: list[tuple[Watched, int | None]], adopt: bool = True) -> None:
        """Have the source follow new jobs: those its confirmed pattern covered before
        their calls left need nothing more (unless not ``adopt``); the others are
        caught up."""
        if not new:
            return
        adopted: list[str] = []
        others: list[Watched] = []
        for job, covered in new:
            if adopt and covered is not None and covered == self._covering(job.id):
                adopted.append(job.id)
            else:
                others.append(job)
        if adopted and self._covers is not None:
            self._covers.adopt(adopted)
        if not others:
            return
        try:
            self._dispatch(self._source.watch([job.id for job in others]))
        except (ValueError, TypeError) as exc:  # bad ids, not a lost connection:
            for job in others:  # drop them, or every later read would fail too
                self._jobs.pop(job.id, None)
                self._watched_since.pop(job.id, None)
                job._abandon(exc)
            log.warning("celerynb: cannot watch %d job(s): %s", len(others), exc)

    def _lose_jobs_of(self, worker: WorkerStopped) -> None:
        """End LOST the running jobs of a worker known to be gone, once their stored
        state is read again (one written just before it went counts). Not those whose
        task acknowledges late: their message is sent again (the liveness checks follow
        them as before, see ``runs_on``)."""
        jobs = [job for job in self._jobs.values() if runs_on(job, worker.hostname)]
        if not jobs:
            return
        self._dispatch(self._source.watch([job.id for job in jobs]))  # read them again
        for job in jobs:
            if runs_on(job, worker.hostname):
                job._lose(worker.hostname, 0.0, worker.why)

    def _check_workers_of_running_jobs(self, now: float) -> None:
        """See ``check_workers_of_running_jobs`` (none without a monitor)."""
        if self._monitor is not None:
            check_workers_of_running_jobs(self._jobs.values(), self._monitor, now)

    def _ask_workers_about_attached_jobs(self, now: float) -> None:
        """Ask the workers once (in a thread of its own: the answer takes up to a second)
        about attached jobs PENDING for ``UNKNOWN_AFTER`` s, to show those nobody has as
        UNKNOWN rather than PENDING forever, and about attached jobs running under no
        known name, which the worker running each can tell."""
        if self._app is None:
            return
        pending, unnamed = attached_jobs_to_ask(self._jobs.values(), self._watched_since, now)
        self._ask_workers_about(
            pending + unnamed, lambda found: tell_attached_jobs(pending, unnamed, found)
        )

    def _dispatch(self, updates: list[Update], live: bool = False) -> None:
        """Feed states to their jobs; ``live`` ones were just written (news of the
        worker), the others read back (a catch-up after watching or reconnecting)."""
        for task_id, meta in updates:
            job = self._jobs.get(task_id)
            if job is None or not isinstance(meta, dict):
                continue
            try:
                job._apply_meta(meta, live)
            except Exception:
                log.exception("celerynb watcher: could not apply an update to job %s", task_id)
            if job.done() and not getattr(job, "watch_after_done", False):
                self._finished_by_updates.add(task_id)
