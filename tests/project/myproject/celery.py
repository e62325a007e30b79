"""The project's Celery app. Broker and backend come from the environment in tests."""

import os

from celery import Celery

import celerynb.worker

app = Celery(
    "myproject",
    broker=os.environ.get("MYPROJECT_BROKER_URL", "redis://localhost:6379/0"),
    backend=os.environ.get("MYPROJECT_RESULT_BACKEND", "redis://localhost:6379/1"),
    include=["myproject.tasks"],
)
app.conf.update(task_default_queue="myproject", task_track_started=True)
celerynb.worker.register(app)  # this app's workers also run notebook-defined functions
