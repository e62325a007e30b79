"""Which notebook variables a ``%%celery_submit`` cell reads: the same on every Python.

One table of cells, each with the names it reads from the notebook before binding
them (in reading order; builtins included, ``cell_inputs`` keeps what the notebook
has). `.ci/run` runs this module on every Python the README promises.
"""

import pickle
import sys
import textwrap
import threading

import pytest

from celerynb._cell import cell_inputs, names_read_from_outside, run_cell

EXCEPT_STAR = pytest.mark.skipif(
    sys.version_info < (3, 11), reason="try/except* is Python 3.11+ syntax"
)

CASES = [
    # -- comprehensions: their targets are their own (PEP 709 inlines them on 3.12+)
    ("list comprehension", "y = [v * 2 for v in values]", ["values"]),
    ("set comprehension", "y = {v % 3 for v in values}", ["values"]),
    ("dict comprehension", "y = {k: v for k, v in pairs.items()}", ["pairs"]),
    ("generator expression", "y = sum(v for v in values)", ["sum", "values"]),
    ("nested comprehensions", "y = [[a * b for b in row] for a, row in rows]", ["rows"]),
    (
        "comprehension of two loops and a condition",
        "y = [x for row in grid for x in row if x > limit]",
        ["grid", "limit"],
    ),
    ("a comprehension reads other names", "y = [v * scale for v in values]", ["values", "scale"]),
    ("the variable is the notebook's after it", "y = [v for v in vs]\nz = v", ["vs", "v"]),
    ("the variable is the notebook's before it", "z = v\ny = [v for v in vs]", ["v", "vs"]),
    ("the iterable is read outside", "values = [1]\ny = [v for v in values]", []),
    (
        "a comprehension in a function",
        "def f():\n    return [v for v in range(3)], v",
        ["range", "v"],
    ),
    # -- lambdas
    ("lambda", "f = lambda a: a + offset", ["offset"]),
    ("lambda default", "f = lambda a=default: a", ["default"]),
    ("lambda in a comprehension keeps the variable", "fs = [lambda: v for v in vs]", ["vs"]),
    # -- nested functions and classes
    (
        "nested functions",
        """
        def outer():
            k = 1
            def inner():
                return k + scale
            return inner
        """,
        ["scale"],
    ),
    (
        "a function reads globals bound before it",
        "total = 0\ndef f(y):\n    return y + total + offset",
        ["offset"],
    ),
    (
        "decorators and defaults are read where the function is defined",
        "@register\ndef f(a=default, *, b=other):\n    return a",
        ["register", "default", "other"],
    ),
    (
        "a method does not see the class body's names",
        """
        class A:
            x = base
            def m(self):
                return x + other
        """,
        ["base", "x", "other"],
    ),
    (
        "a class body runs in order",
        "class A(Base):\n    x = 1\n    y = x + z\n    x = x\n",
        ["Base", "z"],
    ),
    (
        "a class body reads the notebook's name before binding its own",
        "class A:\n    size = size * 2",
        ["size"],
    ),
    (
        "a comprehension in a class does not see the class's names",
        "class A:\n    n = 2\n    ys = [n * v for v in vs]",
        ["vs", "n"],
    ),
    (
        "a nested class",
        "def f():\n    k = 1\n    class B:\n        y = k + outer_name\n    return B",
        ["outer_name"],
    ),
    # -- global / nonlocal
    (
        "global in a function",
        "def bump():\n    global counter\n    counter += 1",
        ["counter"],
    ),
    ("a function's own name is local", "def f():\n    total = 0\n    return total", []),
    (
        "nonlocal",
        """
        def make():
            count = 0
            def inc():
                nonlocal count
                count += 1
                return count
            return inc
        """,
        [],
    ),
    # -- walrus
    (
        "walrus in a comprehension's condition",
        "y = [w for v in vs if (w := f(v))]",
        ["vs", "f"],
    ),
    (
        "walrus in a comprehension binds in the cell",
        "ys = [(last := v) for v in vs]\nprint(last)",
        ["vs", "print"],
    ),
    (
        "walrus in the cell",
        "if (n := len(items)) > limit:\n    print(n)",
        ["len", "items", "limit", "print"],
    ),
    (
        "walrus in a function's comprehension binds in the function",
        "def f():\n    [(w := v) for v in vs]\n    return w",
        ["vs"],
    ),
    # -- match
    (
        "match with a wildcard",
        """
        match command:
            case ("go", where):
                target = where
            case Point(x=px) if px > limit:
                target = px
            case _:
                target = default
        print(target)
        """,
        ["command", "Point", "limit", "default", "print"],
    ),
    (
        "match without a wildcard may bind nothing",
        "match value:\n    case 0:\n        label = 'zero'\nprint(label)",
        ["value", "print", "label"],
    ),
    (
        "match value patterns read names",
        "match color:\n    case Color.RED:\n        pass\n    case {'k': kv, **rest}:\n"
        "        print(kv, rest)",
        ["color", "Color", "print"],
    ),
    # -- try
    (
        "try binds on every path",
        """
        try:
            value = compute()
        except KeyError as error:
            value = error
        print(value)
        """,
        ["compute", "KeyError", "print"],
    ),
    (
        "a handler may run before the body bound anything",
        "try:\n    value = compute()\nexcept KeyError:\n    pass\nprint(value)",
        ["compute", "KeyError", "print", "value"],
    ),
    (
        "finally",
        "try:\n    pass\nfinally:\n    done = True\nprint(done)",
        ["print"],
    ),
    pytest.param(
        "try/except*",
        """
        try:
            risky()
        except* ValueError as group:
            handled = group
        else:
            handled = None
        print(handled)
        """,
        ["risky", "ValueError", "print"],
        marks=EXCEPT_STAR,
        id="try/except*",
    ),
    pytest.param(
        "try/except* may leave a name unbound",
        "try:\n    x = risky()\nexcept* OSError:\n    pass\nprint(x)",
        ["risky", "OSError", "print", "x"],
        marks=EXCEPT_STAR,
        id="try/except* may leave a name unbound",
    ),
    # -- del
    ("del reads the notebook's name", "del scratch", ["scratch"]),
    ("del of the cell's own name", "tmp = 1\ndel tmp", []),
    # -- augmented assignment
    ("augmented assignment reads first", "count += 1", ["count"]),
    ("augmented assignment of an item", "items[i] += step", ["items", "i", "step"]),
    ("augmented assignment in a function is local", "def f():\n    n = 0\n    n += 1", []),
    ("x = x + 1", "x = x + 1\ny = x", ["x"]),
    # -- branches
    (
        "a name bound in one branch only",
        "if flag:\n    data = load()\nresult = process(data)",
        ["flag", "load", "process", "data"],
    ),
    (
        "a name bound in both branches",
        "if flag:\n    data = 1\nelse:\n    data = 2\nprint(data)",
        ["flag", "print"],
    ),
    (
        "a branch that raises does not count",
        "if flag:\n    data = 1\nelse:\n    raise ValueError(flag)\nprint(data)",
        ["flag", "ValueError", "print"],
    ),
    (
        "a loop binds its variables for what follows",
        "for v in vs:\n    last = v\nprint(last, v)",
        ["vs", "print"],
    ),
    (
        "a loop binds what it binds before its break",
        """
        while True:
            line = read()
            if not line:
                break
            n = 1
        print(line, n)
        """,
        ["read", "print", "n"],
    ),
    (
        "a continue skips the rest of the body",
        "for v in vs:\n    if v:\n        continue\n    skipped = v\nprint(skipped)",
        ["vs", "print", "skipped"],
    ),
    (
        "a loop body reads its own later names on the first pass",
        "for v in vs:\n    if v:\n        print(prev)\n    prev = v",
        ["vs", "print", "prev"],
    ),
    (
        "a loop's else runs unless it breaks",
        "for v in vs:\n    pass\nelse:\n    found = None\nprint(found)",
        ["vs", "print"],
    ),
    (
        "a loop that breaks may skip its else",
        "for v in vs:\n    if v:\n        break\nelse:\n    found = None\nprint(found)",
        ["vs", "print", "found"],
    ),
    (
        "a with block runs its body",
        "with open(path) as handle:\n    text = handle.read()\nprint(text)",
        ["open", "path", "print"],
    ),
]


@pytest.mark.parametrize(("case", "source", "needed"), CASES, ids=[c[0] for c in CASES])
def test_a_cell_reads_the_notebook_names_it_may_read_before_binding_them(case, source, needed):
    assert names_read_from_outside(textwrap.dedent(source), "<cell>") == needed


LOCK = threading.Lock()  # cannot be pickled: shipping it refuses the cell

# A notebook whose names a cell also uses for its own variables (`v`, `w`).
NOTEBOOK = {"values": [1, 2, 3], "v": LOCK, "w": LOCK, "k": LOCK, "flag": False, "data": [7]}

SAME_AS_IN_THE_NOTEBOOK = [
    "y = [v * 2 for v in values]",
    "y = {v for v in values} | {k: v for k, v in enumerate(values)}.keys()",
    "y = [[w * v for w in values] for v in values]",
    "y = sorted(set(v for v in values))",
    "y = [w for v in values if (w := v * 2)]",
    "if flag:\n    data = []\ny = data",  # bound in the branch not taken
    "for v in values:\n    pass\ny = v",
]


@pytest.mark.parametrize("source", SAME_AS_IN_THE_NOTEBOOK)
def test_a_cell_run_with_what_it_ships_gives_what_the_notebook_gives(source):
    in_the_notebook = dict(NOTEBOOK)
    exec(source, in_the_notebook)
    shipped = cell_inputs(source, "<cell>", NOTEBOOK, {})
    on_the_worker = run_cell(source, "<cell>", pickle.dumps(shipped), ("y",))
    assert on_the_worker.values == {"y": in_the_notebook["y"]}


def test_what_only_the_compiler_refuses_is_a_syntax_error_at_submit():
    for source in ("nonlocal x", "return 1", "class A:\n    y = [(z := 1) for v in w]"):
        with pytest.raises(SyntaxError):
            names_read_from_outside(source, "<cell>")
