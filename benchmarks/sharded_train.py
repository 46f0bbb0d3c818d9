"""`rgalign train` with and without the log read by shard: wall time and peak RSS per rank, 1 vs 2
ranks, on the 5-million-impression synthetic log of `benchmarks/sharded_data.py` (``make``).

    python benchmarks/sharded_train.py run OUT/data --work /tmp/st      # all four cases, in turn

Each case is ``rgalign train DATA --stages 0 --config CFG --shard-data on|off -q`` (stage 0, the
baseline, with the small budget in `CONFIG`: one epoch at most), in one process or under
``torchrun --nproc-per-node 2``. Every rank runs the CLI in-process through ``worker`` here, which
records its own wall time and peak RSS (``ru_maxrss``, exact: no sampling) when the command returns.
The rows go to ``--json`` (default ``benchmarks/results/sharded_train.json``), with the machine's
load average before and after each case. Run it under ``flock /tmp/rgalign-bigmem.lock``: the
unsharded cases hold the whole log in pandas on every rank.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import shutil
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
# one epoch of the baseline at most (early stopping may end it sooner), in batches of 1,024
# requests: ~340 steps on the 350k training requests of the 5M log; checks once, at the end
CONFIG = {"baseline": {"epochs": 1, "batch_size": 1024, "patience": 1, "min_check_steps": 1}}
CASES = [(1, "off"), (1, "on"), (2, "off"), (2, "on")]


def worker(out_json: Path, argv: list[str]) -> None:
    """Run ``rgalign ARGV`` in this process, then write {rank, wall_s, peak_rss_mb} to ``out_json.RANK``."""
    from rgalign.cli._app import app

    t0 = time.perf_counter()
    code = 0
    try:
        app(argv, standalone_mode=False)
    except SystemExit as e:  # noqa: PERF203 - typer's exit
        code = int(e.code or 0)
    rank = int(os.environ.get("RANK", "0"))
    row = {"rank": rank, "world_size": int(os.environ.get("WORLD_SIZE", "1")), "exit": code,
           "wall_s": time.perf_counter() - t0,
           "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0}  # Linux: KiB
    Path(f"{out_json}.{rank}").write_text(json.dumps(row))
    if code:
        sys.exit(code)


def run(data: Path, work: Path, out_json: Path, cases: list[tuple[int, str]]) -> None:
    work.mkdir(parents=True, exist_ok=True)
    cfg = work / "config.json"
    cfg.write_text(json.dumps(CONFIG))
    results = json.loads(out_json.read_text()) if out_json.is_file() else {}
    results["machine"] = {"cpus": os.cpu_count(), "python": platform.python_version(), "platform": platform.platform()}
    results["config"] = CONFIG
    results["data"] = str(data)
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]))
    for ranks, mode in cases:
        label = f"{ranks}rank_{mode}"
        out = work / label
        shutil.rmtree(out, ignore_errors=True)
        rows = work / f"{label}.rows"
        for old in work.glob(f"{label}.rows.*"):
            old.unlink()
        argv = ["train", str(data), "--out", str(out), "--stages", "0", "--config", str(cfg), "--shard-data", mode, "-q"]
        me = [str(Path(__file__).resolve()), "worker", str(rows), "--", *argv]
        cmd = [sys.executable, *me] if ranks == 1 else [
            sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", str(ranks), "--master-port", "29655", *me]
        load_before = os.getloadavg()
        t0 = time.perf_counter()
        proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
        wall = time.perf_counter() - t0
        per_rank = [json.loads(p.read_text()) for p in sorted(work.glob(f"{label}.rows.*"))]
        metrics = json.loads((out / "metrics.json").read_text()) if (out / "metrics.json").is_file() else {}
        results[label] = {
            "ranks": ranks, "shard_data": mode, "command": " ".join(cmd), "exit": proc.returncode, "wall_s": wall,
            "per_rank": per_rank, "peak_rss_mb_max_rank": max((r["peak_rss_mb"] for r in per_rank), default=None),
            "peak_rss_mb_sum": sum(r["peak_rss_mb"] for r in per_rank),
            "loadavg_before": load_before, "loadavg_after": os.getloadavg(),
            "test_baseline": metrics.get("test", {}).get("baseline"),
            "stage0": metrics.get("stages", {}).get("0-baseline"),
        }
        if proc.returncode:
            results[label]["stderr_tail"] = proc.stderr[-3000:]
        out_json.parent.mkdir(parents=True, exist_ok=True)
        out_json.write_text(json.dumps(results, indent=1, default=str) + "\n")
        print(f"{label}: exit {proc.returncode}, {wall:.0f} s, peak RSS per rank "
              + ", ".join(f"{r['peak_rss_mb']:.0f} MB" for r in per_rank), flush=True)


def main() -> None:
    if len(sys.argv) > 2 and sys.argv[1] == "worker":
        sep = sys.argv.index("--")
        worker(Path(sys.argv[2]), sys.argv[sep + 1 :])
        return
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    r = sub.add_parser("run")
    r.add_argument("data", type=Path)
    r.add_argument("--work", type=Path, required=True)
    r.add_argument("--cases", default=",".join(f"{n}:{m}" for n, m in CASES), help="e.g. 1:off,2:on")
    r.add_argument("--json", type=Path, default=Path(__file__).parent / "results" / "sharded_train.json")
    args = ap.parse_args()
    cases = [(int(c.split(":")[0]), c.split(":")[1]) for c in args.cases.split(",")]
    run(args.data, args.work, args.json, cases)


if __name__ == "__main__":
    main()
