"""Package shape: public API, headless worker side."""

import re
import subprocess
import sys
from pathlib import Path

import pytest

import celerynb

ROOT = Path(__file__).resolve().parent.parent


def load_pyproject():
    try:
        import tomllib
    except ModuleNotFoundError:  # Python 3.10: pytest brings tomli there
        tomllib = pytest.importorskip("tomli")
    return tomllib.loads((ROOT / "pyproject.toml").read_text())


def test_all_lists_exactly_the_public_names():
    public = {name for name in vars(celerynb) if not name.startswith("_")}
    modules = {name for name in public if type(getattr(celerynb, name)).__name__ == "module"}
    assert set(celerynb.__all__) == public - modules


def test_every_error_celerynb_raises_is_exported_and_prints_as_celerynb():
    import traceback

    from celerynb import _errors

    errors = [
        value
        for value in vars(_errors).values()
        if isinstance(value, type) and issubclass(value, celerynb.CelerynbError)
    ]
    assert len(errors) >= 17
    for error in errors:
        assert getattr(celerynb, error.__name__) is error, error
        assert error.__name__ in celerynb.__all__
        shown = "".join(traceback.format_exception_only(error("boom")))
        assert shown.startswith(f"celerynb.{error.__name__}: boom"), shown


def test_a_lost_worker_is_also_a_lost_pool_process_for_except_clauses():
    from billiard.exceptions import WorkerLostError as PoolProcessLost

    assert issubclass(celerynb.WorkerLostError, PoolProcessLost)


def test_worker_side_imports_no_notebook_code():
    code = (
        "import sys, celerynb.worker\n"
        "from celerynb import tqdm, report\n"
        "list(tqdm(range(3)))\n"
        "print(sorted(m for m in ('IPython', 'ipywidgets', 'tqdm.notebook', 'ipykernel')"
        " if m in sys.modules))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True
    )
    assert out.stdout.strip() == "[]", out.stdout


def test_celery_events_is_imported_with_celerynb_not_first_by_its_threads():
    """A first import of celery.events from the heartbeat listener thread while the
    thread sending the first job imports it too failed once with _DeadlockError."""
    code = "import sys, celerynb\nprint('celery.events.receiver' in sys.modules)\n"
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True
    )
    assert out.stdout.strip() == "True", out.stdout


def test_the_notebook_series_is_committed_without_outputs():
    import nbformat

    notebooks = sorted((Path(__file__).resolve().parent.parent / "notebooks").glob("*.ipynb"))
    assert [p.name[:3] for p in notebooks] == [f"{n:02}-" for n in range(1, 9)]
    for path in notebooks:
        cells = nbformat.read(path, as_version=4).cells
        ran = [
            c.source[:40]
            for c in cells
            if c.cell_type == "code" and (c.outputs or c.execution_count)
        ]
        assert not ran, f"{path.name} has outputs in: {ran}"


# pip names whose conda-forge package is named otherwise
CONDA_NAMES = {"redis": "redis-py"}


def test_the_conda_environment_has_what_the_notebooks_and_lab_need():
    """`conda env create -f environment.yml` must run every notebook: pyproject's
    dependencies and its lab and db extras (the notebooks' database backend), all there."""
    root = ROOT
    project = load_pyproject()["project"]
    extras = project["optional-dependencies"]
    wanted = [*project["dependencies"], *extras["lab"], *extras["db"]]

    def name(requirement):
        return re.match(r"[A-Za-z0-9_.-]+", requirement).group(0).lower().replace("_", "-")

    conda = {
        name(line.split("-", 1)[1].strip())
        for line in (root / "environment.yml").read_text().splitlines()
        if re.match(r"\s+- [A-Za-z]", line)
    }
    missing = [r for r in wanted if CONDA_NAMES.get(name(r), name(r)) not in conda]
    assert not missing, f"environment.yml lacks {missing}"


def test_every_place_that_names_the_supported_pythons_names_the_same_ones():
    """pyproject's classifiers are the list; requires-python, environment.yml, the README
    and dev.py's own check agree with it (requires-python has no upper bound on purpose:
    pip would refuse a newer Python rather than let it try)."""
    project = load_pyproject()["project"]
    promised = [
        c.rsplit(" :: ", 1)[1]
        for c in project["classifiers"]
        if re.fullmatch(r"Programming Language :: Python :: 3\.\d+", c)
    ]
    minors = [int(version.split(".")[1]) for version in promised]
    assert minors == list(range(minors[0], minors[-1] + 1)), f"not consecutive: {promised}"
    lowest, highest = promised[0], promised[-1]
    after = f"3.{minors[-1] + 1}"

    assert project["requires-python"] == f">={lowest}"
    conda = re.search(r"^\s+- python(\S*)", (ROOT / "environment.yml").read_text(), re.M)
    assert conda and conda.group(1) == f">={lowest},<{after}", conda
    readme = (ROOT / "README.md").read_text()
    needed = re.search(r"Only Python (.+?) is needed", readme, re.S)
    assert needed and re.findall(r"3\.\d+", needed.group(1)) == promised, needed
    assert not re.findall(r"Python 3\.\d+\+", readme), "name the versions, not 3.X+"
    for low, high in re.findall(r"Python (3\.\d+) to (3\.\d+)", readme):
        assert (low, high) == (lowest, highest)
    assert f"sys.version_info < (3, {minors[0]})" in (ROOT / "dev.py").read_text()


def test_dev_py_reads_the_promised_pythons_from_the_classifiers():
    from test_dev_tools import load_dev

    classifiers = load_pyproject()["project"]["classifiers"]
    promised = [c.rsplit(" :: ", 1)[1] for c in classifiers if re.search(r":: 3\.\d+$", c)]
    dev = load_dev()
    assert dev.promised_pythons((ROOT / "pyproject.toml").read_text()) == promised
