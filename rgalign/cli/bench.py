"""``rgalign bench {RUN|EXPORT} [--url URL] --out DIR [--quick]`` (SPEC §7, §9): thin; calls
`rgalign.bench.runner.run_bench` and prints the ratios and the SPEC §8 targets."""

from __future__ import annotations

import shlex
import sys
from pathlib import Path

import typer
from rich.markup import escape
from rich.table import Table

from rgalign.artifacts.registry import ENSEMBLE
from rgalign.cli._app import app, console, int_list


def _ints(text: str | None, what: str) -> tuple[int, ...] | None:
    """None when the option is not given (the bench's defaults), else its integers, each >= 1."""
    return int_list(text, what) if text else None


@app.command("bench")
def bench_cmd(
    target: Path | None = typer.Argument(
        None, help="An EXPORT (rgalign export) or a training RUN folder; leave out with --url alone."),
    out: Path = typer.Option(..., "--out", "-o", help="Folder for bench.json, bench.md and bench.png."),
    url: str | None = typer.Option(
        None, "--url", help="HTTP address of a running Triton server with the `rgalign` ensemble (host:port)."),
    grpc_url: str | None = typer.Option(None, "--grpc-url", help="Its gRPC address (default: the HTTP port + 1)."),
    quick: bool = typer.Option(False, "--quick", help="Few repetitions and shapes: a smoke run in well under a minute."),
    precision: str = typer.Option(
        "int8", "--precision", help="The deployed precision: the in-process pipeline the Triton overhead is taken against."),
    threads: int = typer.Option(0, "--threads", min=0, help="CPU threads for every engine (0: every usable core and 1, the faster counts; 1 with --quick)."),
    compile: bool | None = typer.Option(
        None, "--compile/--no-compile", help="Measure torch.compile (default: yes, except with --quick)."),
    records: Path | None = typer.Option(
        None, "--records", help="Raw requests to use (JSON list or JSON Lines); default: the run's dataset."),
    batches: str | None = typer.Option(None, "--batches", help="Batch sizes, e.g. 1,8,32."),
    seqs: str | None = typer.Option(None, "--seqs", help="Reasoner prompt lengths in tokens, e.g. 32,64,128."),
    concurrency: str | None = typer.Option(None, "--concurrency", help="Served concurrencies, e.g. 1,2,4,8,16."),
    model: str = typer.Option(ENSEMBLE, "--model", help="The ensemble's name on the server."),
) -> None:
    """Benchmark PyTorch, torch.compile and ONNX Runtime in-process, and the served ensemble."""
    from rgalign.bench.runner import run_bench

    b, s, c = _ints(batches, "--batches"), _ints(seqs, "--seqs"), _ints(concurrency, "--concurrency")
    command = " ".join(shlex.quote(a) for a in ["rgalign", *sys.argv[1:]])
    with console.status("benchmarking ...") as status:
        result = run_bench(
            target, out, url=url, grpc_url=grpc_url, quick=quick, precision=precision, threads=threads or None,
            compile=compile, records_file=records, batches=b, seqs=s, concurrencies=c, model=model,
            command=command, progress=lambda step, _state, _msg: status.update(escape(step) + " ..."),
        )

    table = Table(title="SPEC §8 targets (same run)", title_justify="left")
    for col in ("target", "wanted", "measured", "met"):
        table.add_column(col)
    for t in result["targets"]:
        met = "—" if t["met"] is None else ("[green]yes[/]" if t["met"] else "[red]no[/]")
        value = "—" if t["measured"] is None else f"{t['measured']:.3g}"
        table.add_row(escape(t["what"]), t["target"], value, met)
    console.print(table)
    ratios = Table(title="ratios", title_justify="left")
    ratios.add_column("ratio")
    ratios.add_column("value", justify="right")
    for name, value in result["ratios"].items():
        ratios.add_row(name, "—" if value is None else f"{value:.3g}")
    console.print(ratios)
    for note in result["target"].get("notes", []):
        console.print(f"[yellow]note:[/] {escape(note)}", highlight=False, soft_wrap=True)
    console.print(f"wrote [bold]{escape(str(out))}[/]/bench.json, bench.md, bench.png in {result['seconds']:.0f} s",
                  highlight=False)


@app.command("install-perf-analyzer")
def install_perf_analyzer_cmd(
    wheel: Path | None = typer.Option(None, "--wheel", help="A downloaded tritonclient-2.51.0 wheel (default: pip downloads it)."),
    force: bool = typer.Option(False, "--force", help="Install again even if it is there."),
) -> None:
    """Install NVIDIA's perf_analyzer (from the tritonclient 2.51.0 wheel) for `bench` and `tune`."""
    from rgalign.bench import perf_analyzer

    with console.status("installing perf_analyzer ..."):
        binary = perf_analyzer.install(wheel, force=force)
        about = perf_analyzer.version(binary)
    console.print(f"perf_analyzer {about}: [bold]{escape(str(binary))}[/]", highlight=False)
