"""Celery canvas attached whole: a chain or a chord by its final result, on real workers."""

import pytest
from celery import chain, chord, group

import celerynb
from celerynb._canvas import CanvasGroup, current_step, failed_step


def test_the_running_step_is_the_first_with_a_task_not_finished():
    assert current_step([["SUCCESS"], ["STARTED"], ["PENDING"]]) == 1
    assert current_step([["SUCCESS", "PENDING"], ["PENDING"]]) == 0  # a chord's header
    assert current_step([["SUCCESS"], ["FAILURE"], ["FAILURE"]]) == 2
    assert current_step([["PENDING"]]) == 0


def test_the_failed_step_is_the_first_with_a_failed_task():
    assert failed_step([["SUCCESS"], ["FAILURE"], ["FAILURE"]]) == 1  # Celery fails the rest
    assert failed_step([["SUCCESS", "LOST"], ["PENDING"]]) == 0
    assert failed_step([["SUCCESS"], ["STARTED"]]) is None


def test_a_chain_in_progress_names_its_running_step(session):
    steps = [["a"], ["b"], ["c"]]
    jobs = [celerynb.Job(task_id, f"tasks.{task_id}", session, shipped=False) for task_id in "abc"]
    canvas = CanvasGroup(jobs, steps, name="pipeline", session=session)
    jobs[0]._snapshot = jobs[0]._snapshot.with_state("SUCCESS")
    jobs[1]._snapshot = jobs[1]._snapshot.with_state("STARTED")
    assert canvas.stage == "step 2 of 3: tasks.b"
    assert canvas.kind == "chain"
    for job in jobs[1:]:  # Celery fails the steps after a failed one too
        job._snapshot = job._snapshot.with_state("FAILURE")
    assert canvas.stage == "step 2 of 3 failed: tasks.b"


def accumulate(session, *args):
    return session.app.signature("celery.accumulate", args=args)


def test_a_chain_is_watched_step_by_step_and_gives_the_last_steps_value(session):
    result = chain(accumulate(session, 1), accumulate(session, 2), accumulate(session, 3))()
    attached = celerynb.attach(result, name="three steps")
    assert isinstance(attached, CanvasGroup) and len(attached.jobs) == 3
    assert attached.result(timeout=30) == [[[1], 2], 3]  # each step gets the one before
    # its name where the result knows it, else "task 1a2b3c4d" until a worker tells it
    assert attached.stage.startswith("step 3 of 3: ")
    assert attached.progress.desc == f"three steps ({attached.stage})"
    assert attached.progress.n == 3 and attached.state == "SUCCESS"
    assert attached in celerynb.jobs()


def test_a_chord_is_watched_header_then_body(session):
    header = group(accumulate(session, i) for i in range(4))
    result = chord(header)(accumulate(session, "body"))
    attached = celerynb.attach(result)
    assert attached.kind == "chord" and len(attached.jobs) == 5
    value = attached.result(timeout=30)
    assert value[1] == "body" and sorted(map(tuple, value[0])) == [(i,) for i in range(4)]
    assert attached.stage.startswith("body: ")


def test_a_chain_whose_middle_step_fails_says_which_step_failed(session):
    failing = session.app.signature("celery.accumulate", args=(2,), kwargs={"index": 7})
    result = chain(accumulate(session, 1), failing, accumulate(session, 3))()
    attached = celerynb.attach(result)
    with pytest.raises(IndexError):
        attached.result(timeout=30)
    assert attached.stage.startswith("step 2 of 3 failed: "), attached.stage
    assert attached.state == "FAILURE"


def test_a_chord_whose_header_fails_says_so_and_a_one_task_header_is_a_chord(session):
    failing = session.app.signature("celery.accumulate", args=(1,), kwargs={"index": 9})
    header = group([accumulate(session, 0), failing, accumulate(session, 2)])
    attached = celerynb.attach(chord(header)(accumulate(session, "body")))
    with pytest.raises(IndexError):
        attached.result(timeout=30)
    assert attached.kind == "chord" and attached.stage == "header failed: 1 of 3 tasks"
    single = celerynb.attach(chord([accumulate(session, 1)])(accumulate(session, "body")))
    assert single.result(timeout=30) == [[[1]], "body"]
    assert single.kind == "chord" and single.stage.startswith("body: ")
