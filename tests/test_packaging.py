"""Package shape: public API, headless worker side."""

import subprocess
import sys

import celerynb


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


def test_the_notebook_series_is_committed_without_outputs():
    from pathlib import Path

    import nbformat

    notebooks = sorted((Path(__file__).resolve().parent.parent / "notebooks").glob("*.ipynb"))
    assert [p.name[:3] for p in notebooks] == ["01-", "02-", "03-", "04-", "05-"]
    for path in notebooks:
        cells = nbformat.read(path, as_version=4).cells
        ran = [
            c.source[:40]
            for c in cells
            if c.cell_type == "code" and (c.outputs or c.execution_count)
        ]
        assert not ran, f"{path.name} has outputs in: {ran}"
