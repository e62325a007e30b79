"""Pure parts of the magics: option splitting, call evaluation, cell analysis, tables."""

import pytest
from IPython.core.error import UsageError

from celerynb._cell import (
    CellResult,
    names_read_from_outside,
    parse_output_names,
    run_cell,
    without_redraws,
)
from celerynb._magics import CeleryMagics, evaluate_call, split_options
from celerynb._tables import JobTable, WorkerTable, text_table
from celerynb._workers import WorkerInfo

VALUE_FLAGS = {"-o", "--output", "-q", "--queue", "--countdown", "--time-limit"}


@pytest.mark.parametrize(
    ("line", "options", "code"),
    [
        ("f(1)", "", "f(1)"),
        ("-o x f(1, 'a b')", "-o x", "f(1, 'a b')"),
        ("-o x -q fast  tasks.crunch(x, scale=-2)", "-o x -q fast", "tasks.crunch(x, scale=-2)"),
        ("--queue=fast --output y g()", "--queue=fast --output y", "g()"),
        ("--bogus f()", "--bogus", "f()"),
        ("--countdown 3 --time-limit=2 f(-1)", "--countdown 3 --time-limit=2", "f(-1)"),
        ("-q", "-q", ""),
        ('-q " " f(3)', '-q " "', "f(3)"),
        ("-q 'a b' -o x f(3)", "-q 'a b' -o x", "f(3)"),
        ('--queue="fast lane" f(3)', '--queue="fast lane"', "f(3)"),
        ('-q "a"b f(3)', '-q "a"b', "f(3)"),
        ("  ", "", ""),
        ("-o total, mean", "-o total,mean", ""),  # a space after the comma, as in Python
        ("-o a, b, c -q fast", "-o a,b,c -q fast", ""),
        ("-o x, f(1)", "-o x,", "f(1)"),  # a call is not a name: the code begins
        ("-q a, b f(1)", "-q a,", "b f(1)"),  # only -o takes a list
    ],
)
def test_options_come_first_and_the_call_is_kept_verbatim(line, options, code):
    assert split_options(line, VALUE_FLAGS) == (options, code)


def double(x):
    return 2 * x


def test_the_local_cluster_size_is_a_number_of_processes():
    from IPython.core.magic_arguments import parse_argstring

    connect = CeleryMagics.celery_connect
    assert parse_argstring(connect, "--local -n 3").processes == 3
    assert parse_argstring(connect, "--local --processes 4").processes == 4
    assert parse_argstring(connect, "--local --workers 5").processes == 5  # its old name
    assert "pool processes of the local worker" in " ".join(connect.parser.format_help().split())


def test_a_call_is_evaluated_in_the_namespace_without_calling_it():
    namespace = {"double": double, "n": 4, "extra": {"k": 1}}
    fn, args, kwargs = evaluate_call(
        "double(n + 1, *[7], **extra, z=[i for i in range(2)])", namespace
    )
    assert fn is double and args == (5, 7) and kwargs == {"k": 1, "z": [0, 1]}


def test_registered_tasks_are_found_by_short_name_unless_the_notebook_has_the_name():
    fallback = {"calculate_factorial": "the task", "double": "shadowed"}
    fn, args, _ = evaluate_call("calculate_factorial(5)", {}, fallback)
    assert fn == "the task" and args == (5,)
    fn, _, _ = evaluate_call("double(5)", {"double": double}, fallback)
    assert fn is double


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("double", r"expected a call such as .* \(add the arguments in parentheses\)"),
        ("1 + double(2)", "expected a call"),
        ("double(", "not a Python call"),
    ],
)
def test_what_is_not_a_call_is_a_usage_error(text, message):
    with pytest.raises(UsageError, match=message):
        evaluate_call(text, {"double": double})


def test_a_long_input_is_quoted_short_in_the_error():
    for text, end in [("x" * 100_000, "(add the arguments in parentheses)"), ("f(" * 50, ")")]:
        with pytest.raises(UsageError) as info:
            evaluate_call(text, {})
        message = str(info.value)
        assert len(message) < 200 and "\n" not in message and message.endswith(end), message


def test_unknown_names_raise_name_error():
    with pytest.raises(NameError, match="nothere"):
        evaluate_call("nothere(1)", {})


CELL = """
import math
from os import path as p
total = 0
for x in data:
    total += scale * x
def helper(y):
    return y * offset + math.pi + total
counter += 1
result = helper(3) + len(items)
class Thing:
    attr = default_attr
"""


def test_a_cell_needs_the_names_it_reads_before_binding_them():
    needed = names_read_from_outside(CELL, "<cell>")
    # builtins (len) stay in the list; cell_inputs keeps only names the notebook has
    assert needed == ["data", "scale", "offset", "counter", "len", "items", "default_attr"]


def test_a_name_read_before_it_is_bound_is_needed():
    assert names_read_from_outside("x = x + 1\ny = x", "<cell>") == ["x"]
    assert names_read_from_outside("y = [v for v in values]", "<cell>") == ["values"]


def test_output_names_are_checked():
    assert parse_output_names("a, b,") == ("a", "b")
    assert parse_output_names(None) == ()
    with pytest.raises(ValueError, match="'1x' is not a variable name"):
        parse_output_names("a,1x")


@pytest.mark.parametrize(
    ("names", "message"),
    [
        ("__builtins__", "'__builtins__' is Python's own name"),
        ("total, __name__", "'__name__' is Python's own name"),
        ("class", "'class' is a Python keyword"),
        ("None", "'None' is a Python keyword"),
        ("get_ipython", "'get_ipython' is the IPython shell's own name"),
        ("Out", "'Out' is the IPython shell's own name"),
        ("_", "'_' is the IPython shell's own name"),
        ("_i3", "'_i3' is the IPython shell's own name"),
        ("_12", "'_12' is the IPython shell's own name"),
    ],
)
def test_output_names_that_would_break_the_kernel_are_refused(names, message):
    with pytest.raises(ValueError, match=message):
        parse_output_names(names)


def test_names_a_startup_file_or_pylab_hid_are_still_the_users():
    assert parse_output_names("mean, pi, open, _private, __secret") == (
        "mean",
        "pi",
        "open",
        "_private",
        "__secret",
    )


def test_output_names_are_read_as_python_reads_identifiers():
    assert parse_output_names("\ufb01le, __secret") == ("file", "__secret")


def test_run_cell_returns_the_asked_variables_and_the_output():
    import pickle

    result = run_cell("print('hi')\nz = w * 2\n", "<c>", pickle.dumps({"w": 21}), ("z",))
    assert result == CellResult({"z": 42}, "hi\n", "")
    with pytest.raises(NameError, match="the cell did not define 'q'") as info:
        run_cell("print('partial')\n", "<c>", pickle.dumps({}), ("q",))
    assert info.value.celerynb_output.stdout == "partial\n"


def test_captured_output_keeps_the_last_state_of_a_redrawn_line():
    bar = "\rbar:   0%|   | 0/2\rbar:  50%|#  | 1/2\rbar: 100%|###| 2/2\n"
    assert without_redraws(f"start\n{bar}end\r\n") == "start\nbar: 100%|###| 2/2\nend\n"
    assert without_redraws("half\rdrawn") == "drawn"  # a bar left open
    assert without_redraws("plain\ntext\n") == "plain\ntext\n"


def test_tables_line_up():
    assert text_table(["a", "bb"], [["xxx", "y"]]) == "a    bb\nxxx  y"
    assert str(JobTable()) == "no jobs in this kernel yet"
    workers = WorkerTable(
        [WorkerInfo("w1@h", "prefork", 4, ("celery",), (("abcdef0123", "t.run"),), ())]
    )
    assert workers.online_summary() == "1 worker online (4 processes)"
    assert "w1@h" in str(workers) and "1: t.run abcdef01" in str(workers)
    assert "<table class='celerynb-workers'>" in workers._repr_html_()
    assert str(workers).splitlines()[1].split()[3] == "?"  # memory: unknown (another machine)
    noted = WorkerTable(
        workers, memory={"w1@h": 300 * 2**20}, note="LocalCluster: 1 worker, restarted 1x"
    )
    lines = str(noted).splitlines()
    assert lines[0] == "LocalCluster: 1 worker, restarted 1x" and "300 MiB" in lines[2]
    assert noted._repr_html_().startswith("<p>LocalCluster: 1 worker, restarted 1x</p>")


def test_a_long_job_table_shows_counts_and_the_latest_rows():
    from types import SimpleNamespace

    no_progress = SimpleNamespace(percent=None, bars=())
    table = JobTable(
        SimpleNamespace(
            id=f"id-{i}",
            call_repr=f"f({i})",
            state="SUCCESS" if i < 1100 else "PENDING",
            progress=no_progress,
            elapsed=1.0,
            done=(lambda i=i: i < 1100),
        )
        for i in range(1200)
    )
    text = str(table).splitlines()
    assert text[0] == "1200 jobs: 1100 SUCCESS, 100 PENDING; the last 50 shown"
    assert len(text) == 2 + 50 and text[-1].startswith("id-1199")
    assert text[2].startswith("id-1150 ") and "id-1149 " not in str(table)
    assert table._repr_html_().startswith("<p>1200 jobs: 1100 SUCCESS")
    assert len(table.running()) == 100  # the list itself keeps every job


def test_the_registry_lets_go_of_the_oldest_finished_jobs_only():
    from types import SimpleNamespace

    from celerynb._registry import JobRegistry

    kept = JobRegistry(max_kept=10)
    for i in range(30):
        kept.add(SimpleNamespace(id=f"j{i}", done=(lambda i=i: i % 3 != 0)))
    ids = [job.id for job in kept.all()]
    assert len(ids) <= 10 + 1
    assert all(f"j{i}" in ids for i in range(0, 30, 3)), "unfinished jobs are never dropped"
    assert ids[-1] == "j29" and ids == sorted(ids, key=lambda name: int(name[1:]))
