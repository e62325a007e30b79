"""Which job sets a notebook variable (pure: jobs stand in as plain objects)."""

from celerynb._assignments import set_latest, will_set


class Job:
    """A stand-in: set_latest only compares identities."""


def test_only_the_job_submitted_last_sets_a_variable():
    namespace: dict = {}
    first, second = Job(), Job()
    will_set(namespace, ["x", "kept"], first)
    will_set(namespace, ["x"], second)  # the cell run again
    set_latest(namespace, second, {"x": "new run"})
    set_latest(namespace, first, {"x": "old run", "kept": 1})  # finishes last
    assert namespace == {"x": "new run", "kept": 1}


def test_each_namespace_has_its_own_latest_job():
    one: dict = {}
    other: dict = {}
    job, later = Job(), Job()
    will_set(one, ["x"], job)
    will_set(other, ["x"], later)
    set_latest(one, job, {"x": 1})
    assert one == {"x": 1}


def test_a_value_never_asked_for_is_not_set():
    namespace: dict = {}
    job = Job()
    will_set(namespace, ["x"], job)
    set_latest(namespace, job, {"x": 1, "__builtins__": {}})
    assert namespace == {"x": 1}
