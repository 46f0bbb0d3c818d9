"""``rgalign export RUN --out EXPORT`` (SPEC §5, §9): thin; calls `rgalign.export.export_run`.

A gate miss or a missing TensorRT is an `ExportError`: `rgalign.cli.main` prints it as one line
and exits non-zero, and an existing EXPORT is left as it was.
"""

from __future__ import annotations

import time
from pathlib import Path

import typer
from rich.markup import escape
from rich.table import Table

from rgalign.cli._app import app, console


@app.command("export")
def export_cmd(
    run: Path = typer.Argument(..., help="Training run folder (what `rgalign train --out` wrote)."),
    out: Path = typer.Option(
        Path("export"), "--out", "-o", help="Export folder to write (replaced only if every gate passes)."
    ),
    precision: str = typer.Option(
        "fp32,fp16,int8", "--precision", help="Comma-separated: fp32, fp16, int8, int4 (weight-only reasoner)."
    ),
    tensorrt: bool = typer.Option(
        False, "--tensorrt", help="Also build TensorRT engines (needs a CUDA GPU and TensorRT)."
    ),
    calibration: str = typer.Option(
        "minmax", "--calibration", help="Static int8 calibration: minmax, percentile or entropy."
    ),
    exporter: str = typer.Option("dynamo", "--exporter", help="dynamo (legacy fallback on failure) or legacy."),
    no_fuse: bool = typer.Option(False, "--no-fuse", help="Skip onnxscript's ONNX Runtime fusions."),
    threads: int = typer.Option(
        0, "--threads", min=0, help="CPU threads for gates and latency (0: the runtime's default)."
    ),
    external_data_mb: float = typer.Option(
        0, "--external-data-mb", min=0,
        help="Write graphs whose weights pass this many MB with ONNX external data (0: protobuf's 2 GB limit).",
    ),
    int8_search_seconds: float = typer.Option(
        900, "--int8-search-seconds", min=0, help="Time budget of the int8 search's sensitivity probes.",
    ),
    int8_methods: str = typer.Option(
        "auto", "--int8-methods",
        help="int8 candidates: auto, or a comma list of dynamic, static, weight-only (auto tries static QDQ only "
             "with --tensorrt or when nothing else passes: it is slower on CPU).",
    ),
) -> None:
    """Export a run to ONNX (fp32/fp16/int8) and TensorRT; every artifact is gated against PyTorch."""
    from rgalign.export import export_run, parse_precisions
    from rgalign.export.precision import CALIBRATION_METHODS
    from rgalign.errors import ExportError

    from rgalign.export.options import parse_int8_methods

    wanted = parse_precisions(precision)  # a bad option fails before any work, as one line
    methods = parse_int8_methods(int8_methods)
    if calibration not in CALIBRATION_METHODS:
        raise ExportError(f"unknown --calibration {calibration!r}; choose from {', '.join(CALIBRATION_METHODS)}")
    if tensorrt:
        from rgalign.export.tensorrt import require_tensorrt

        require_tensorrt()

    t0 = time.perf_counter()
    with console.status("exporting ...") as status:

        def progress(step: str, state: str, message: str) -> None:
            if state == "START":
                status.update(f"{escape(step)} ...")
                return
            colour = {"OK": "green", "FAIL": "red", "SKIPPED": "yellow"}.get(state, "white")
            detail = f"  [dim]{escape(message)}[/]" if message else ""
            console.print(f"[{colour}]{state:7}[/] {escape(step)}{detail}",
                          highlight=False, soft_wrap=True)

        manifest = export_run(
            run, out, precisions=wanted, tensorrt=tensorrt, calibration=calibration, exporter=exporter,
            fuse=not no_fuse, threads=threads or None, progress=progress,
            int8_search_seconds=int8_search_seconds, int8_methods=methods,
            **({"external_data_threshold": int(external_data_mb * 1e6)} if external_data_mb else {}),
        )

    table = Table(title=escape(str(out)), title_justify="left")
    for col in ("artifact", "gate", "size"):
        table.add_column(col, justify="right" if col == "size" else "left")
    for key, art in manifest["artifacts"].items():
        gate = art.get("gate") or {}
        figs = "; ".join(
            f"{name} {f['value']:.4g}"
            for name, f in gate.get("figures", {}).items()
            if "threshold" in f and f["value"] is not None
        )
        size = f"{art.get('bytes_total', art.get('bytes', 0)) / 1e6:.2f} MB" if "bytes" in art else ""
        table.add_row(escape(key), escape(figs), size)
    console.print(table)
    console.print(
        f"exported {escape(str(run))} -> [bold]{escape(str(out))}[/] ({', '.join(manifest['precisions'])}; "
        f"graphs {', '.join(f'{k} {v}' for k, v in manifest['graphs'].items())}) in {time.perf_counter() - t0:.1f} s"
        + (f", peak RSS {manifest['peak_rss_mb'] / 1024:.2f} GiB" if manifest.get("peak_rss_mb") else ""),
        highlight=False, soft_wrap=True,
    )
