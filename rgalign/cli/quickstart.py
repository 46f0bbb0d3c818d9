"""``rgalign quickstart [--out DIR]``."""

from __future__ import annotations

from pathlib import Path

import typer

from rgalign.cli._app import app, console


@app.command("quickstart")
def quickstart_cmd(
    out: Path = typer.Option(Path("quickstart"), "--out", "-o", help="Folder for data/ and run/; finished steps are reused."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress bars."),
) -> None:
    """Run the pipeline end to end on embedded defaults: synthesise, check, train (stages 0-2), evaluate."""
    from rgalign.cli.train import print_metrics
    from rgalign.quickstart import quickstart

    res = quickstart(out, log=lambda m: console.print(m, highlight=False), quiet=quiet)
    print_metrics(res.metrics)
    console.print(f"data: {res.data}\nrun:  {res.run}\nmetrics: {res.run / 'metrics.json'}", highlight=False)
