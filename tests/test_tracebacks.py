"""Source lines come back into tracebacks of shipped functions (cloudpickle drops file names)."""

import functools
import subprocess
import sys

import cloudpickle

from celerynb._tracebacks import restore_sources, source_map


def helper(x):
    return 1 / x  # the failing line


class Model:
    def step(self, x):
        return helper(x)


def outer(x):
    def inner():
        return Model().step(x)

    return inner()


WORKER = """
import sys, traceback, cloudpickle
fn, args = cloudpickle.loads(sys.stdin.buffer.read())
try:
    fn(*args)
except Exception as exc:
    print("".join(traceback.format_exception(exc)), end="")
"""


def remote_traceback_of(fn, *args):
    """Run ``fn`` the way a worker does: in another process, from a cloudpickle payload."""
    cloudpickle.register_pickle_by_value(sys.modules[__name__])
    done = subprocess.run(
        [sys.executable, "-c", WORKER],
        input=cloudpickle.dumps((fn, args)),
        capture_output=True,
        timeout=60,
        check=True,
    )
    return done.stdout.decode()


def test_shipped_frames_get_their_file_and_source_line_back():
    text = remote_traceback_of(outer, 0)
    assert '"<dynamic-code>"' in text and "the failing line" not in text

    restored = restore_sources(text, source_map(outer))
    assert "<dynamic-code>" not in restored
    assert f'File "{__file__}"' in restored
    for source in ("return inner()", "return Model().step(x)", "return helper(x)"):
        assert source in restored
    assert "return 1 / x  # the failing line" in restored
    assert "\n    return helper(x)\n" in restored  # indented as Python indents source lines
    assert restored.rstrip().endswith("ZeroDivisionError: division by zero")


def test_partials_and_lambdas_are_followed():
    fn = functools.partial(lambda scale, x: helper(x * scale), 0)
    restored = restore_sources(remote_traceback_of(fn, 1), source_map(fn))
    assert "helper(x * scale)" in restored and "the failing line" in restored


def test_frames_of_unknown_code_are_left_as_they_are():
    text = 'Traceback (most recent call last):\n  File "<dynamic-code>", line 3, in f\nE: x\n'
    assert restore_sources(text, source_map(len)) == text
    assert restore_sources(text, {}) == text
