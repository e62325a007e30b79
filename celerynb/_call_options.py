"""Celery's calling options (``countdown``, ``expires``, time limits...): checked once,
turned into ``send_task`` options, and told back on the job's widget. Pure logic."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from typing import Any

from kombu.utils.json import dumps as json_dumps

from ._errors import message_of
from ._validation import check_queue

# Message headers Celery itself writes: a user's ``headers`` must not replace them.
RESERVED_HEADERS = frozenset(
    {
        "lang", "task", "id", "shadow", "eta", "expires", "group", "group_index", "retries",
        "timelimit", "root_id", "parent_id", "argsrepr", "kwargsrepr", "origin",
        "ignore_result", "replaced_task_nesting", "stamped_headers", "stamps", "reply_to",
        "correlation_id", "priority", "delivery_info",
    }
)  # fmt: skip
MAX_PRIORITY = 255  # AMQP's range; Redis maps 0-9 (Celery's priority_steps)
# Celery's own options, sent with the message as they are.
SENT = ("countdown", "eta", "expires", "priority", "time_limit", "soft_time_limit")
RETRIES = ("retries", "retry_delay", "retry_lost")  # celerynb's, not Celery's
SHOWN = (*SENT, *RETRIES)  # in a job's call line
OPTION_NAMES = (*SENT, "headers", *RETRIES)  # what map, Executor... take


@dataclass(frozen=True)
class CallOptions:
    """Celery's options for one call (or every chunk of a map). Build with ``of``."""

    queue: str | None = None
    countdown: float | None = None  # seconds from now
    eta: datetime | None = None  # an aware datetime (naive ones are taken as local time)
    expires: datetime | None = None  # absolute: the same instant on every chunk
    priority: int | None = None
    time_limit: float | None = None
    soft_time_limit: float | None = None
    headers: dict[str, Any] = field(default_factory=dict)
    retries: int = 0  # a failed call runs again up to this many times (celerynb's, not Celery's)
    retry_delay: float = 0.0  # seconds before each new run
    retry_lost: int = 0  # a job lost with its worker (or message) is sent again this often

    @classmethod
    def of(
        cls,
        *,
        queue: str | None = None,
        countdown: float | None = None,
        eta: datetime | None = None,
        expires: float | datetime | None = None,
        priority: int | None = None,
        time_limit: float | None = None,
        soft_time_limit: float | None = None,
        headers: dict[str, Any] | None = None,
        retries: int = 0,
        retry_delay: float = 0.0,
        retry_lost: int = 0,
        now: datetime | None = None,
    ) -> CallOptions:
        """Checked options; ``expires`` in seconds becomes an instant (from ``now``).

        Raises:
            ValueError / TypeError: one line naming the option and what it takes.
        """
        check_queue(queue)
        if countdown is not None and eta is not None:
            raise ValueError("give countdown or eta, not both")
        countdown = _seconds("countdown", countdown, zero_ok=True)
        if eta is not None:
            eta = _aware("eta", eta)
        expires_at = None
        if isinstance(expires, datetime):
            expires_at = _aware("expires", expires)
        elif expires is not None:
            seconds = _seconds("expires", expires)
            assert seconds is not None
            expires_at = (now or datetime.now(timezone.utc)) + timedelta(seconds=seconds)
        if priority is not None and (
            isinstance(priority, bool) or not isinstance(priority, int) or not 0 <= priority <= 255
        ):
            raise ValueError(f"priority must be an int from 0 to {MAX_PRIORITY}, got {priority!r}")
        time_limit = _seconds("time_limit", time_limit)
        soft_time_limit = _seconds("soft_time_limit", soft_time_limit)
        if time_limit is not None and soft_time_limit is not None and soft_time_limit >= time_limit:
            raise ValueError(
                f"soft_time_limit ({soft_time_limit:g} s) must be less than time_limit "
                f"({time_limit:g} s): the soft one warns the call before the hard one stops it"
            )
        headers = _headers(headers)
        if isinstance(retries, bool) or not isinstance(retries, int) or not 0 <= retries <= 100:
            raise ValueError(f"retries must be an int from 0 to 100, got {retries!r}")
        delay = _seconds("retry_delay", retry_delay, zero_ok=True) or 0.0
        if (
            isinstance(retry_lost, bool)
            or not isinstance(retry_lost, int)
            or not 0 <= retry_lost <= 100
        ):
            raise ValueError(f"retry_lost must be an int from 0 to 100, got {retry_lost!r}")
        return cls(
            queue,
            countdown,
            eta,
            expires_at,
            priority,
            time_limit,
            soft_time_limit,
            headers,
            retries,
            delay,
            retry_lost,
        )

    def send_options(self) -> dict[str, Any]:
        """The options for Celery's ``send_task`` (those given; ``queue`` apart)."""
        options: dict[str, Any] = {}
        for name in SENT:
            value = getattr(self, name)
            if value is not None:
                options[name] = value
        if self.headers:
            options["headers"] = dict(self.headers)
        return options

    def starts_at(self, sent_at: datetime) -> datetime | None:
        """When a call sent at ``sent_at`` may start (None: at once)."""
        if self.eta is not None:
            return self.eta
        if self.countdown:
            return sent_at + timedelta(seconds=self.countdown)
        return None

    def described(self) -> str:
        """The options as a call shows them, e.g. ``countdown=30, time_limit=2``."""
        shown = []
        for name in SHOWN:
            value = getattr(self, name)
            if value is not None and (value or name not in RETRIES):  # retries=0: not shown
                text = value.isoformat(timespec="seconds") if isinstance(value, datetime) else value
                shown.append(f"{name}={text:g}" if isinstance(text, float) else f"{name}={text}")
        return ", ".join(shown)


def call_options(caller: str, queue: str | None = None, **options: Any) -> CallOptions:
    """``CallOptions.of`` for ``caller`` (map, Executor...): an unknown name is a
    TypeError that lists the options there are."""
    unknown = sorted(set(options) - set(OPTION_NAMES))
    if unknown:
        raise TypeError(
            f"{caller}() got an unexpected keyword argument {unknown[0]!r}; "
            f"Celery's options are {', '.join(OPTION_NAMES)}"
        )
    return CallOptions.of(queue=queue, **options)


def waiting_note(
    options: CallOptions | None, sent_at: datetime, now: datetime, *, ended: bool = False
) -> str | None:
    """What a job that has not run says about its options: "starts in 30 s", or
    "expired" once its expiry passed (the workers drop it unrun). ``ended``: a job
    that ended unrun (cancelled) says only the latter."""
    if options is None:
        return None
    if options.expires is not None and now >= options.expires:
        return f"expired at {_clock(options.expires)}: the workers do not run it"
    if ended:
        return None
    starts = options.starts_at(sent_at)
    if starts is not None and starts > now:
        return f"starts in {math.ceil((starts - now).total_seconds())} s (at {_clock(starts)})"
    return None


def time_limit_note(options: CallOptions | None, error: BaseException | None) -> str | None:
    """The note of a call stopped at a limit: "time limit 2 s exceeded" (Celery's
    ``TimeLimitExceeded``), "soft time limit 1 s exceeded" (``SoftTimeLimitExceeded``
    the call let out)."""
    if error is None:
        return None
    text = f"{type(error).__name__} {message_of(error)}"
    soft = "SoftTimeLimitExceeded" in text
    if not soft and "TimeLimitExceeded" not in text:
        return None
    what = "soft time limit" if soft else "time limit"
    limit = None if options is None else options.soft_time_limit if soft else options.time_limit
    return f"{what} {limit:g} s exceeded" if limit else f"its {what} was exceeded"


def _clock(moment: datetime) -> str:
    return moment.astimezone().strftime("%H:%M:%S")


def _seconds(name: str, value: Any, *, zero_ok: bool = False) -> float | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float) or math.isnan(value):
        raise TypeError(f"{name} takes seconds (a number), got {value!r}")
    if value < 0 or (value == 0 and not zero_ok) or math.isinf(value):
        raise ValueError(f"{name} must be a positive number of seconds, got {value!r}")
    return float(value)


def _aware(name: str, value: Any) -> datetime:
    if not isinstance(value, datetime):
        raise TypeError(f"{name} takes a datetime, got {type(value).__name__}")
    # A naive datetime is this machine's local time, as datetime.now() gives it (and
    # as the widget shows times), not UTC: eta=datetime.now() + timedelta(minutes=5).
    return value if value.tzinfo is not None else value.astimezone()


def _headers(headers: Any) -> dict[str, Any]:
    if headers is None:
        return {}
    if not isinstance(headers, dict) or not all(isinstance(k, str) for k in headers):
        raise TypeError("headers takes a dict with str keys")
    clash = sorted(set(headers) & RESERVED_HEADERS)
    if clash:
        raise ValueError(f"headers may not set Celery's own {', '.join(clash)}")
    for key, value in headers.items():
        try:  # the message travels as (kombu's) JSON: fail here, not as a send error
            json_dumps(value)
        except (TypeError, ValueError):
            raise TypeError(
                f"headers[{key!r}] must be JSON data (str, number, bool, None, list, dict...), "
                f"got {type(value).__name__}"
            ) from None
    return dict(headers)
