"""Reproduce the reference benchmark committed under ``benchmarks/results/reference/``.

    EXPORT --deploy (python backend, --precision)--> REPO --serve (free ports)--> server
    rgalign bench EXPORT --url <server> --out OUT          (full run: every engine, shape, level)

Usage (from the repository root, on a quiet machine: nothing else running):

    .venv/bin/python benchmarks/run_reference.py --export quickstart/export
    .venv/bin/python benchmarks/run_reference.py --run RUN        # exports RUN first (WORK/export)

Options: ``--out`` (default benchmarks/results/reference), ``--work`` (default runs/reference:
where the export and the Triton repository go), ``--precision`` (int8: what is deployed, and the
in-process pipeline the Triton overhead is taken against), ``--quick``, ``--no-serve`` (in-process
only, e.g. without the serve extra). Each step is the `rgalign` command or library call a user
would run; nothing here measures anything itself.
"""

from __future__ import annotations

import argparse
import shlex
import subprocess
import sys
from pathlib import Path


def rgalign(*args: str) -> None:
    cmd = [str(Path(sys.executable).parent / "rgalign"), *args]
    print("$", " ".join(shlex.quote(a) for a in cmd), flush=True)
    subprocess.run(cmd, check=True)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    src = ap.add_mutually_exclusive_group(required=True)
    src.add_argument("--export", type=Path, help="an export folder (rgalign export)")
    src.add_argument("--run", type=Path, help="a training run to export first")
    ap.add_argument("--out", type=Path, default=Path("benchmarks/results/reference"))
    ap.add_argument("--work", type=Path, default=Path("runs/reference"))
    ap.add_argument("--precision", default="int8")
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--no-serve", action="store_true")
    args = ap.parse_args()

    export = args.export
    if export is None:
        export = args.work / "export"
        rgalign("export", str(args.run), "--out", str(export))

    bench = ["bench", str(export), "--out", str(args.out), "--precision", args.precision]
    if args.quick:
        bench.append("--quick")
    if args.no_serve:
        rgalign(*bench)
        return 0

    repo = args.work / "repo"
    rgalign("deploy", str(export), "--out", str(repo), "--precision", args.precision)
    from rgalign.serve.server import TritonServer

    with TritonServer(repo) as server:  # free ports; stopped on exit, also on error
        rgalign(*bench, "--url", server.http_url, "--grpc-url", server.grpc_url)
    return 0


if __name__ == "__main__":
    sys.exit(main())
