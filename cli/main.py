"""Entry point: builds the Typer app, reports :class:`GenexflowError` as one line (exit 2).

``--debug`` (or ``GENEXFLOW_DEBUG=1``) shows the full traceback instead.
"""

from __future__ import annotations

import importlib
import os
import pkgutil
import sys

import typer

import genexflow.cli as pkg
from genexflow import __version__
from genexflow.errors import GenexflowError
from genexflow.stack import signals

app = typer.Typer(
    name="genexflow",
    help="Validated, batch-corrected, pathway-aware deep learning on gene expression, run as MLOps.",
    add_completion=False,
    pretty_exceptions_enable=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)

_state = {"debug": False}


@app.callback(invoke_without_command=True)
def _root(
    ctx: typer.Context,
    debug: bool = typer.Option(False, "--debug", help="Show full tracebacks on errors."),
    version: bool = typer.Option(False, "--version", help="Print the version and exit.", is_eager=True),
) -> None:
    if version:
        typer.echo(f"genexflow {__version__}")
        raise typer.Exit()
    _state["debug"] = debug or os.environ.get("GENEXFLOW_DEBUG") == "1"
    if ctx.invoked_subcommand is None:
        typer.echo(ctx.get_help())
        raise typer.Exit()


def _register_all() -> None:
    for mod in sorted(pkgutil.iter_modules(pkg.__path__), key=lambda m: m.name):
        if mod.name in ("main",) or mod.name.startswith("_"):
            continue
        module = importlib.import_module(f"genexflow.cli.{mod.name}")
        register = getattr(module, "register", None)
        if register is not None:
            register(app)


_register_all()


def main(argv: list[str] | None = None) -> None:
    """Run the CLI; exit 2 with ``error: <message>`` on a GenexflowError."""
    debug = "--debug" in (argv if argv is not None else sys.argv[1:]) or os.environ.get("GENEXFLOW_DEBUG") == "1"
    # SIGTERM/SIGHUP raise like Ctrl-C: every `finally` and context manager that stops a server this
    # command started runs (the default action would kill the process and orphan its servers)
    signals.install()
    # every Python child (pipeline steps run as `python -m`) keeps the current folder off sys.path, so a
    # folder there named like an installed package (triton/, torch/...) cannot shadow it
    os.environ["PYTHONSAFEPATH"] = "1"
    try:
        rc = app(args=argv, standalone_mode=False)
        # standalone_mode=False makes click *return* the code of typer.Exit(n) instead of exiting
        if isinstance(rc, int) and rc != 0:
            sys.exit(rc)
    except GenexflowError as exc:
        if debug:
            raise
        typer.secho(f"error: {exc}", err=True, fg=typer.colors.RED)
        sys.exit(exc.exit_code)
    except FileNotFoundError as exc:
        if debug:
            raise
        typer.secho(f"error: file not found: {exc.filename or exc}", err=True, fg=typer.colors.RED)
        sys.exit(2)
    except signals.Terminated as exc:
        typer.secho(f"{exc}: stopped the servers this command had started", err=True)
        sys.exit(128 + exc.signum)
    except KeyboardInterrupt:
        typer.secho("interrupted", err=True)
        sys.exit(130)
    except SystemExit:
        raise
    except Exception as exc:  # usage errors (typer ships its own click fork) and the like
        if hasattr(exc, "show") and hasattr(exc, "exit_code"):
            exc.show()
            sys.exit(exc.exit_code)
        if type(exc).__name__ in ("Exit", "Abort"):
            sys.exit(getattr(exc, "exit_code", 1))
        if debug:
            raise
        typer.secho(f"error: unexpected {type(exc).__name__}: {exc} (rerun with --debug for the traceback)",
                    err=True, fg=typer.colors.RED)
        sys.exit(1)


if __name__ == "__main__":
    main()
