"""A notebook cell run on a worker (``%%celery_submit``).

Kernel side (pure): which names the cell reads from the notebook. Worker side:
``run_cell`` executes the cell in a fresh namespace, with its stdout/stderr
captured, and returns the requested variables. Standard library only (cloudpickle
once a result fails to pickle): workers import this module.
"""

from __future__ import annotations

import ast
import builtins
import io
import keyword
import linecache
import pickle
import re
import unicodedata
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from . import _cell_reads

MAX_CAPTURED_CHARS = 1_000_000  # per stream; longer output keeps its end


@dataclass
class CellResult:
    """What a cell run on a worker gives back: the requested variables and its output."""

    values: dict[str, Any] = field(default_factory=dict)
    stdout: str = ""
    stderr: str = ""

    def __repr__(self) -> str:
        return f"CellResult({', '.join(self.values) or 'no variables'})"

    def unpicklable_variable(self) -> str | None:
        """The first of ``values`` that cannot be pickled (asked once pickling failed)."""
        found = first_unpicklable(self.values)
        return found[0] if found is not None else None


def first_unpicklable(values: Mapping[str, Any]) -> tuple[str, Exception] | None:
    """The first of ``values`` that cannot be pickled, and why (asked once pickling all
    of them failed, to name the culprit)."""
    import cloudpickle

    for name, value in values.items():
        try:  # big buffers out of band and dropped: nothing copied
            cloudpickle.dumps(value, protocol=5, buffer_callback=lambda _buffer: None)
        except (MemoryError, RecursionError):
            continue  # not a sign it cannot be pickled
        except Exception as exc:
            return name, exc
    return None


# -- kernel side: what the cell needs ------------------------------------------
def parse_cell(source: str, filename: str) -> ast.Module:
    """The cell's syntax tree; SyntaxError (with the line) if it is not plain Python.

    The cell is compiled as the worker will compile it, so errors only the compiler
    finds (``nonlocal`` at top level, ``return`` outside a function) are caught here.
    """
    compile(source, filename, "exec")
    return ast.parse(source, filename, "exec")


def names_read_from_outside(source: str, filename: str) -> list[str]:
    """Names the cell may read before (or without) binding them, in reading order.

    See ``_cell_reads`` for the rules: Python's scopes, followed in execution order;
    a name bound on only some paths (one branch of an ``if``, a loop body) is needed.
    """
    return _cell_reads.names_read_from_outside(parse_cell(source, filename))


def cell_inputs(
    source: str, filename: str, namespace: Mapping[str, Any], hidden: Mapping[str, Any]
) -> dict[str, Any]:
    """The notebook variables the cell reads, to ship with it.

    ``hidden`` holds the shell's own names (``In``, ``get_ipython``...): skipped
    unless the user rebound them.
    """
    inputs = {}
    for name in names_read_from_outside(source, filename):
        if name not in namespace or _is_dunder(name):  # __name__, __builtins__: the worker's
            continue
        if name in hidden and hidden[name] is namespace[name]:
            continue
        inputs[name] = namespace[name]
    return inputs


def parse_output_names(text: str | Iterable[str] | None) -> tuple[str, ...]:
    """``"a, b"`` -> ``("a", "b")``, each as Python reads an identifier (NFKC).

    Raises:
        ValueError: naming an entry that is not a variable the notebook may be given:
            not an identifier, a keyword, a ``__dunder__`` (``__builtins__`` set from a
            worker would break the kernel), or one of IPython's own names
            (``get_ipython``, ``In``, ``Out``, ``_``, ``_i3``...).
    """
    if text is None:
        return ()
    parts = text.split(",") if isinstance(text, str) else list(text)
    names = tuple(unicodedata.normalize("NFKC", p.strip()) for p in parts if p.strip())
    for name in names:
        if not name.isidentifier():
            raise ValueError(f"{name!r} is not a variable name")
        if keyword.iskeyword(name):
            raise ValueError(f"{name!r} is a Python keyword, not a variable name")
        if _is_dunder(name):
            raise ValueError(f"{name!r} is Python's own name: give a variable of yours")
        if name in _SHELL_NAMES or _HISTORY_NAME.fullmatch(name):
            raise ValueError(f"{name!r} is the IPython shell's own name: give a variable of yours")
    return names


# What IPython itself keeps in the namespace (not what a startup file or %pylab put there).
_SHELL_NAMES = frozenset({"get_ipython", "In", "Out", "_ih", "_oh", "_dh", "exit", "quit"})
_HISTORY_NAME = re.compile(r"_{1,3}|_i{1,3}|_i?\d+")  # _, __, _i, _ii, _i7, _7


def _is_dunder(name: str) -> bool:
    return len(name) > 4 and name.startswith("__") and name.endswith("__")


# -- worker side: run it ---------------------------------------------------------
def run_cell(source: str, filename: str, inputs: bytes, outputs: tuple[str, ...]) -> CellResult:
    """Execute a cell's source with the pickled ``inputs`` as its globals; return ``outputs``.

    ``inputs`` arrive inside the verified envelope of the call (see ``_runner``).

    stdout/stderr are captured; on failure they ride on the exception as
    ``celerynb_output`` (a CellResult without values). tqdm bars the cell makes report
    the task's progress; bars that other code draws as text keep their last state only.
    """
    from ._capture import recording
    from ._reporting import reporting_import, reporting_view

    linecache.cache[filename] = (len(source), None, source.splitlines(True), filename)
    # tqdm in the cell (imported there, or a notebook variable) reports the job's progress:
    # its bars are drawn by the notebook, never written as text to the captured stderr.
    cell_builtins = dict(vars(builtins), __import__=reporting_import)
    namespace: dict[str, Any] = {"__name__": "__main__", "__builtins__": cell_builtins}
    namespace.update((name, reporting_view(value)) for name, value in pickle.loads(inputs).items())
    # Kept for the CellResult; the worker's capture also sends them to the notebook live.
    with recording() as kept:
        stdout, stderr = kept["stdout"], kept["stderr"]
        try:
            exec(compile(source, filename, "exec"), namespace)
            missing = [name for name in outputs if name not in namespace]
            if missing:
                raise NameError(
                    f"the cell did not define {', '.join(map(repr, missing))} (asked for with -o)"
                )
        except BaseException as exc:
            exc.celerynb_output = CellResult({}, _tail(stdout), _tail(stderr))  # type: ignore[attr-defined]
            raise
    return CellResult({name: namespace[name] for name in outputs}, _tail(stdout), _tail(stderr))


def captured_output(job: Any) -> CellResult | None:
    """The stdout/stderr a finished cell job captured, if it is one."""
    if not job.done() or job.cancelled() or getattr(job, "_released", None) is not None:
        return None  # a released result is a joblib batch's or a map's, never a cell's
    error = job.exception(timeout=0)
    if error is not None:
        output = getattr(error, "celerynb_output", None)
        return output if isinstance(output, CellResult) else None
    result = job.result(timeout=0)
    return result if isinstance(result, CellResult) else None


def without_redraws(text: str) -> str:
    """Output as a terminal (or Jupyter) shows it: a line redrawn after a carriage
    return (a text progress bar) keeps only its last version."""
    text = _CARRIAGE_RETURNS_ENDING_A_LINE.sub("\n", text)
    return _OVERWRITTEN.sub("", text)


_CARRIAGE_RETURNS_ENDING_A_LINE = re.compile(r"\r+\n")
_OVERWRITTEN = re.compile(r"^[^\n]*\r", re.MULTILINE)


def _tail(buffer: io.StringIO) -> str:
    text = without_redraws(buffer.getvalue())
    if len(text) <= MAX_CAPTURED_CHARS:
        return text
    return (
        f"[... {len(text) - MAX_CAPTURED_CHARS} characters cut ...]\n" + text[-MAX_CAPTURED_CHARS:]
    )
