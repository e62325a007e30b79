"""Functions several test modules ship to the workers (by value: see conftest)."""


def gated(gate, value, deadline=60.0):
    """Returns ``value`` once the file ``gate`` exists (or after ``deadline`` seconds)."""
    import os
    import time

    give_up = time.monotonic() + deadline
    while not os.path.exists(gate) and time.monotonic() < give_up:
        time.sleep(0.02)
    return value


def fails_first_times(path, failures):
    """Fails its first ``failures`` runs (counted in the file ``path``), then returns the run."""
    from pathlib import Path

    counter = Path(path)
    run = int(counter.read_text()) if counter.exists() else 0
    counter.write_text(str(run + 1))
    if run < failures:
        raise ValueError(f"run {run} fails")
    return run
