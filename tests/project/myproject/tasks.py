"""Plain ``@app.task`` functions, some reporting progress with celerynb.tqdm."""

import time

from celerynb import capture_output, tqdm

from .celery import app


@app.task
def calculate_factorial(n):
    if n == 0:
        return 1
    return n * calculate_factorial(n - 1)


@app.task
def crunch(values, scale=1, pause=0.0):
    total = 0
    for value in tqdm(values, desc="crunch"):
        time.sleep(pause)
        total += value * scale
    return total


@app.task(bind=True)
def recorded(self, n, pause=0.0):
    """Reports as celery-progress's ``ProgressRecorder.set_progress`` does."""
    for i in range(n):
        time.sleep(pause)
        self.update_state(
            state="PROGRESS",
            meta={
                "pending": False,
                "current": i + 1,
                "total": n,
                "percent": round((i + 1) / n * 100, 2),
                "description": "recorded",
            },
        )
    return n


@app.task(acks_late=True, reject_on_worker_lost=True)
def survives_worker_loss(n, pause=0.0):
    """Re-queued when its worker dies: runs again elsewhere; returns where it finished."""
    from celery import current_task

    for _ in tqdm(range(n), desc="survives"):
        time.sleep(pause)
    return current_task.request.hostname


@app.task(acks_late=True, reject_on_worker_lost=True)
def kills_its_worker():
    """Kills the pool process running it, every time: re-queued, it would loop forever."""
    import os
    import signal

    time.sleep(0.2)
    os.kill(os.getpid(), signal.SIGKILL)


@app.task
def chatty(n, pause=0.0):
    """Prints while a celerynb.tqdm reports: its lines go with the progress writes."""
    for i in tqdm(range(n), desc="chatty"):
        print(f"step {i}")
        time.sleep(pause)
    return n


@app.task
@capture_output
def talks(release_path):
    """Opted in: prints and logs reach the notebook live, with no progress reported."""
    import logging
    import os

    print("hello from my app")
    logging.getLogger("myproject").warning("careful")
    deadline = time.monotonic() + 60
    while not os.path.exists(release_path) and time.monotonic() < deadline:
        time.sleep(0.05)
    print("bye")
    return "talked"


@app.task
def silent_printer():
    """Neither reports progress nor opts in: its prints stay in the worker's log."""
    print("only in the worker log")
    return 0
