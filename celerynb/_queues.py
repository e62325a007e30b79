"""Kernel side: queues: how deep they are, and saying so when a job waits in a queue
that no online worker consumes.

A task sent to a queue nobody consumes stays PENDING for ever, silently. The watcher
hands ``QueueCheck`` its jobs once a second; for jobs PENDING a few seconds it asks
the workers which queues they consume (``inspect().active_queues()``, one broadcast,
from a thread of its own, at most every ``ASK_EVERY`` seconds) and notes the jobs
whose queue has no consumer, clearing the note once one appears or the job starts.
"""

from __future__ import annotations

import contextlib
import itertools
import logging
import threading
import time
from collections.abc import Callable, Iterable
from typing import Any

from celery import states

log = logging.getLogger(__name__)

CHECK_AFTER = 3.0  # seconds a job may wait PENDING before its queue is checked
ASK_EVERY = 5.0  # seconds between two questions to the workers
INSPECT_TIMEOUT = 1.0


def routed_queue(app: Any, task_name: str, options: dict[str, Any]) -> str | None:
    """The queue a task sent with ``options`` goes to, by the app's routing."""
    try:
        queue = app.amqp.router.route(dict(options), task_name)["queue"]
    except Exception:  # an odd router: fall back on what was asked for
        queue = options.get("queue") or app.conf.task_default_queue
    return getattr(queue, "name", queue) or None


def queue_note(queue: str, consumed: set[str] | None) -> str | None:
    """The note for a job waiting in ``queue`` (pure); ``consumed`` is None when no
    worker answered at all."""
    if consumed is None:
        return f"no worker is online to consume queue {queue!r}"
    if queue not in consumed:
        return f"no online worker consumes queue {queue!r}"
    return None


def consumed_queues(app: Any, timeout: float = INSPECT_TIMEOUT) -> set[str] | None:
    """Names of the queues online workers consume; None when no worker answered."""
    replies = app.control.inspect(timeout=timeout).active_queues() or {}
    if not replies:
        return None
    return {queue.get("name") for queues in replies.values() for queue in queues or ()}


MAX_QUEUES = 50  # queues whose depth one round asks for


def queue_depths(connection: Any, names: Iterable[str]) -> dict[str, int | None]:
    """How many messages wait in each queue (at most ``MAX_QUEUES``), by a passive
    declare on ``connection`` (a connected kombu Connection to the broker): Redis sums
    the queue's lists (one per priority), RabbitMQ counts its ready messages. A queue
    the broker does not know holds none (0); None where the broker did not say.

    Raises what the connection raises when the broker cannot be reached.
    """
    depths: dict[str, int | None] = {}
    wanted = list(dict.fromkeys(names))[:MAX_QUEUES]
    if not wanted:
        return depths
    channel = connection.channel()
    try:
        for name in wanted:
            try:
                _, messages, _ = channel.queue_declare(queue=name, passive=True)
                depths[name] = int(messages)
            except connection.channel_errors:  # not declared: nothing waits in it
                depths[name] = 0
                with contextlib.suppress(Exception):  # AMQP closed it on NOT_FOUND
                    channel.close()
                channel = connection.channel()
            except (TypeError, ValueError):
                depths[name] = None
    finally:
        with contextlib.suppress(Exception):
            channel.close()
    return depths


_CONTROL_QUEUE = ("celeryev.", ".pidbox")  # Celery's event and remote-control queues


def declared_queues(connection: Any, limit: int = MAX_QUEUES) -> list[str]:
    """The queues declared on the broker ``connection`` reaches, where the broker can
    tell (Redis: kombu's binding sets, read with a bounded SCAN); [] elsewhere.
    Celery's own event and remote-control queues are left out."""
    channel = connection.default_channel
    pattern = getattr(channel, "keyprefix_queue", None)  # "_kombu.binding.%s"
    client = getattr(channel, "client", None) if isinstance(pattern, str) else None
    if client is None or not hasattr(client, "scan_iter"):
        return []
    prefix = str(pattern) % ""
    found: dict[str, None] = {}
    for key in itertools.islice(client.scan_iter(match=f"{prefix}*", count=500), 200):
        name = key.decode(errors="replace") if isinstance(key, bytes) else str(key)
        for binding in channel.get_table(name[len(prefix) :]):  # the exchange's bindings
            queue = binding[-1]
            if queue and not any(part in queue for part in _CONTROL_QUEUE):
                found[queue] = None
            if len(found) >= limit:
                return list(found)
    return list(found)


class QueueCheck:
    """Notes PENDING jobs whose queue no online worker consumes (see the module)."""

    def __init__(
        self,
        app: Any,
        *,
        clock: Callable[[], float] = time.monotonic,
        ask: Callable[[Any], set[str] | None] = consumed_queues,
    ) -> None:
        self._app = app
        self._clock = clock
        self._ask = ask
        self._next_ask = 0.0
        self._asking = threading.Lock()

    def check(self, jobs: Iterable[Any], now: float | None = None) -> None:
        """Called from the watcher thread: clear notes of jobs that started, and ask
        about the queues of the jobs still waiting (in the background)."""
        now = self._clock() if now is None else now
        waiting = []
        for job in jobs:
            queue = getattr(job, "queue", None)
            if queue is None:
                continue
            if job.state != states.PENDING or job.done():
                job._set_note("queue", None)
            elif now - job._submitted_at >= CHECK_AFTER:
                waiting.append(job)
        if not waiting or now < self._next_ask or not self._asking.acquire(blocking=False):
            return
        self._next_ask = now + ASK_EVERY
        threading.Thread(
            target=self._note, args=(waiting,), name="celerynb-queues", daemon=True
        ).start()

    def _note(self, waiting: list[Any]) -> None:
        try:
            consumed = self._ask(self._app)
        except Exception as exc:  # the broker is away: the outage is said elsewhere
            log.debug("celerynb: asking which queues are consumed failed: %s", exc)
            return
        finally:
            self._asking.release()
        for job in waiting:
            if job.state == states.PENDING and not job.done():
                job._set_note("queue", queue_note(job.queue, consumed))
                if job.state != states.PENDING:  # started meanwhile
                    job._set_note("queue", None)
