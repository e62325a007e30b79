"""A notebook cell run on a worker (``%%celery_submit``).

Kernel side (pure): which names the cell reads from the notebook. Worker side:
``run_cell`` executes the cell in a fresh namespace, with its stdout/stderr
captured, and returns the requested variables. Standard library only: workers
import this module.
"""

from __future__ import annotations

import ast
import builtins
import contextlib
import io
import linecache
import pickle
import re
import symtable
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

MAX_CAPTURED_CHARS = 1_000_000  # per stream; longer output keeps its end


@dataclass
class CellResult:
    """What a cell run on a worker gives back: the requested variables and its output."""

    values: dict[str, Any] = field(default_factory=dict)
    stdout: str = ""
    stderr: str = ""

    def __repr__(self) -> str:
        return f"CellResult({', '.join(self.values) or 'no variables'})"


# -- kernel side: what the cell needs ------------------------------------------
def parse_cell(source: str, filename: str) -> ast.Module:
    """The cell's syntax tree; SyntaxError (with the line) if it is not plain Python."""
    return ast.parse(source, filename, "exec")


def names_read_from_outside(source: str, filename: str) -> list[str]:
    """Names the cell reads before (or without) binding them itself, in reading order.

    Module-level code is followed in execution order (a loop variable is bound
    before the loop body runs); functions and classes defined in the cell count
    the global names they read. A name bound earlier, even conditionally, counts
    as bound.
    """
    tree = parse_cell(source, filename)
    reads = _ReadsBeforeBinding(_global_reads(symtable.symtable(source, filename, "exec")))
    reads.run(tree.body)
    return reads.needed


# try/except, and try/except* (Python 3.11+).
_TRY_STATEMENTS = (ast.Try, *([ast.TryStar] if hasattr(ast, "TryStar") else []))


class _ReadsBeforeBinding:
    def __init__(self, global_reads: set[str]) -> None:
        self.global_reads = global_reads
        self.bound: set[str] = set()
        self.needed: list[str] = []

    def run(self, statements: list[ast.stmt]) -> None:
        for statement in statements:
            if isinstance(statement, ast.For | ast.AsyncFor):
                self.read(statement.iter)
                self.bind(statement.target)
                self.run(statement.body + statement.orelse)
            elif isinstance(statement, ast.While | ast.If):
                self.read(statement.test)
                self.run(statement.body + statement.orelse)
            elif isinstance(statement, ast.With | ast.AsyncWith):
                for item in statement.items:
                    self.read(item.context_expr)
                    if item.optional_vars is not None:
                        self.bind(item.optional_vars)
                self.run(statement.body)
            elif isinstance(statement, _TRY_STATEMENTS):
                self.run(statement.body)
                for handler in statement.handlers:
                    if handler.type is not None:
                        self.read(handler.type)
                    if handler.name:
                        self.bound.add(handler.name)
                    self.run(handler.body)
                self.run(statement.orelse + statement.finalbody)
            else:
                if isinstance(statement, ast.AugAssign) and isinstance(statement.target, ast.Name):
                    self.need(statement.target.id)  # x += 1 reads x
                self.read(statement)
                self.bind(statement)

    def read(self, node: ast.AST) -> None:
        for name in _loaded_names(node):
            if name in self.global_reads:
                self.need(name)

    def need(self, name: str) -> None:
        if name not in self.bound and name not in self.needed:
            self.needed.append(name)

    def bind(self, node: ast.AST) -> None:
        self.bound |= _bound_names(node)


def cell_inputs(
    source: str, filename: str, namespace: Mapping[str, Any], hidden: Mapping[str, Any]
) -> dict[str, Any]:
    """The notebook variables the cell reads, to ship with it.

    ``hidden`` holds the shell's own names (``In``, ``get_ipython``...): skipped
    unless the user rebound them.
    """
    inputs = {}
    for name in names_read_from_outside(source, filename):
        if name not in namespace or name.startswith("__"):
            continue
        if name in hidden and hidden[name] is namespace[name]:
            continue
        inputs[name] = namespace[name]
    return inputs


def parse_output_names(text: str | Iterable[str] | None) -> tuple[str, ...]:
    """``"a, b"`` -> ``("a", "b")``; ValueError naming any entry that is not a name."""
    if text is None:
        return ()
    parts = text.split(",") if isinstance(text, str) else list(text)
    names = tuple(part.strip() for part in parts if part.strip())
    for name in names:
        if not name.isidentifier():
            raise ValueError(f"{name!r} is not a variable name")
    return names


def _global_reads(table: symtable.SymbolTable) -> set[str]:
    reads = {s.get_name() for s in table.get_symbols() if s.is_referenced()}
    pending = list(table.get_children())
    while pending:
        child = pending.pop()
        reads |= {s.get_name() for s in child.get_symbols() if s.is_referenced() and s.is_global()}
        pending.extend(child.get_children())
    return reads


def _loaded_names(tree: ast.AST) -> list[str]:
    names = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Name) and isinstance(node.ctx, ast.Load):
            names.append(node.id)
    return names


def _bound_names(tree: ast.AST) -> set[str]:
    """Names a module-level statement binds (not those bound inside its functions)."""
    bound: set[str] = set()
    pending: list[ast.AST] = [tree]
    while pending:
        node = pending.pop()
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
            bound.add(node.name)
            pending.extend(node.decorator_list)
            continue
        if isinstance(node, ast.Lambda | ast.ListComp | ast.SetComp | ast.DictComp):
            continue
        if isinstance(node, ast.GeneratorExp):
            continue
        if isinstance(node, ast.Name) and isinstance(node.ctx, ast.Store | ast.Del):
            bound.add(node.id)
        elif isinstance(node, ast.Import | ast.ImportFrom):
            for alias in node.names:
                bound.add(alias.asname or alias.name.split(".")[0])
        elif isinstance(node, ast.ExceptHandler | ast.MatchAs | ast.MatchStar) and node.name:
            bound.add(node.name)
        pending.extend(ast.iter_child_nodes(node))
    return bound


# -- worker side: run it ---------------------------------------------------------
def run_cell(source: str, filename: str, inputs: bytes, outputs: tuple[str, ...]) -> CellResult:
    """Execute a cell's source with the pickled ``inputs`` as its globals; return ``outputs``.

    ``inputs`` arrive inside the verified envelope of the call (see ``_runner``).

    stdout/stderr are captured; on failure they ride on the exception as
    ``celerynb_output`` (a CellResult without values). tqdm bars the cell makes report
    the task's progress; bars that other code draws as text keep their last state only.
    """
    from ._reporting import reporting_import, reporting_view

    linecache.cache[filename] = (len(source), None, source.splitlines(True), filename)
    # tqdm in the cell (imported there, or a notebook variable) reports the job's progress:
    # its bars are drawn by the notebook, never written as text to the captured stderr.
    cell_builtins = dict(vars(builtins), __import__=reporting_import)
    namespace: dict[str, Any] = {"__name__": "__main__", "__builtins__": cell_builtins}
    namespace.update((name, reporting_view(value)) for name, value in pickle.loads(inputs).items())
    stdout, stderr = io.StringIO(), io.StringIO()
    try:
        with contextlib.redirect_stdout(stdout), contextlib.redirect_stderr(stderr):
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
    if not job.done() or job.cancelled():
        return None
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
