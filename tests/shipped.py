"""Functions several test modules ship to the workers (by value: see conftest)."""


def gated(gate, value, deadline=60.0):
    """Returns ``value`` once the file ``gate`` exists (or after ``deadline`` seconds)."""
    import os
    import time

    give_up = time.monotonic() + deadline
    while not os.path.exists(gate) and time.monotonic() < give_up:
        time.sleep(0.02)
    return value
