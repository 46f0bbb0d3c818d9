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


def int_list(text: str, what: str, minimum: int = 1) -> tuple[int, ...]:
    """A comma-separated option's integers, ``"1,8,32"`` -> ``(1, 8, 32)``; `ConfigError` (one line
    naming the option ``what``) unless there is at least one and each is >= ``minimum``."""
    from rgalign.errors import ConfigError

    try:
        values = tuple(int(x) for x in text.split(",") if x.strip())
    except ValueError:
        raise ConfigError(f"{what} {text!r}: expected comma-separated integers, e.g. 1,8,32") from None
    if not values or min(values) < minimum:
        raise ConfigError(f"{what} {text!r}: give at least one value, each >= {minimum}")
    return values
