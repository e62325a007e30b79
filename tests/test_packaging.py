"""Package shape: public API, headless worker side."""

import subprocess
import sys

import celerynb


def test_all_lists_exactly_the_public_names():
    public = {name for name in vars(celerynb) if not name.startswith("_")}
    modules = {name for name in public if type(getattr(celerynb, name)).__name__ == "module"}
    assert set(celerynb.__all__) == public - modules


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
