"""The worker-side Celery app: ``celery -A celerynb.worker worker``.

Configured from the environment: ``CELERYNB_BROKER_URL`` (or ``CELERY_BROKER_URL``),
``CELERYNB_RESULT_BACKEND`` (default: the broker URL when it is Redis) and
``CELERYNB_SECRET``, the shared secret that signs shipped callables.

To run notebook-defined functions on your own app's workers instead, call
``celerynb.worker.register(your_app)`` in the module the workers import.
Importing this module never imports IPython, ipywidgets or notebook code.
"""

from __future__ import annotations

import os
from typing import Any

from celery import Celery, concurrency
from celery.signals import celeryd_init, worker_process_init

from ._config import (
    BACKEND_ENV,
    BROKER_ENV,
    REDIS_SCHEMES,
    SHIPPED_TASK_NAME,
    default_backend,
)
from ._memory import limit_this_process
from ._outcomes import ColdShutdownTask, ShippedTask
from ._redis_channel import CelerynbAMQP
from ._runner import run_shipped
from ._wire import CONTENT_TYPE, accept_shipped_calls
from ._worker_report import install as install_worker_report

# Settings of celerynb's own worker app (a user's app keeps its own; see the README).
WORKER_DEFAULTS: dict[str, Any] = {
    "task_serializer": "json",
    "result_serializer": "json",
    # Shipped calls come in celerynb's own binary content type (see _wire).
    "accept_content": ["json", CONTENT_TYPE],
    "task_track_started": True,
    # task-received/started/succeeded... events feed the dashboard's task stream, and an
    # open dashboard turns them on (enable_events). Off until then: a prefork worker's
    # main process spent 40% of its time publishing them, three per task, on tiny tasks
    # (bench_joblib). Other pools keep them on (see _task_events_unless_prefork).
    "worker_send_task_events": False,
    # One long task per child at a time; prefetching would starve other workers.
    "worker_prefetch_multiplier": 1,
    # Never copy args (the pickled payload) into every state write.
    "result_extended": False,
    "broker_connection_retry_on_startup": True,
    # A result backend restarting (e.g. Redis) must not lose results: retry storing
    # them, with backoff, a bounded number of times (~2 min), instead of failing.
    "result_backend_always_retry": True,
    "result_backend_max_retries": 15,
}


def register(app: Celery, secret: str | bytes | None = None) -> Any:
    """Register celerynb's generic task on ``app`` so its workers run shipped callables.

    ``secret`` defaults to ``$CELERYNB_SECRET`` read when a task runs. Every final
    state of a shipped call is signed, including those the worker's main process
    writes (a lost pool process, a time limit, a revoke: see ``_outcomes``). Its
    workers also report their processes' CPU and memory with their heartbeats
    (``_worker_report``), for the dashboard.
    """
    key = secret.encode() if isinstance(secret, str) else secret
    accept_shipped_calls(app)
    install_worker_report()  # CPU and memory with every heartbeat (the dashboard's)

    # Options, not attributes set afterwards: touching the task now would bind it to
    # the app's configuration before the app's module has finished configuring it.
    @app.task(name=SHIPPED_TASK_NAME, bind=True, shared=False, base=ShippedTask, celerynb_key=key)
    def run_shipped_task(self: Any, envelope: dict[str, Any]) -> dict[str, Any]:
        return run_shipped(self, envelope, secret=key)

    return run_shipped_task


def _broker_from_env() -> str:
    return os.environ.get(BROKER_ENV) or os.environ.get("CELERY_BROKER_URL") or "redis://"


def _backend_from_env(broker: str) -> str | None:
    return (
        os.environ.get(BACKEND_ENV)
        or os.environ.get("CELERY_RESULT_BACKEND")
        or default_backend(broker)
    )


def _broker_settings(broker: str) -> dict[str, Any]:
    """Settings that depend on the broker's transport."""
    if broker.split("://", 1)[0] not in REDIS_SCHEMES:
        return {}
    # Take a message only when a process is free to run it. Redis delivers again any
    # message left unacknowledged longer than its visibility_timeout, and a prefetched
    # message is unacknowledged until it starts: while a long job runs, the job queued
    # behind it would run once per timeout (measured: 3 times), and after a Redis
    # restart it would wait that long (1 h by default).
    return {"worker_disable_prefetch": True}


_broker = _broker_from_env()
app = Celery(
    "celerynb",
    broker=_broker,
    backend=_backend_from_env(_broker),
    task_cls=ColdShutdownTask,
    amqp=CelerynbAMQP,  # one Redis client per channel, not one per command
)
app.conf.update(WORKER_DEFAULTS)
app.conf.update(_broker_settings(_broker))
register(app)


@worker_process_init.connect(weak=False)
def _limit_memory(**_: Any) -> None:
    """A LocalCluster's memory limit, in each pool process as it starts."""
    limit_this_process()


@celeryd_init.connect(weak=False)
def _task_events_unless_prefork(
    instance: Any = None, conf: Any = None, options: Any = None, **_: Any
) -> None:
    """A worker of this app with a pool other than prefork sends task events from the
    start: without them a threads-pool worker stalled between short tasks (it fetched
    the next message only when something else woke its event loop; a test holds it)."""
    if getattr(instance, "app", None) is not app or conf is None:
        return
    options = options or {}
    pool = options.get("pool") or options.get("pool_cls") or conf.worker_pool  # as Celery
    if isinstance(pool, str):
        pool = concurrency.get_implementation(pool)
    if pool is not concurrency.get_implementation("prefork"):
        conf.worker_send_task_events = True
