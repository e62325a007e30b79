"""The dashboard's dropdown of jobs to cancel: a choice made in the page while the
options change must never come back as another job (ipywidgets syncs the position)."""

from hypothesis import given
from hypothesis import strategies as st

from celerynb._cancel_choices import ENDED, PLACEHOLDER, choice_label, next_choices
from celerynb._dashboard_jobs import JobRow


def job_row(i=0, name="simulate", state="PROGRESS") -> JobRow:
    return JobRow(f"id-{i:04d}", name, state, 40.0, "this kernel", True, False, 1.0)


def ids(choices):
    return [job_id for _, job_id in choices]


def test_a_choice_names_a_job_in_one_short_line():
    label = choice_label(job_row(name="a\nvery " + "long " * 40 + "name"))
    assert "\n" not in label and len(label) < 120
    assert label.endswith(" · id-0000 · this kernel")


def test_a_choice_stays_the_same_while_its_job_changes_state():
    labels = {choice_label(job_row(state=state)) for state in ("PENDING", "STARTED", "PROGRESS")}
    assert len(labels) == 1


def test_nothing_is_chosen_until_someone_picks_a_job():
    assert next_choices((), [], 50) == (PLACEHOLDER,)
    first = next_choices((PLACEHOLDER,), [job_row(1)], 50)
    assert first[0] == PLACEHOLDER and ids(first) == ["", "id-0001"]


def test_a_job_that_ends_keeps_its_place_marked_and_new_jobs_come_last():
    a, b, c, d = (job_row(i) for i in range(4))
    before = next_choices((PLACEHOLDER,), [a, b, c], 50)
    after = next_choices(before, [a, c, d], 50)  # b ended, d came
    assert ids(after) == ["", a.id, b.id, c.id, d.id]
    assert after[2][0] == before[2][0] + ENDED
    assert next_choices(after, [a, c, d], 50) == after, "the same jobs: the same options"


def test_ended_jobs_at_the_end_are_dropped_as_nothing_follows_them():
    a, b, c = (job_row(i) for i in range(3))
    shown = next_choices(next_choices((PLACEHOLDER,), [a, b, c], 50), [a, c], 50)
    assert ids(next_choices(shown, [a], 50)) == ["", a.id]
    assert next_choices(shown, [], 50) == (PLACEHOLDER,)


def test_a_place_is_never_given_to_another_job_by_the_update_that_frees_it():
    a, b = job_row(0), job_row(1)
    shown = next_choices((PLACEHOLDER,), [a], 50)
    replaced = next_choices(shown, [b], 50)  # a ended as b came: a stale pick of a's place
    assert ids(replaced) == ["", a.id, b.id]
    assert ids(next_choices(replaced, [b], 50)) == ["", a.id, b.id]


def test_past_the_limit_new_jobs_wait_for_room_at_the_end_and_no_job_moves():
    a, b, c, d = (job_row(i) for i in range(4))
    full = next_choices((PLACEHOLDER,), [a, b, c], 3)
    assert ids(next_choices(full, [a, b, c, d], 3)) == ["", a.id, b.id, c.id]
    b_ended = next_choices(full, [a, c, d], 3)
    assert ids(b_ended) == ["", a.id, b.id, c.id], "c stays where the page shows it"
    c_ended = next_choices(b_ended, [a, d], 3)
    assert ids(c_ended) == ["", a.id], "room made at the end, and nothing added in that update"
    assert ids(next_choices(c_ended, [a, d], 3)) == ["", a.id, d.id]


@given(st.lists(st.sets(st.integers(0, 12)), min_size=2, max_size=12), st.sampled_from([3, 50]))
def test_a_job_offered_before_and_after_a_change_is_at_the_same_position(steps, limit):
    """A position the page chose in one version of the options, read by the kernel in
    the next, is the job the page showed there (or that job marked ended), or no
    position at all (refused): never another job."""
    choices = (PLACEHOLDER,)
    for running in steps:
        rows = [job_row(i) for i in sorted(running)]
        updated = next_choices(choices, rows, limit)
        for position in range(min(len(choices), len(updated))):
            assert updated[position][1] == choices[position][1], (choices, updated)
        if limit == 50:  # never reached here: every job is offered at once
            assert set(ids(updated)) >= {row.id for row in rows}, "every unfinished job offered"
        for label, job_id in updated[1:]:
            assert (job_id in {row.id for row in rows}) != label.endswith(ENDED)
        choices = updated
