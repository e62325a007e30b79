"""What the watcher needs of a job: the ``Watched`` protocol (``Job`` implements it)."""

from __future__ import annotations

from typing import Any, Protocol


class Watched(Protocol):
    """What the watcher needs of a job (``Job`` implements it)."""

    id: str
    attached: bool
    asked_workers: bool
    asked_for_name: bool
    _submitted_at: float

    @property
    def state(self) -> str: ...

    @property
    def progress(self) -> Any: ...

    def done(self) -> bool: ...

    def _lose(self, hostname: str, silent_for: float, why: str | None = None) -> None: ...

    def _abandon(self, error: BaseException) -> None: ...

    def _lose_message(self) -> None: ...

    def _mark_unknown(self) -> None: ...

    def _notify(self) -> None: ...

    def _apply_meta(self, meta: dict[str, Any], live: bool = False) -> None: ...

    def _set_note(self, topic: str, text: str | None) -> None: ...

    def news_age(self, now: float) -> float | None: ...

    @property
    def worker_run(self) -> tuple[str, int | None] | None: ...

    def _learn_name(self, name: Any) -> None: ...
