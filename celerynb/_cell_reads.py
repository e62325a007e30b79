"""Which names a ``%%celery_submit`` cell reads from the notebook (pure, kernel side).

The cell runs on a worker in a fresh namespace, so every notebook variable it may
read before binding it must travel with it. This module applies Python's scope
rules to the cell's syntax tree, the same way on every supported Python:

- The cell's own code, and class bodies, are followed in execution order. A name
  counts as bound only once every way through the cell so far binds it: both
  branches of an ``if``, the body and each handler of a ``try``, every ``case``
  (or the lack of a match); ``del x`` reads ``x``. A loop body or a comprehension
  is taken to run at least once, up to its ``break``: its variables are the
  cell's after it. (For the rare empty loop the notebook's namesake would be
  read; shipping it for every loop would far more often ship an unrelated object,
  or refuse a cell whose namesake cannot be pickled.)
- Functions, lambdas and generator expressions run later: the global names they
  read count where they are defined.
- Functions, lambdas and comprehensions have scopes of their own, and a class
  body does not enclose the functions and comprehensions inside it; ``global``
  and ``nonlocal`` move a name to the scope they name; a walrus inside a
  comprehension binds in the enclosing function or cell.

Why not ``symtable``: since Python 3.12 (PEP 709) it merges an inlined
comprehension's symbols into the enclosing scope, so in ``y = [v for v in values]``
the ``v`` is listed as a variable of the cell, like one the cell assigns and
reads, and the comprehension's own table is gone. The syntax tree means the same
on every version.
"""

from __future__ import annotations

import ast
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

_COMPREHENSIONS = (ast.ListComp, ast.SetComp, ast.DictComp, ast.GeneratorExp)
_DEFINITIONS = (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)
_LOOPS = (ast.For, ast.AsyncFor, ast.While)
# try/except, and try/except* (Python 3.11+), which has the same fields.
_TRY = (ast.Try, getattr(ast, "TryStar", ast.Try))


def names_read_from_outside(tree: ast.Module) -> list[str]:
    """Names the cell may read before binding them itself, in the order it reads them.

    Builtins (``len``) are listed too: the caller keeps the names its namespace has.
    """
    reads = _CellReads()
    reads.block(tree.body, reads.cell)
    return reads.needed


@dataclass(eq=False)
class _Scope:
    """One of Python's scopes: the cell, a class body, a function or a comprehension."""

    kind: str  # "cell", "class", "function" or "comprehension"
    parent: _Scope | None = None
    local: frozenset[str] = frozenset()  # bound in this scope (not the cell's)
    declared_global: frozenset[str] = frozenset()
    declared_nonlocal: frozenset[str] = frozenset()
    # The cell and class bodies run in order: the names every path so far has bound.
    bound: set[str] = field(default_factory=set)


class _CellReads:
    """Walks a cell in execution order, collecting the names read from outside it."""

    def __init__(self) -> None:
        self.cell = _Scope("cell")
        self.needed: list[str] = []
        # Per loop being walked: what is bound at each of its `break`s and `continue`s.
        self.loops: list[tuple[list[set[str]], list[set[str]]]] = []

    # -- names -------------------------------------------------------------------
    def read(self, name: str, scope: _Scope) -> None:
        needed = self.reads_global(name, scope) and name not in self.cell.bound
        if needed and name not in self.needed:
            self.needed.append(name)

    def reads_global(self, name: str, scope: _Scope) -> bool:
        """Whether reading ``name`` in ``scope`` looks it up in the cell's globals."""
        here: _Scope | None = scope
        while here is not None and here.kind != "cell":
            if name in here.declared_global:
                return True
            if here.kind != "class":
                if name in here.local or name in here.declared_nonlocal:
                    return False
            elif here is scope:  # enclosing class bodies are skipped
                if name in here.bound or name in here.declared_nonlocal:
                    return False
                if name in here.local:
                    return True  # not bound yet: the class namespace, then globals
            here = here.parent
        return True

    def bind(self, name: str, scope: _Scope) -> None:
        # Functions and comprehensions know their names up front; a class's
        # `global` names are bound in the cell only when it runs: left unbound.
        if scope.kind in ("cell", "class") and name not in scope.declared_global:
            scope.bound.add(name)

    # -- statements: each returns whether the next statement can run -------------
    def block(self, body: Sequence[ast.stmt], scope: _Scope) -> bool:
        # all() stops at the first statement that does not end: the rest never runs.
        return all(self.statement(statement, scope) for statement in body)

    def statement(self, node: ast.stmt, scope: _Scope) -> bool:
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
            self.define_function(node, scope)
        elif isinstance(node, ast.ClassDef):
            self.define_class(node, scope)
        elif isinstance(node, _LOOPS):
            return self.loop(node, scope)
        elif isinstance(node, ast.If):
            self.expression(node.test, scope)
            return self.branches([node.body, node.orelse], scope)
        elif isinstance(node, ast.With | ast.AsyncWith):
            for item in node.items:
                self.expressions([item.context_expr, item.optional_vars], scope)
            return self.block(node.body, scope)
        elif isinstance(node, _TRY):
            return self.try_statement(node, scope)
        elif isinstance(node, ast.Match):
            return self.match(node, scope)
        elif isinstance(node, ast.Assign):
            self.expressions([node.value, *node.targets], scope)
        elif isinstance(node, ast.AugAssign):
            self.augmented_assignment(node, scope)
        elif isinstance(node, ast.AnnAssign):
            self.annotated_assignment(node, scope)
        elif isinstance(node, ast.Import | ast.ImportFrom):
            for alias in node.names:
                if alias.name != "*":
                    self.bind((alias.asname or alias.name).split(".")[0], scope)
        elif isinstance(node, ast.Break | ast.Continue):
            breaks, continues = self.loops[-1]
            (breaks if isinstance(node, ast.Break) else continues).append(set(scope.bound))
            return False
        elif isinstance(node, ast.Raise | ast.Return):
            self.expressions(ast.iter_child_nodes(node), scope)
            return False
        elif not isinstance(node, ast.Global | ast.Nonlocal):
            self.expressions(ast.iter_child_nodes(node), scope)  # Expr, Assert, Delete...
        return True

    def augmented_assignment(self, node: ast.AugAssign, scope: _Scope) -> None:
        if isinstance(node.target, ast.Name):  # x += 1 reads x, then binds it
            self.read(node.target.id, scope)
            self.expression(node.value, scope)
            self.bind(node.target.id, scope)
        else:  # a[i] += 1 reads a and i
            self.expressions([node.target, node.value], scope)

    def annotated_assignment(self, node: ast.AnnAssign, scope: _Scope) -> None:
        self.expressions([node.value], scope)
        if scope.kind != "function":  # annotations of the cell and classes are evaluated
            self.expression(node.annotation, scope)
        if not isinstance(node.target, ast.Name):
            self.expression(node.target, scope)
        elif node.value is not None:  # `x: int` alone binds nothing
            self.bind(node.target.id, scope)

    def branches(self, bodies: Iterable[Sequence[ast.stmt]], scope: _Scope) -> bool:
        """Run one of ``bodies``: bound after it is what every body that ends binds."""
        start = set(scope.bound)
        ends = []
        for body in bodies:
            scope.bound = set(start)
            if self.block(body, scope):
                ends.append(scope.bound)
        scope.bound = set.intersection(*ends) if ends else start
        return bool(ends)

    def loop(self, node: ast.For | ast.AsyncFor | ast.While, scope: _Scope) -> bool:
        """A loop taken to run its body at least once; after it, what every way out binds."""
        if isinstance(node, ast.While):
            self.expression(node.test, scope)  # evaluated at least once
        else:
            self.expression(node.iter, scope)
        start = set(scope.bound)
        self.loops.append(([], []))
        if not isinstance(node, ast.While):
            self.expression(node.target, scope)
        body_ends = self.block(node.body, scope)
        breaks, continues = self.loops.pop()
        next_pass = ([scope.bound] if body_ends else []) + continues
        endless = isinstance(node, ast.While) and _always_true(node.test)
        ways_out = list(breaks)
        if next_pass and not endless:  # the loop ends by itself, then runs its else
            scope.bound = set.intersection(*next_pass)
            if self.block(node.orelse, scope):
                ways_out.append(scope.bound)
        if not ways_out and not endless:  # a body that always raises: maybe never entered
            ways_out.append(start)
        scope.bound = set.intersection(*ways_out) if ways_out else start
        return bool(ways_out)

    def try_statement(self, node: ast.Try, scope: _Scope) -> bool:
        start = set(scope.bound)
        ends = []
        if self.block(node.body, scope) and self.block(node.orelse, scope):
            ends.append(scope.bound)
        for handler in node.handlers:  # the exception may come before anything is bound
            scope.bound = set(start)
            self.expressions([handler.type], scope)
            if handler.name:
                self.bind(handler.name, scope)
            if self.block(handler.body, scope):
                ends.append(scope.bound)
        scope.bound = set(start)  # `finally` runs on every path, an escaping error's too
        finally_ends = self.block(node.finalbody, scope)
        added = scope.bound - start
        scope.bound = (set.intersection(*ends) if ends else start) | added
        return bool(ends) and finally_ends

    def match(self, node: ast.Match, scope: _Scope) -> bool:
        self.expression(node.subject, scope)
        start = set(scope.bound)
        ends = [] if any(_irrefutable(case) for case in node.cases) else [start]
        for case in node.cases:
            scope.bound = set(start)
            self.pattern(case.pattern, scope)
            self.expressions([case.guard], scope)
            if self.block(case.body, scope):
                ends.append(scope.bound)
        scope.bound = set.intersection(*ends) if ends else start
        return bool(ends)

    def pattern(self, node: ast.pattern, scope: _Scope) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.pattern):
                self.pattern(child, scope)
            else:
                self.expression(child, scope)  # a value (Color.RED), a class, a key
        for name in (getattr(node, "name", None), getattr(node, "rest", None)):
            if name:
                self.bind(name, scope)

    # -- definitions ---------------------------------------------------------------
    def define_function(self, node: ast.FunctionDef | ast.AsyncFunctionDef, scope: _Scope) -> None:
        self.expressions(node.decorator_list, scope)
        self.arguments(node.args, scope)
        self.expressions([node.returns], scope)
        self.function_body(node, scope)
        self.bind(node.name, scope)

    def define_class(self, node: ast.ClassDef, scope: _Scope) -> None:
        self.expressions(node.decorator_list, scope)
        self.expressions([*node.bases, *(keyword.value for keyword in node.keywords)], scope)
        local, declared_global, declared_nonlocal = _bindings(node.body)
        body = _Scope("class", scope, local, declared_global, declared_nonlocal)
        self.block(node.body, body)  # runs now, in order
        self.bind(node.name, scope)

    def arguments(self, args: ast.arguments, scope: _Scope) -> None:
        """Defaults, then annotations: evaluated where the function is defined."""
        self.expressions([*args.defaults, *args.kw_defaults], scope)
        self.expressions([arg.annotation for arg in _parameters(args)], scope)

    def function_body(
        self, node: ast.FunctionDef | ast.AsyncFunctionDef | ast.Lambda, scope: _Scope
    ) -> None:
        body = node.body if isinstance(node.body, list) else [ast.Expr(node.body)]
        local, declared_global, declared_nonlocal = _bindings(body)
        local |= {arg.arg for arg in _parameters(node.args)}
        inner = _Scope("function", scope, local, declared_global, declared_nonlocal)
        self.block(body, inner)

    def comprehension(self, node: ast.expr, scope: _Scope) -> None:
        assert isinstance(node, _COMPREHENSIONS)
        first, *rest = node.generators
        self.expression(first.iter, scope)  # evaluated where the comprehension is
        inner = _Scope("comprehension", scope, _comprehension_targets(node))
        self.expressions([first.target, *first.ifs], inner)
        for generator in rest:
            self.expressions([generator.iter, generator.target, *generator.ifs], inner)
        if isinstance(node, ast.DictComp):
            self.expressions([node.key, node.value], inner)
        else:
            self.expression(node.elt, inner)

    # -- expressions, in evaluation order ---------------------------------------------
    def expressions(self, nodes: Iterable[ast.AST | None], scope: _Scope) -> None:
        for node in nodes:
            if node is not None:
                self.expression(node, scope)

    def expression(self, node: ast.AST, scope: _Scope) -> None:
        if isinstance(node, ast.Name):
            if not isinstance(node.ctx, ast.Store):  # a load, or `del x`, which reads x
                self.read(node.id, scope)
            if not isinstance(node.ctx, ast.Load):
                self.bind(node.id, scope)
        elif isinstance(node, ast.NamedExpr):
            self.expression(node.value, scope)
            home = scope
            while home.kind == "comprehension" and home.parent is not None:
                home = home.parent
            self.bind(node.target.id, home)
        elif isinstance(node, ast.Lambda):
            self.arguments(node.args, scope)
            self.function_body(node, scope)
        elif isinstance(node, _COMPREHENSIONS):
            self.comprehension(node, scope)
        elif isinstance(node, ast.Dict):  # key, value, key, value...
            for key, value in zip(node.keys, node.values):
                self.expressions([key, value], scope)
        else:
            self.expressions(ast.iter_child_nodes(node), scope)


def _parameters(args: ast.arguments) -> list[ast.arg]:
    extra = [arg for arg in (args.vararg, args.kwarg) if arg is not None]
    return [*args.posonlyargs, *args.args, *args.kwonlyargs, *extra]


def _bindings(body: Sequence[ast.AST]) -> tuple[frozenset[str], frozenset[str], frozenset[str]]:
    """The names a function or class body binds in its own scope (wherever they are
    in it), and the names it declares ``global`` and ``nonlocal``."""
    bound: set[str] = set()
    declared_global: set[str] = set()
    declared_nonlocal: set[str] = set()
    pending = list(body)
    while pending:
        node = pending.pop()
        if isinstance(node, ast.Global):
            declared_global.update(node.names)
        elif isinstance(node, ast.Nonlocal):
            declared_nonlocal.update(node.names)
        elif isinstance(node, ast.Name) and not isinstance(node.ctx, ast.Load):
            bound.add(node.id)
        elif isinstance(node, ast.alias) and node.name != "*":
            bound.add((node.asname or node.name).split(".")[0])
        elif isinstance(node, ast.ExceptHandler | ast.MatchAs | ast.MatchStar) and node.name:
            bound.add(node.name)
        elif isinstance(node, ast.MatchMapping) and node.rest:
            bound.add(node.rest)
        if isinstance(node, _DEFINITIONS):  # its name here; its body is its own scope
            bound.add(node.name)
            pending.extend(_evaluated_where_defined(node))
        elif isinstance(node, ast.Lambda):
            pending.extend(_evaluated_where_defined(node))
        elif isinstance(node, _COMPREHENSIONS):  # targets are its own; a walrus binds here
            pending.extend(_comprehension_parts(node))
        else:
            pending.extend(ast.iter_child_nodes(node))
    names = frozenset(bound - declared_global - declared_nonlocal)
    return names, frozenset(declared_global), frozenset(declared_nonlocal)


def _evaluated_where_defined(node: ast.AST) -> list[ast.AST]:
    """Decorators, defaults, annotations and bases: parts run in the enclosing scope."""
    parts: list[ast.AST | None] = []
    if isinstance(node, ast.ClassDef):
        parts += [*node.decorator_list, *node.bases, *node.keywords]
    elif isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.Lambda):
        args = node.args
        parts += [*args.defaults, *args.kw_defaults]
        if not isinstance(node, ast.Lambda):
            parts += [*node.decorator_list, node.returns]
            parts += [arg.annotation for arg in _parameters(args)]
    return [part for part in parts if part is not None]


def _comprehension_parts(node: ast.AST) -> list[ast.AST]:
    assert isinstance(node, _COMPREHENSIONS)
    parts: list[ast.AST] = []
    for generator in node.generators:
        parts += [generator.iter, *generator.ifs]
    if isinstance(node, ast.DictComp):
        return [*parts, node.key, node.value]
    return [*parts, node.elt]


def _comprehension_targets(node: ast.AST) -> frozenset[str]:
    assert isinstance(node, _COMPREHENSIONS)
    return frozenset(
        name.id
        for generator in node.generators
        for name in ast.walk(generator.target)
        if isinstance(name, ast.Name) and isinstance(name.ctx, ast.Store)
    )


def _always_true(test: ast.expr) -> bool:
    """``while True:`` and the like: a loop left only by ``break``."""
    return isinstance(test, ast.Constant) and bool(test.value)


def _irrefutable(case: ast.match_case) -> bool:
    """A case that matches anything (``case _:``, ``case name:``), without a guard."""

    def matches_anything(pattern: ast.pattern) -> bool:
        if isinstance(pattern, ast.MatchOr):
            return any(matches_anything(p) for p in pattern.patterns)
        return isinstance(pattern, ast.MatchAs) and (
            pattern.pattern is None or matches_anything(pattern.pattern)
        )

    return case.guard is None and matches_anything(case.pattern)
