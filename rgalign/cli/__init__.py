"""The ``rgalign`` command line: a thin typer layer over the library.

Each command parses its options, calls one library function and prints a summary. Errors that
rgalign raises on purpose (:class:`rgalign.errors.RgalignError`) are printed as one line and
exit non-zero; ``--verbose`` shows the traceback.
"""

from __future__ import annotations

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
    except Exception as e:  # click usage errors carry their own exit code
        import click

        if isinstance(e, click.ClickException):
            e.show()
            sys.exit(e.exit_code)
        raise
