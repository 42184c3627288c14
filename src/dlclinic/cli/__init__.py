"""The ``dlclinic`` command line: parse, call the library, render — nothing more.

One module per command (``checkup``, ``treat``, ``serve`` ...); :mod:`dlclinic.cli.options` and
:mod:`dlclinic.cli.flags` hold the shared option plumbing. This module builds the Typer ``app``
from them and :func:`main` runs it.

Exit codes: 0 success; 1 the report crossed ``--fail-on``; 2 bad input or options
(one line on stderr, no traceback, no partial files).
"""

from __future__ import annotations

import atexit
import contextlib
import os
import sys
import threading
import warnings
from collections.abc import Iterator
from typing import Any

import typer

from dlclinic.cli import launch
from dlclinic.cli.audit import audit_app
from dlclinic.cli.bundle import bundle_app
from dlclinic.cli.challenges import challenges
from dlclinic.cli.checkup import checkup
from dlclinic.cli.demo import demo_app
from dlclinic.cli.export import export
from dlclinic.cli.monitor import monitor
from dlclinic.cli.options import DemoArgsGroup
from dlclinic.cli.predict import predict
from dlclinic.cli.replay import replay
from dlclinic.cli.scan_model import scan_model
from dlclinic.cli.serve import serve
from dlclinic.cli.treat import treat
from dlclinic.core.errors import DlclinicError

try:  # typer >= 0.20 vendors click; older versions use the click package
    from typer._click import exceptions as click_exc
except ImportError:  # pragma: no cover
    from click import exceptions as click_exc  # type: ignore[no-redef]

__all__ = ["app", "main"]

app = typer.Typer(
    name="dlclinic",
    cls=DemoArgsGroup,  # `--demo` alone still means the image demo (--demo [image|text|sequence])
    help="Measure, treat and verify the 31 classic challenges of deep learning on your own model and data.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
)
# the order of `dlclinic --help`: the commands, then the groups
for _command in (checkup, treat, challenges, serve, monitor, predict):
    app.command()(_command)
app.command("scan-model")(scan_model)
app.command()(replay)
app.command()(export)
app.add_typer(demo_app, name="demo")
app.add_typer(bundle_app, name="bundle")
app.add_typer(audit_app, name="audit")


def main(argv: list[str] | None = None) -> int:
    """Entry point: run the app, turning every expected error into one line and exit code 2.

    Run as the program (no ``argv``: the ``dlclinic`` script, ``python -m dlclinic.cli``), the
    process ends as soon as the command is done (:func:`_exit_now`).
    """
    code = launch.exit_code(_run(argv))
    if argv is None:
        _exit_now(code)
    return code


def _exit_now(code: int) -> None:
    """Flush, join the threads, run the exit handlers, then end the process without the interpreter's
    teardown, which frees torch, onnxruntime and the rest one object at a time (1–2 s after a checkup)."""
    for thread in threading.enumerate():
        if thread is not threading.main_thread() and not thread.daemon:
            thread.join()
    atexit._run_exitfuncs()
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):
            pass
    os._exit(code)


def _one_line_warning(
    message: Warning | str, category: type[Warning], filename: str, lineno: int, file: Any = None, line: Any = None
) -> None:
    """Show a warning as ``warning: <first line>`` (not Python's two lines with the source file and code)."""
    text = str(message).splitlines()[0] if str(message) else category.__name__
    try:
        (file or sys.stderr).write(f"warning: {text}\n")
    except (OSError, ValueError):  # a closed stream: the warning is lost, the command goes on
        pass


@contextlib.contextmanager
def _cli_warnings() -> Iterator[None]:
    """Warnings in the CLI's one-line form for the duration of a command."""
    saved = warnings.showwarning
    warnings.showwarning = _one_line_warning
    try:
        yield
    finally:
        warnings.showwarning = saved


def _run(argv: list[str] | None) -> int:
    with _cli_warnings():
        return _run_app(argv)


def _run_app(argv: list[str] | None) -> int:
    launch.remember(argv if argv is not None else sys.argv[1:])  # for --nproc, which runs it again under torchrun
    try:
        # without standalone mode, click returns the code of a typer.Exit instead of raising it
        rc = app(args=argv, standalone_mode=False, prog_name="dlclinic")
        if isinstance(rc, int) and rc:
            return rc
    except DlclinicError as exc:
        typer.echo(f"error: {str(exc).splitlines()[0] if str(exc) else type(exc).__name__}", err=True)
        return 2
    except typer.Exit as exc:
        return int(exc.exit_code or 0)
    except typer.Abort:
        typer.echo("error: aborted", err=True)
        return 130
    except click_exc.UsageError as exc:
        hint = f" (see `{exc.ctx.command_path} --help`)" if exc.ctx is not None else ""
        typer.echo(f"error: {exc.format_message().splitlines()[0]}{hint}", err=True)
        return 2
    except click_exc.ClickException as exc:
        typer.echo(f"error: {exc.format_message().splitlines()[0]}", err=True)
        return 2
    except KeyboardInterrupt:
        typer.echo("error: interrupted", err=True)
        return 130
    return 0
