"""The typer application object and the state shared by every command."""

from __future__ import annotations

from dataclasses import dataclass

import typer
from rich.console import Console

console = Console(stderr=False)
err_console = Console(stderr=True)


@dataclass
class _State:
    verbose: bool = False


state = _State()

app = typer.Typer(
    name="rgalign",
    help="RGAlign-Rec end to end: train an LLM reasoner and a Query-Enhanced ranker, export them "
    "to ONNX/TensorRT, serve them as a Triton ensemble, benchmark.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


@app.callback()
def _root(
    verbose: bool = typer.Option(False, "--verbose", "-v", help="Show tracebacks on errors."),
) -> None:
    state.verbose = verbose
