"""A user's existing Celery project, as the seed article sets one up (used by the tests)."""

from .celery import app

__all__ = ["app"]
