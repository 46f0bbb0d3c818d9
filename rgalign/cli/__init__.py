"""The ``rgalign`` command line: a thin typer layer over the library.

Each command parses its options, calls one library function and prints a summary. Errors that
rgalign raises on purpose (:class:`rgalign.errors.RgalignError`) are printed as one line and
exit non-zero; ``--verbose`` shows the traceback.
"""

from __future__ import annotations

import importlib
import sys

import typer
from rich.markup import escape

from rgalign.cli._app import app, console, state
from rgalign.errors import RgalignError

# Importing the command modules registers their commands on ``app``.
from rgalign.cli import data as _data  # noqa: F401,E402
from rgalign.cli import train as _train  # noqa: F401,E402
from rgalign.cli import quickstart as _quickstart  # noqa: F401,E402
from rgalign.cli import export as _export  # noqa: F401,E402
from rgalign.cli import bench as _bench  # noqa: F401,E402
from rgalign.cli import doctor as _doctor  # noqa: F401,E402
from rgalign.cli import serve as _serve  # noqa: F401,E402
from rgalign.cli import tune as _tune  # noqa: F401,E402


def _usage_error_types() -> tuple[type[Exception], ...]:
    """The classes of click's usage errors (no such command or option, a missing or bad value).

    typer < 0.22 raises click's own; newer typer vendors click as ``typer._click`` and raises
    those, which are not click's. Both are looked up, so a usage error is one line with every
    typer the install may resolve."""
    types: list[type[Exception]] = []
    for module in ("click.exceptions", "typer._click.exceptions"):
        try:
            types.append(importlib.import_module(module).ClickException)
        except (ImportError, AttributeError):
            continue
    return tuple(types)


def main(argv: list[str] | None = None) -> None:
    """Console-script entry point."""
    try:
        app(args=argv, standalone_mode=False)
    except RgalignError as e:
        if state.verbose:
            console.print_exception()
        # escape: a message may hold brackets (rgalign[gpu], a list) that rich would eat as markup
        console.print(f"[bold red]error:[/] {escape(str(e))}", highlight=False, soft_wrap=True)
        sys.exit(e.exit_code)
    except typer.Exit as e:
        sys.exit(e.exit_code)
    except typer.Abort:
        console.print("[red]aborted[/]")
        sys.exit(130)
    except KeyboardInterrupt:
        console.print("[red]interrupted[/]")
        sys.exit(130)
    except _usage_error_types() as e:  # usage errors print their own line and carry their exit code
        if state.verbose:
            console.print_exception()
        e.show()
        sys.exit(e.exit_code)
    except OSError as e:  # the machine's, not a bug: a folder that cannot be written, a full disk
        if state.verbose:
            console.print_exception()
        what = e.strerror or str(e).strip() or type(e).__name__
        where = f": {e.filename}" if e.filename else ""
        console.print(f"[bold red]error:[/] {escape(what)}{escape(str(where))} ({type(e).__name__})",
                      highlight=False, soft_wrap=True)
        sys.exit(1)
    except Exception as e:  # noqa: BLE001 - a bug or an unforeseen failure: still one line
        if state.verbose:
            raise
        first = str(e).strip().splitlines()[0] if str(e).strip() else ""
        console.print(
            f"[bold red]error:[/] unexpected {type(e).__name__}: {escape(first[:500])} "
            "(rerun with --verbose for the traceback, and please report it)",
            highlight=False, soft_wrap=True,
        )
        sys.exit(1)
