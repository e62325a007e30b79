"""Kernel side: put source lines back into tracebacks of shipped callables (pure).

cloudpickle (3.1.3 and later) renames the file of every code object it ships by
value to ``<dynamic-code>``, so a worker's traceback of a notebook function shows
neither the file nor the source lines. The kernel still has the original code
objects and their source (IPython keeps cell source in ``linecache``): it maps
each ``(function name, line)`` back to its file and reinserts the lines.
"""

from __future__ import annotations

import functools
import linecache
import re
import types
from typing import Any

DYNAMIC_FILENAME = "<dynamic-code>"
_FRAME = re.compile(r'^(?P<indent>\s*)File "<dynamic-code>", line (?P<line>\d+), in (?P<name>.+)$')
_MAX_CODE_OBJECTS = 5000  # bounds the walk over very large object graphs

SourceMap = dict[tuple[str, int], str]


def source_map(fn: Any) -> SourceMap:
    """``(code name, line number) -> filename`` for the code reachable from ``fn``:
    its body, nested functions, closures, and functions/classes its globals name."""
    found: SourceMap = {}
    seen: set[int] = set()
    pending: list[Any] = [fn]
    while pending and len(seen) < _MAX_CODE_OBJECTS:
        obj = pending.pop()
        if id(obj) in seen:
            continue
        seen.add(id(obj))
        if isinstance(obj, types.CodeType):
            if obj.co_filename == DYNAMIC_FILENAME:  # itself unpickled here: no source
                continue
            for _start, _end, line in obj.co_lines():
                if line is not None:
                    found.setdefault((obj.co_name, line), obj.co_filename)
            pending.extend(c for c in obj.co_consts if isinstance(c, types.CodeType))
        elif isinstance(obj, types.FunctionType):
            pending.append(obj.__code__)
            pending.extend(_closure_values(obj))
            pending.extend(_named_globals(obj.__code__, obj.__globals__))
        elif isinstance(obj, types.MethodType):
            pending.append(obj.__func__)
        elif isinstance(obj, functools.partial):
            pending.append(obj.func)
        elif isinstance(obj, staticmethod | classmethod):
            pending.append(obj.__func__)
        elif isinstance(obj, property):
            pending.extend(f for f in (obj.fget, obj.fset, obj.fdel) if f is not None)
        elif isinstance(obj, type):
            if obj.__module__ != "builtins":
                pending.extend(vars(obj).values())
        elif callable(obj):
            pending.append(type(obj))
    return found


def restore_sources(tb_text: str, sources: SourceMap) -> str:
    """``tb_text`` with ``<dynamic-code>`` frames pointing at their file and source line."""
    if DYNAMIC_FILENAME not in tb_text or not sources:
        return tb_text
    out: list[str] = []
    for line in tb_text.splitlines(keepends=True):
        match = _FRAME.match(line.rstrip("\n"))
        filename = match and sources.get((match["name"], int(match["line"])))
        if not match or not filename:
            out.append(line)
            continue
        indent, number = match["indent"], int(match["line"])
        out.append(f'{indent}File "{filename}", line {number}, in {match["name"]}\n')
        source = linecache.getline(filename, number).strip()
        if source:
            out.append(f"{indent}  {source}\n")
    return "".join(out)


def _closure_values(fn: types.FunctionType) -> list[Any]:
    values = []
    for cell in fn.__closure__ or ():
        try:
            values.append(cell.cell_contents)
        except ValueError:  # an empty cell
            continue
    return values


def _named_globals(code: types.CodeType, namespace: dict[str, Any]) -> list[Any]:
    names: set[str] = set()
    codes = [code]
    while codes:
        current = codes.pop()
        names.update(current.co_names)
        codes.extend(c for c in current.co_consts if isinstance(c, types.CodeType))
    return [namespace[n] for n in names if n in namespace]
