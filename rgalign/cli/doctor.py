"""``rgalign doctor`` (SPEC §9): what is installed and which paths (CPU, GPU, TensorRT, Triton)
work; thin, over `rgalign.bench.doctor.run_doctor`. Exits 0 unless the CPU path is broken."""

from __future__ import annotations

import json

import typer
from rich.markup import escape
from rich.table import Table

from rgalign.cli._app import app, console

_COLOURS = {"OK": "green", "MISSING": "yellow", "FALLBACK": "yellow", "BROKEN": "red"}


@app.command("doctor")
def doctor_cmd(
    as_json: bool = typer.Option(False, "--json", help="Print the checks as JSON instead of a table."),
) -> None:
    """Check the installation: versions, working ONNX Runtime providers, GPU, TensorRT, Triton."""
    from rgalign.bench.doctor import run_doctor

    with console.status("checking ..."):
        doc = run_doctor()
    if as_json:
        console.print_json(json.dumps(doc.to_dict()))
    else:
        table = Table(title="rgalign doctor", title_justify="left")
        for col in ("check", "status", "detail", "what to do"):
            table.add_column(col, overflow="fold")
        for c in doc.checks:
            colour = _COLOURS.get(c.status, "white")
            name = f"{c.name}{' *' if c.required else ''}"
            table.add_row(escape(name), f"[{colour}]{c.status}[/]", escape(c.detail),
                          escape(c.fix) if c.status != "OK" else "")
        console.print(table)
        console.print("[dim]* required: the CPU path (train, export, in-process inference)[/]")
    if not doc.ok:
        broken = ", ".join(c.name for c in doc.checks if c.failed)
        console.print(f"[bold red]error:[/] required checks failed: {escape(broken)}", highlight=False)
        raise typer.Exit(1)
