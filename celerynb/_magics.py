"""IPython magics (``%load_ext celerynb``): a thin layer over the public Python API.

Every magic parses its arguments and calls ``connect``, ``apply_async``,
``submit_cell``, ``jobs``, ``workers``, ``dashboard`` or ``cancel``. Bad input is reported as one
``UsageError`` line, never as a traceback.
"""

from __future__ import annotations

import ast
import functools
import logging
import re
from collections import ChainMap
from collections.abc import Callable, Mapping
from typing import Any

from IPython.core.error import UsageError
from IPython.core.magic import Magics, line_cell_magic, line_magic, magics_class
from IPython.core.magic_arguments import argument, magic_arguments, parse_argstring
from IPython.display import display

from ._call_options import CallOptions
from ._cell import parse_output_names
from ._cluster import LocalCluster
from ._commands import assign_on_success, cancel, jobs, submit_cell, workers
from ._connect import connect
from ._dashboard import dashboard, open_dashboard
from ._errors import CelerynbError, NotConnectedError
from ._session import Session, current_session
from ._validation import shown

log = logging.getLogger(__name__)

_VALUE_TEXT = r"(?:\"[^\"]*\"|'[^']*')(?=\s|$)|\S+"  # a word, or quoted: may hold spaces
_OPTION = re.compile(rf"(?P<flag>--?[A-Za-z][\w-]*)(?:=(?P<value>{_VALUE_TEXT}))?(?:\s+|$)")
_VALUE = re.compile(_VALUE_TEXT)
_NAME_LISTS = {"-o", "--output"}  # "-o total, mean": the names after a comma are its too
_NEXT_NAME = re.compile(r"[^\W\d]\w*,?(?=\s|$)")
_MAX_MESSAGE = 300
_SUBMIT_FLAGS = {
    "-o", "--output", "-q", "--queue", "--countdown", "--expires", "--priority",
    "--time-limit", "--soft-time-limit",
}  # fmt: skip


def split_options(line: str, flags_with_values: set[str]) -> tuple[str, str]:
    """``"-o x -q fast f(a, b)"`` -> ``("-o x -q fast", "f(a, b)")``: options, then code."""
    rest = line.strip()
    taken: list[str] = []
    while rest.startswith("-"):
        match = _OPTION.match(rest)
        if not match:
            break
        taken.append(match.group(0).strip())
        rest = rest[match.end() :]
        if match["flag"] in flags_with_values and match["value"] is None and rest:
            value = _VALUE.match(rest)  # a word, or a quoted one that may hold spaces
            assert value is not None  # rest is stripped and not empty: a word at least
            text, rest = value.group(0), rest[value.end() :].lstrip()
            while match["flag"] in _NAME_LISTS and text.endswith(",") and rest:
                name = _NEXT_NAME.match(rest)
                if name is None:
                    break
                text, rest = text + name.group(0), rest[name.end() :].lstrip()
            taken.append(text)
    return " ".join(taken), rest


def evaluate_call(
    text: str, namespace: dict[str, Any], fallback: Mapping[str, Any] | None = None
) -> tuple[Any, tuple[Any, ...], dict[str, Any]]:
    """Evaluate ``f(a, *b, k=c)`` in ``namespace`` without calling ``f``.

    Returns ``(f, args, kwargs)``. Names missing from ``namespace`` are looked up
    in ``fallback`` (e.g. the connected app's tasks by short name).
    """
    try:
        tree = ast.parse(text.strip(), "<celery_submit>", "eval")
    except SyntaxError as exc:
        raise UsageError(f"not a Python call: {shown(text.strip())} ({exc.msg})") from None
    call = tree.body
    if not isinstance(call, ast.Call):
        raise UsageError(
            f"expected a call such as simulate(10_000), got {shown(text.strip())}"
            + (" (add the arguments in parentheses)" if isinstance(call, ast.Name) else "")
        )
    capture = "__celerynb_capture__"
    scope = ChainMap(namespace, {capture: lambda *a, **k: (a, k)}, dict(fallback or {}))
    function = eval(compile(ast.Expression(call.func), "<celery_submit>", "eval"), namespace, scope)
    call.func = ast.Name(capture, ast.Load())
    args, kwargs = eval(
        compile(ast.fix_missing_locations(tree), "<celery_submit>", "eval"), namespace, scope
    )
    return function, args, kwargs


def _usage_errors(magic: Callable[..., Any]) -> Callable[..., Any]:
    """Turn any failure into one short UsageError line (details in the debug log); our
    own UsageErrors and argparse's, which may quote the input, are cut to one line too."""

    @functools.wraps(magic)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return magic(*args, **kwargs)
        except UsageError as exc:
            raise UsageError(_one_line(exc)) from None
        except Exception as exc:
            log.debug("celerynb magic failed", exc_info=True)
            raise UsageError(_one_line(exc)) from None

    return wrapper


def _require_session() -> Session:
    try:
        return current_session()
    except NotConnectedError:
        raise UsageError(
            "not connected: run %celery_connect --local (workers on this machine) "
            "or %celery_connect URL first"
        ) from None


def _unquoted(value: str | None) -> str | None:
    """``-q "gpu"``: IPython's option parsing keeps the quotes; drop one matching pair, as
    a shell would (a queue named '"gpu"' would leave the job waiting forever)."""
    if value is not None and len(value) >= 2 and value[0] == value[-1] and value[0] in "'\"":
        return value[1:-1]
    return value


def _one_line(exc: BaseException) -> str:
    plain = isinstance(exc, CelerynbError | UsageError)  # already says what failed
    text = str(exc) if plain else f"{type(exc).__name__}: {exc}"
    text = text.strip().splitlines()[0] if text.strip() else type(exc).__name__
    text = text.encode("utf-8", "backslashreplace").decode()  # a lone surrogate, escaped
    return text if len(text) <= _MAX_MESSAGE else text[: _MAX_MESSAGE - 3] + "..."


@magics_class
class CeleryMagics(Magics):
    """``%celery_connect``, ``%celery_submit``/``%%celery_submit``, ``%celery_jobs``,
    ``%celery_workers``, ``%celery_dashboard`` and ``%celery_cancel``."""

    def __init__(self, shell: Any) -> None:
        super().__init__(shell)
        self.cluster: LocalCluster | None = None  # started by --local; stops with the kernel

    @line_magic
    @_usage_errors
    @magic_arguments()
    @argument("url", nargs="?", help="broker URL: redis://, rediss://, amqp://, pyamqp://...")
    @argument("--local", action="store_true", help="start a local Redis and a worker")
    @argument(
        "-n",
        "--processes",
        "--workers",
        dest="processes",
        type=int,
        default=None,
        help="pool processes of the local worker: jobs run side by side (--local; default 2; "
        "given again, the running cluster is scaled)",
    )
    @argument("-A", "--app", help="your Celery app, as module:attribute (myproject.celery:app)")
    @argument("-b", "--backend", help="result backend URL (default: Redis broker, else rpc://)")
    def celery_connect(self, line: str) -> None:
        """Connect this kernel to Celery workers and say how many answer.

        With no argument: $CELERY_BROKER_URL (or $CELERYNB_BROKER_URL, or a
        celeryconfig module). Examples::

            %celery_connect --local -n 4
            %celery_connect redis://localhost:6379/0
            %celery_connect pyamqp://guest@localhost// -b rpc://
            %celery_connect -A myproject.celery:app
        """
        args = parse_argstring(self.celery_connect, line)
        chosen = [bool(args.url), args.local, bool(args.app)]
        if sum(chosen) > 1:
            raise UsageError("give one of URL, --local or -A APP")
        if args.local:
            session = self._connect_local(args.processes)
            processes = self.cluster.processes if self.cluster is not None else args.processes
            noun = "process" if processes == 1 else "processes"
            what = f"a local cluster ({processes} {noun}) at {session.broker_url}"
        elif args.app:
            from celery.app.utils import find_app

            app = find_app(args.app)
            app.loader.import_default_modules()  # registers the app's tasks here too
            session = connect(app, backend=args.backend)
            tasks = [name for name in app.tasks if not name.startswith(("celery.", "celerynb."))]
            what = f"app {app.main!r} ({len(tasks)} tasks) at {session.broker_url}"
        else:
            session = connect(args.url or None, backend=args.backend)
            what = session.broker_url
        online = workers()
        hint = "" if online else " (start one: celery -A celerynb.worker worker --loglevel=info)"
        print(f"celerynb: connected to {what}; {online.online_summary()}{hint}")

    def _connect_local(self, processes: int | None) -> Session:
        """This kernel's local cluster, started once; another ``-n`` scales it while its
        jobs run (closing it would end them)."""
        cluster = self.cluster
        if cluster is not None and not cluster.closed:
            if processes is not None and cluster.processes != processes:
                cluster.scale(processes)
            try:
                session: Session | None = current_session()
            except NotConnectedError:
                session = None
            if session is not None and session.owner is cluster:
                return session
            return connect(cluster)
        self.cluster = LocalCluster(processes=processes or 2)
        return connect(self.cluster)

    @line_cell_magic
    @_usage_errors
    @magic_arguments()
    @argument("-o", "--output", metavar="VAR", help="assign the result (cell: VAR[,VAR...])")
    @argument("-q", "--queue", help="send to this Celery queue")
    @argument("--countdown", type=float, metavar="S", help="start no sooner than S seconds")
    @argument("--expires", type=float, metavar="S", help="drop it unrun if not started in S s")
    @argument("--priority", type=int, metavar="N", help="message priority (Redis: 0-9, 0 first)")
    @argument("--time-limit", type=float, metavar="S", help="stop it after S seconds")
    @argument("--soft-time-limit", type=float, metavar="S", help="warn it after S seconds")
    @argument("call", nargs="*", help="the call to run, e.g. simulate(10_000)")
    def celery_submit(self, line: str, cell: str | None = None) -> Any:
        """Run a call (or, as %%celery_submit, the whole cell) on a worker; return its Job.

        Returns at once and shows a live progress widget. The call's function may
        be a registered Celery task (sent by name, JSON) or any Python callable,
        notebook functions included. With -o VAR, VAR is set when the job succeeds.

        As a cell magic, the notebook variables the cell reads are shipped with
        it, the -o variables are set back when it succeeds, and its printed output
        is shown under the widget. Examples::

            %celery_submit -o answer simulate(10_000)
            job = %celery_submit -q gpu train(model, epochs=3)
            %celery_submit --countdown 30 --time-limit 600 simulate(10_000)

            %%celery_submit -o total,mean
            total = sum(heavy(x) for x in data)
            mean = total / len(data)
        """
        options, code = split_options(line, _SUBMIT_FLAGS)
        args = parse_argstring(self.celery_submit, options)
        sending = CallOptions.of(
            queue=_unquoted(args.queue),
            countdown=args.countdown,
            expires=args.expires,
            priority=args.priority,
            time_limit=args.time_limit,
            soft_time_limit=args.soft_time_limit,
        )
        _require_session()  # before evaluating anything
        shell = self.shell
        assert shell is not None  # magics run in a shell
        namespace = shell.user_ns
        if cell is None:
            if not code:
                raise UsageError("give a call to run, e.g. %celery_submit simulate(10_000)")
            outputs = parse_output_names(args.output)
            if len(outputs) > 1:
                raise UsageError("-o takes one variable for a call (a cell takes several)")
            function, call_args, call_kwargs = evaluate_call(code, namespace, self._app_tasks())
            job = current_session().submit(
                function, tuple(call_args), call_kwargs, call_options=sending
            )
            if outputs:
                assign_on_success(job, namespace, outputs[0])
        else:
            if code:
                raise UsageError("%%celery_submit takes only options; the cell is the code")
            job = submit_cell(
                cell,
                namespace,
                outputs=args.output,
                call_options=sending,
                hidden=shell.user_ns_hidden,
                label=f"cell [{shell.execution_count}]",
            )
        job.show()
        return job

    def _app_tasks(self) -> dict[str, Any]:
        """The connected app's registered tasks by short name, for calls like f(5)."""
        app = current_session().user_app
        if app is None:
            return {}
        by_short: dict[str, list[Any]] = {}
        for name, task in app.tasks.items():
            if not name.startswith(("celery.", "celerynb.")):
                by_short.setdefault(name.rsplit(".", 1)[-1], []).append(task)
        return {short: tasks[0] for short, tasks in by_short.items() if len(tasks) == 1}

    @line_magic
    @_usage_errors
    @magic_arguments()
    @argument(
        "--previous",
        action="store_true",
        help="this notebook's jobs from before a kernel restart: watch them again, live",
    )
    def celery_jobs(self, line: str) -> None:
        """Show this kernel's jobs: id, call, state, progress, elapsed."""
        args = parse_argstring(self.celery_jobs, line)
        if args.previous:
            _require_session()
            again = jobs(previous=True)
            display(again)
            again.running().show()
        else:
            display(jobs())

    @line_magic
    @_usage_errors
    @magic_arguments()
    @argument("-t", "--timeout", type=float, default=1.0, help="seconds to wait for answers")
    def celery_workers(self, line: str) -> None:
        """Show the online workers: pool, concurrency, queues, active and reserved tasks."""
        args = parse_argstring(self.celery_workers, line)
        _require_session()
        display(workers(timeout=args.timeout))

    @line_magic
    @_usage_errors
    @magic_arguments()
    @argument("--close", action="store_true", help="stop the live dashboard")
    def celery_dashboard(self, line: str) -> None:
        """Show one live widget for the whole cluster: workers (CPU, memory, processes),
        queues (depth, consumers), the jobs of every kernel (with cancel), a task stream."""
        args = parse_argstring(self.celery_dashboard, line)
        session = _require_session()
        if args.close:
            board = open_dashboard(session)
            if board is not None:
                board.close()
            print("celerynb: dashboard closed" if board else "celerynb: no dashboard is open")
        else:
            display(dashboard(session))

    @line_magic
    @_usage_errors
    @magic_arguments()
    @argument("ids", nargs="*", help="job ids (or unique prefixes, as %%celery_jobs shows)")
    @argument("--all", action="store_true", help="cancel every unfinished job of this kernel")
    def celery_cancel(self, line: str) -> None:
        """Cancel jobs: revoke them, terminating those already running."""
        args = parse_argstring(self.celery_cancel, line)
        if bool(args.ids) == args.all:
            raise UsageError("give job ids or --all")
        cancelled = [job.id for job in jobs().cancel()] if args.all else cancel(*args.ids)
        if not cancelled:
            print("celerynb: nothing to cancel (those jobs already finished)")
            return
        noun = "job" if len(cancelled) == 1 else "jobs"
        print(f"celerynb: cancelled {len(cancelled)} {noun}: {', '.join(cancelled)}")


def load_ipython_extension(ipython: Any) -> None:
    """``%load_ext celerynb``: register the magics."""
    ipython.register_magics(CeleryMagics)
