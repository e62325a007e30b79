"""The magics in a real kernel, against real Redis and real workers."""

import contextlib
import json
import re
from pathlib import Path

import psutil
import pytest
from conftest import celery_user_env, wait_for
from kernel_helpers import Kernel

from celerynb._config import mask_url

pytestmark = pytest.mark.needs_server

FUNCTIONS = """
import time, celery, celerynb
def simulate(n, pause=0.01):
    from celerynb import tqdm
    total = 0
    for i in tqdm(range(n), desc="simulate"):
        time.sleep(pause)
        total += i
    return total

def fails():
    raise ValueError("bad input 7")

def where():
    return celery.current_task.request.hostname
"""


@pytest.fixture(scope="module")
def kernel(cluster, project_worker, tmp_path_factory):
    # The kernel knows the broker only as CELERY_BROKER_URL, as a Celery user would set it.
    started = Kernel(cwd=str(tmp_path_factory.mktemp("magics")), env=celery_user_env(cluster))
    try:
        started.ok("%load_ext celerynb")
        started.ok(FUNCTIONS)
        started.ok("%celery_connect")
        yield started
    finally:
        started.close()


def assert_one_usage_line(cell, pattern):
    assert cell.status == "error", cell
    lines = cell.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("UsageError: "), cell.stderr
    assert re.search(pattern, lines[0]), lines[0]
    assert not cell.errors, "a traceback was shown"


def test_connect_without_arguments_uses_celery_broker_url(kernel, cluster):
    cell = kernel.ok("%celery_connect")
    assert cell.stdout.count("\n") == 1, cell.stdout
    assert re.fullmatch(
        rf"celerynb: connected to {re.escape(mask_url(cluster.broker_url))}; "
        r"2 workers online \(4 processes\)\n",
        cell.stdout,
    ), cell.stdout


def test_connect_prints_a_masked_url_when_the_broker_is_down(kernel):
    cell = kernel.run("%celery_connect redis://:hunter2@127.0.0.1:1/0")
    assert_one_usage_line(cell, r"cannot reach the broker at redis://:\*\*@127.0.0.1:1/0")
    assert "hunter2" not in cell.stderr + cell.stdout


def test_submit_returns_at_once_shows_the_widget_and_assigns_on_success(kernel):
    cell = kernel.ok("job = %celery_submit -o answer simulate(60)")
    assert cell.elapsed < 2.0, f"the magic took {cell.elapsed:.2f}s"
    assert len(cell.widgets) == 1, cell.outputs  # shown once although assigned
    assert "simulate: " in cell.text
    kernel.ok("job.result(timeout=30)")
    cell = kernel.ok("print(answer, job.state, type(job).__name__)")
    assert cell.stdout == f"{sum(range(60))} SUCCESS Job\n"
    cell = kernel.ok("%celery_submit simulate(3)")  # the magic's value, shown once
    assert len(cell.widgets) == 1 and not [o for o in cell.outputs if "text/html" in o]


def test_output_variable_is_untouched_when_the_job_fails(kernel):
    kernel.ok("untouched = 'before'")
    kernel.ok("failing = %celery_submit -o untouched fails()")
    final = kernel.final_text("ValueError: bad input 7")
    assert "fails: FAILURE" in final
    cell = kernel.ok("import concurrent.futures as cf; cf.wait([failing], 30); print(untouched)")
    assert cell.stdout == "before\n"
    cell = kernel.ok("print(failing.remote_traceback)")
    assert 'raise ValueError("bad input 7")' in cell.stdout  # source line restored


def test_queue_option_routes_the_job(kernel, project_worker):
    kernel.ok("elsewhere = %celery_submit -q myproject where()")
    cell = kernel.ok("print(elsewhere.result(timeout=30))")
    assert cell.stdout.strip() == project_worker
    kernel.ok("here = %celery_submit where()")
    cell = kernel.ok("print(here.result(timeout=30))")
    assert cell.stdout.strip().startswith("celerynb-")


def test_celerys_call_options_go_with_the_magics_call(kernel):
    kernel.ok(
        "import time\n"
        "sent = time.time()\n"
        "later = %celery_submit --countdown 2 --time-limit 30 --priority 3 where()"
    )
    cell = kernel.ok(
        "later.result(timeout=30)\n"
        "print(time.time() - sent >= 2, 'countdown=2' in later.call_repr, later.state)"
    )
    assert cell.stdout.split() == ["True", "True", "SUCCESS"]
    cell = kernel.run("%celery_submit --priority 300 where()")
    assert_one_usage_line(cell, r"priority must be an int from 0 to 255, got 300")


@pytest.fixture
def app_connection(kernel):
    yield kernel.ok("%celery_connect -A myproject.celery:app")
    kernel.ok("%celery_connect")  # back to the connection the other tests use


def test_existing_app_and_its_registered_tasks(kernel, project_worker, app_connection):
    cell = app_connection
    assert re.match(r"celerynb: connected to app 'myproject' \(8 tasks\) at redis://", cell.stdout)
    # A registered task found by its short name, another through its module.
    kernel.ok("fact = %celery_submit -o factorial calculate_factorial(5)")
    kernel.ok("from myproject import tasks; x = [1, 2, 3]")
    kernel.ok("crunched = %celery_submit tasks.crunch(x, scale=2)")
    cell = kernel.ok(
        "print(fact.result(timeout=30), crunched.result(timeout=30), factorial, fact.name)"
    )
    assert cell.stdout == "120 12 120 myproject.tasks.calculate_factorial\n"
    kernel.ok("nb = %celery_submit where()")  # notebook code runs on the app's own workers
    assert kernel.ok("print(nb.result(timeout=30))").stdout.strip() == project_worker


SEED = """
from myproject.tasks import calculate_factorial, crunch, recorded
result = calculate_factorial.delay(5)          # the seed's example, as written
deadline = time.monotonic() + 30
while result.state != 'SUCCESS' and time.monotonic() < deadline:
    time.sleep(0.05)
print(result.state == 'SUCCESS', result.get(timeout=30), celerynb.attach(result).result(timeout=10))

seen = {"recorded": [], "crunch": []}
recorder_style = celerynb.attach(recorded.delay(20, 0.05))
recorder_style.add_listener(lambda job: seen["recorded"].append(job.progress.n))
tqdm_style = celerynb.attach(crunch.delay(list(range(20)), 1, 0.05))
tqdm_style.add_listener(lambda job: seen["crunch"].append(job.progress.n))
recorder_style
"""


def test_seed_example_and_both_progress_styles_of_an_app_show_live(
    kernel, project_worker, app_connection
):
    cell = kernel.ok(SEED, timeout=60)
    assert cell.stdout == "True 120 120\n"
    assert len(cell.widgets) == 1
    final = kernel.final_text("recorded: SUCCESS", timeout=30)
    assert "20/20" in final, final
    cell = kernel.ok(
        "import json; print(json.dumps([tqdm_style.result(timeout=30), seen]))", timeout=60
    )
    total, seen = json.loads(cell.stdout)
    assert total == 190
    for style, steps in seen.items():  # live: steps seen on the way, then the end
        assert any(0 < n < 20 for n in steps) and steps[-1] == 20, (style, steps)


def test_cell_magic_ships_inputs_and_returns_outputs_and_stdout(kernel):
    kernel.ok("data = list(range(10)); scale = 3; total = 'old'")
    cell = kernel.ok(
        "%%celery_submit -o total, mean\n"  # a space after the comma too
        "import math\n"
        "total = 0\n"
        "for v in data:\n"
        "    total += simulate(2, 0.05) + v * scale\n"  # 1 s: shown live, not done at once
        "mean = total / len(data)\n"
        "print('total is', total)\n"
        "print('careful', file=__import__('sys').stderr)\n"
    )
    assert len(cell.widgets) == 1
    final = kernel.final_text("total is")
    assert "SUCCESS" in final and "careful" in final
    cell = kernel.ok(
        "r = celerynb.jobs()[-1].result(timeout=30)\n"
        "print(total, mean, sorted(r.values), repr(r.stdout))"
    )
    assert cell.stdout == "145 14.5 ['mean', 'total'] 'total is 145\\n'\n"


TQDM_CELL = """%%celery_submit
import time
{bar_import}
for _ in {bar}(range(20), desc="cell bar"):
    time.sleep(0.01)
from tqdm.contrib import tenumerate  # a library's own plain tqdm.auto bar
for _ in tenumerate(range(5), desc="library"):
    pass
print("cell done")
"""

OUTPUT_OF_THE_LAST_JOB = """
import json
from celerynb._display import final_text
last = celerynb.jobs()[-1]
out = last.result(timeout=30)
bars = [[bar.desc, bar.n, bar.total] for bar in last.progress.bars]
print(json.dumps([out.stdout, out.stderr, final_text(last), bars]))
"""


@pytest.mark.parametrize(
    ("bar_import", "bar"),
    [
        ("from tqdm import tqdm", "tqdm"),
        ("import tqdm.auto", "tqdm.auto.tqdm"),
        ("", "notebook_tqdm"),  # a notebook variable, shipped with the cell
        ("from tqdm import trange", "(lambda r, desc: trange(len(r), desc=desc))"),
    ],
)
def test_tqdm_in_a_cell_reports_the_jobs_progress_and_no_redrawn_lines(kernel, bar_import, bar):
    """A plain tqdm in a %%celery_submit cell wrote every redraw of its bar to the captured
    stderr, shown as lines under the widget (and more of them on a second run)."""
    kernel.ok("from tqdm.auto import tqdm as notebook_tqdm")
    for _ in range(2):
        kernel.ok(TQDM_CELL.format(bar_import=bar_import, bar=bar))
        cell = kernel.ok(OUTPUT_OF_THE_LAST_JOB, timeout=60)
        stdout, stderr, final, bars = json.loads(cell.stdout)
        assert stdout == "cell done\n"
        assert bars == [["cell bar", 20, 20]], "the cell's bar is the job's progress"
        # Other code's text bar: its last state only, one line.
        assert "\r" not in stderr and stderr.count("\n") == 1, repr(stderr)
        assert stderr.startswith("library: 100%") and "5/5" in stderr, repr(stderr)
        shown = [line for line in final.splitlines() if "%|" in line]
        assert shown == [f"[stderr] {stderr.strip()}"], final  # once, marked as stderr


def test_cell_magic_failure_shows_output_and_traceback_and_keeps_variables(kernel):
    kernel.ok("kept = 'yes'")
    kernel.ok("%%celery_submit -o kept\nprint('about to fail')\nkept = 1 / 0\n")
    final = kernel.final_text("about to fail")
    assert "FAILURE" in final and "ZeroDivisionError" in final
    assert "kept = 1 / 0" in final  # the cell's own source line, from the worker
    assert kernel.ok("print(kept)").stdout == "yes\n"


def test_cell_magic_names_what_cannot_be_shipped_and_sends_nothing(kernel):
    kernel.ok("import threading; lock = threading.Lock(); before = len(celerynb.jobs())")
    cell = kernel.run("%%celery_submit\nwith lock:\n    print('locked')\n")
    assert_one_usage_line(cell, r"cannot ship notebook variable 'lock' \(lock\)")
    assert kernel.ok("print(len(celerynb.jobs()) - before)").stdout == "0\n"
    cell = kernel.run("%%celery_submit\n%time x = 1\n")
    assert_one_usage_line(cell, r"SyntaxError")


def test_jobs_and_workers_tables(kernel, project_worker):
    kernel.ok("listed = %celery_submit simulate(5)\nlisted.result(timeout=30)")
    cell = kernel.ok("%celery_jobs")
    text = cell.text
    assert text.splitlines()[0].split() == ["id", "call", "state", "progress", "elapsed"]
    row = [line for line in text.splitlines() if "simulate(5)" in line][-1]
    assert "SUCCESS" in row and "100% (5/5)" in row
    assert any("celerynb-jobs" in o.get("text/html", "") for o in cell.outputs)
    cell = kernel.ok("%celery_jobs --previous")  # this kernel's notebook had no earlier kernel
    assert cell.text == "no jobs of this notebook from earlier kernels on this backend"
    cell = kernel.ok("%celery_workers")
    assert project_worker in cell.text and "prefork" in cell.text
    ours = r"celerynb-\d+@\S+\s+prefork\s+2\s+[\d,]+ MiB\s+celery\s"  # its memory: local
    assert re.search(ours, cell.text), cell.text


def test_cancel_by_id_prefix_and_all(kernel):
    kernel.ok("a = %celery_submit simulate(2000, 0.01)\nb = %celery_submit simulate(2000, 0.01)")
    kernel.ok("import time\nwhile a.state != 'PROGRESS' and time.sleep(0.05) is None: pass")
    cell = kernel.ok("%celery_cancel {a.id[:8]}")
    assert re.fullmatch(r"celerynb: cancelled 1 job: [0-9a-f-]{36}\n", cell.stdout), cell.stdout
    cell = kernel.ok("%celery_cancel --all")
    assert "cancelled 1 job" in cell.stdout
    cell = kernel.ok("print(a.state, b.state, a.cancelled(), b.cancelled())")
    assert cell.stdout == "REVOKED REVOKED True True\n"
    assert "nothing to cancel" in kernel.ok("%celery_cancel --all").stdout


@pytest.mark.parametrize(
    ("line", "pattern"),
    [
        ("%celery_submit nothere(1)", r"NameError: name 'nothere' is not defined"),
        ("%celery_submit simulate", r"expected a call .*add the arguments"),
        ("%celery_submit simulate(", r"not a Python call"),
        ("%celery_submit --bogus simulate(1)", r"unrecognized arguments: --bogus"),
        ("%celery_submit -o 1x simulate(1)", r"'1x' is not a variable name"),
        ("%celery_submit -o __builtins__ simulate(1)", r"'__builtins__' is Python's own name"),
        ("%celery_submit -o get_ipython simulate(1)", r"'get_ipython' is the IPython shell's"),
        ("%%celery_submit -o __builtins__\npass", r"'__builtins__' is Python's own name"),
        ("%celery_submit", r"give a call to run"),
        ("%celery_submit simulate(1/0)", r"ZeroDivisionError"),
        (
            "%celery_submit print(__import__('threading').Lock())",
            r"cannot ship argument 1 of print\(\) \(lock\)",
        ),
        ("%celery_connect --local redis://x", r"give one of URL, --local or -A APP"),
        ("%celery_connect -A nosuchmodule:app", r"ModuleNotFoundError|No module named"),
        ("%celery_connect ftp://nowhere", r"ftp"),
        ("%celery_cancel", r"give job ids or --all"),
        ("%celery_cancel 0000", r"no job of this kernel has an id starting with '0000'"),
        ("%celery_workers -t x", r"invalid float value"),
    ],
)
def test_bad_calls_print_one_short_line(kernel, line, pattern):
    cell = kernel.run(line, timeout=30)
    assert_one_usage_line(cell, pattern)
    assert cell.elapsed < 10


def test_help_shows_usage(kernel):
    cell = kernel.ok("%celery_submit?")
    pages = [p["data"]["text/plain"] for p in cell.reply.get("payload", []) if "data" in p]
    assert pages and "%celery_submit [-o VAR] [-q QUEUE] [--countdown S]" in pages[0]
    assert "[--time-limit S]" in pages[0] and "[call ...]" in pages[0]
    assert "With -o VAR, VAR is set when the job succeeds" in pages[0]


def test_kernel_stays_responsive_while_several_jobs_run(kernel):
    kernel.ok("running = [celerynb.apply_async(simulate, (300, 0.01)) for _ in range(4)]")
    for _ in range(3):
        kernel.ok("job = %celery_submit simulate(200, 0.01)")
    slowest = max(kernel.ok("1 + 1").elapsed for _ in range(10))
    assert slowest < 1.0, f"a trivial cell took {slowest:.2f}s while jobs ran"
    cell = kernel.ok("print(sum(j.result(timeout=60) for j in running))", timeout=90)
    assert cell.stdout == f"{4 * sum(range(300))}\n"


def test_local_cluster_of_the_magic_stops_with_the_kernel(tmp_path):
    kernel = Kernel(cwd=str(tmp_path))
    try:
        kernel.ok("%load_ext celerynb")
        assert_one_usage_line(kernel.run("%celery_submit print(1)"), r"%celery_connect --local")
        cell = kernel.ok("%celery_connect --local -n 1")
        assert re.fullmatch(
            r"celerynb: connected to a local cluster \(1 process\) at "
            r"redis://:\*\*@127.0.0.1:\d+/0; 1 worker online \(1 processes\)\n",
            cell.stdout,
        ), cell.stdout
        # Jupyter's "interrupt" signals the kernel's process group: the cluster must survive.
        # stop_on_error=False: ipykernel aborts requests queued just after an error, and the next
        # cell must not be refused for that reason (seen once in CI as an "aborted" reply).
        msg_id = kernel.client.execute(
            "import time; print('sleeping', flush=True); time.sleep(30)", stop_on_error=False
        )
        kernel.wait_for_message(  # the cell's own code runs: the interrupt lands in it
            lambda m: (
                m["msg_type"] == "stream"
                and "sleeping" in m["content"]["text"]
                and m["parent_header"].get("msg_id") == msg_id
            )
        )
        kernel.manager.interrupt_kernel()
        kernel.wait_for_message(
            lambda m: m["msg_type"] == "error" and m["parent_header"].get("msg_id") == msg_id
        )
        kernel.client.get_shell_msg(timeout=30)
        kernel.ok("%celery_submit -o r sum([1, 2, 3])")
        cell = kernel.ok(
            "import time\nwhile 'r' not in globals(): time.sleep(0.05)\n"
            "m = get_ipython().magics_manager.registry['CeleryMagics']\n"
            "print(r, m.cluster._dir, *m.cluster.pids)",
            timeout=60,
        )
        answer, directory, *pids = cell.stdout.split()
        assert answer == "6" and len(pids) == 2
        processes = [psutil.Process(int(pid)) for pid in pids]
        # Another -n scales the running cluster: its job goes on (closing it would end it).
        kernel.ok("import celerynb\njob = celerynb.submit(time.sleep, 2)")
        cell = kernel.ok("%celery_connect --local -n 2", timeout=60)
        assert "connected to a local cluster (2 processes)" in cell.stdout, cell.stdout
        cell = kernel.ok("print(job.result(timeout=60), m.cluster.processes, *m.cluster.pids)")
        result, size, *pids = cell.stdout.split()
        assert (result, size) == ("None", "2"), "scaled while its job ran, not closed"
        for pid in pids:
            with contextlib.suppress(psutil.NoSuchProcess):
                processes.append(psutil.Process(int(pid)))
    finally:
        kernel.close()
    assert wait_for(lambda: not any(p.is_running() for p in processes), timeout=20)
    assert not Path(directory).exists(), "the cluster left its files behind"


def test_a_cell_run_again_keeps_the_newer_runs_value_and_ships_private_names(kernel):
    """Fixed and run again while the first run still works: the older run, finishing
    last, does not replace the newer value. A notebook name like ``__secret`` (not a
    dunder) is shipped like any other."""
    kernel.ok("__secret = 41")
    kernel.ok("%%celery_submit -o rerun\nimport time\ntime.sleep(5)\nrerun = 'old run'")
    kernel.ok("older = celerynb.jobs()[-1]")
    kernel.ok("%%celery_submit -o rerun\nrerun = ('new run', __secret + 1)")
    kernel.ok("newer = celerynb.jobs()[-1]")
    cell = kernel.ok("newer.result(timeout=30); print(older.done(), rerun)")
    assert cell.stdout == "False ('new run', 42)\n"  # the older run still works
    cell = kernel.ok("older.result(timeout=30); print(older.state, rerun)")
    assert cell.stdout == "SUCCESS ('new run', 42)\n"
