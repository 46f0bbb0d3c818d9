"""``rgalign tune EXPORT --out DIR``: thin; calls `rgalign.bench.tune.tune` and prints the best
configuration for the latency budget."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.markup import escape
from rich.table import Table

from rgalign.cli._app import app, console, int_list


@app.command("tune")
def tune_cmd(
    export: Path = typer.Argument(..., help="Export folder (what `rgalign export --out` wrote)."),
    out: Path = typer.Option(..., "--out", "-o", help="Folder for tune.json, best.json, best/ and frontier.png."),
    latency_budget_ms: float = typer.Option(20.0, "--latency-budget-ms", min=0.01, help="Largest p99 allowed (ms)."),
    throughput_goal: float = typer.Option(0.0, "--throughput-goal", min=0, help="Requests / s the best must reach."),
    precision: str = typer.Option("int8", "--precision", help="The export's precision to deploy."),
    threads: int = typer.Option(0, "--threads", min=0, help="ONNX Runtime threads per model (0: one per core)."),
    layouts: str = typer.Option("fused,ensemble", "--layouts", help="Layouts to sweep."),
    instances: str = typer.Option("1,2", "--instances", help="Instances per model to sweep."),
    max_batch: str = typer.Option("4,16", "--max-batch", help="Max batch sizes to sweep."),
    queue_delay_us: str = typer.Option("0,2000", "--queue-delay-us", help="Max queue delays (µs) to sweep."),
    concurrency: str = typer.Option("1,4,16", "--concurrency", help="Concurrencies perf_analyzer measures."),
    interval_ms: int = typer.Option(2000, "--interval-ms", min=100, help="perf_analyzer's measurement window (ms)."),
    records: Path | None = typer.Option(None, "--records", help="Raw requests to send (default: the run's dataset)."),
) -> None:
    """Sweep layouts, instances, max batch and queue delay with perf_analyzer; keep the best config."""
    from rgalign.bench.perf_analyzer import Settings
    from rgalign.bench.target import resolve_target
    from rgalign.bench.tune import Goal, Grid, tune

    grid = Grid(
        layouts=tuple(x.strip() for x in layouts.split(",") if x.strip()),
        instances=int_list(instances, "--instances", minimum=0), max_batch=int_list(max_batch, "--max-batch", minimum=0),
        queue_delay_us=int_list(queue_delay_us, "--queue-delay-us", minimum=0),
    )  # fmt: skip
    target = resolve_target(export, records)
    with console.status("tuning ...") as status:
        result = tune(
            export, out, target.records, grid=grid, goal=Goal(latency_budget_ms, throughput_goal),
            concurrencies=int_list(concurrency, "--concurrency", minimum=0), precision=precision, threads=threads,
            settings=Settings(interval_ms=interval_ms), progress=lambda msg: status.update(escape(msg) + " ..."),
        )  # fmt: skip
    table = Table(title=f"{len(result['measurements'])} measurements (perf_analyzer, {result['protocol']})", title_justify="left")
    for col in ("config", "c", "req/s", "p50 ms", "p99 ms", "PSS MB"):
        table.add_column(col, justify="left" if col == "config" else "right")
    for m in result["measurements"]:
        if m["status"] != "OK":
            table.add_row(escape(m["config"]), str(m.get("concurrency", "")), escape(m["status"]), "", "", "")
            continue
        table.add_row(escape(m["config"]), str(m["concurrency"]), f"{m['throughput']:.0f}", f"{m['p50_ms']:.2f}",
                      f"{m['p99_ms']:.2f}", f"{m['memory']['pss_mb']:.0f}")
    console.print(table)
    best = result["best"]
    if best["found"]:
        m = best["measurement"]
        met = "[green]meets[/]" if best["goal_met"] else "[red]misses[/]"
        console.print(
            f"best within p99 <= {latency_budget_ms:g} ms: [bold]{escape(m['config'])}[/] at concurrency "
            f"{m['concurrency']}: {m['throughput']:.0f} req/s ({met} the goal of {throughput_goal:g}), "
            f"p99 {m['p99_ms']:.2f} ms\n  {escape(best['command'])}",
            highlight=False, soft_wrap=True,
        )
    else:
        console.print(f"[red]no configuration fits:[/] {escape(best['reason'])}", highlight=False, soft_wrap=True)
    console.print(f"wrote [bold]{escape(str(out))}[/]/tune.json, best.json, best/, frontier.png "
                  f"in {result['seconds']:.0f} s", highlight=False)
