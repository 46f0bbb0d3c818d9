"""The ablation on a real public log (MovieLens-100K) and on the synthetic data, 3 seeds each,
default config: issue 12's acceptance table.

    pip download recbole==1.2.1 --no-deps     (the wheel carries ml-100k in RecBole's atomic format)
    rgalign data import movielens WHEEL_DIR DATA
    rgalign train DATA --out RUN --config seed.yaml    (seed 0, 1, 2; otherwise the defaults)
    -> OUT/realdata.json (every run's metrics, run time) and OUT/realdata.md (per seed and mean)

Usage (from the repository root; a run is 5-6 min on a quiet 2-core machine, 27-49 min measured
with other jobs sharing it; peak memory 4.3 GB):

    .venv/bin/python benchmarks/realdata.py                       # MovieLens and synthetic, 3 seeds
    .venv/bin/python benchmarks/realdata.py --datasets movielens --seeds 0
    .venv/bin/python benchmarks/realdata.py --table-only          # rebuild the tables from WORK
    .venv/bin/python benchmarks/realdata.py --config textprior.yaml --work runs/realdata-textprior \
        --out benchmarks/results/realdata-textprior             # TrainConfig keys over the defaults

Each step is the `rgalign` command a user would run; a finished run (RUN/metrics.json) is not
re-trained. The data is fetched and imported into WORK (never committed).
"""

from __future__ import annotations

import argparse
import json
import math
import shlex
import subprocess
import sys
import time
from pathlib import Path

MODELS = ("popularity", "baseline", "qe", "qe_rga")
LABELS = {"popularity": "item popularity", "baseline": "AutoInt+MoE baseline (stage 0)",
          "qe": "QE ranker (stage 2)", "qe_rga": "QE + RGA (stage 6)"}
COLUMNS = ("gauc", "error_rate", "auc", "logloss", "recall@3", "gauc_seen_intents", "gauc_cold_intents",
           "gauc_seen_users", "gauc_cold_users")


REPO = Path(__file__).resolve().parents[1]


def rgalign(*args: str) -> None:
    """``rgalign ARGS`` with this repository's code (``python -m rgalign``, the repository first on
    the path), whatever copy of the package the environment has installed."""
    import os

    cmd = [sys.executable, "-m", "rgalign", *args]
    print("$ rgalign", " ".join(shlex.quote(a) for a in args), flush=True)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]).rstrip(os.pathsep)}
    subprocess.run(cmd, check=True, env=env)


def fetch_movielens(work: Path) -> Path:
    """The imported dataset folder (downloads the recbole wheel with pip, once)."""
    data = work / "movielens-100k"
    if (data / "dataset.yaml").is_file():
        return data
    wheels = work / "recbole-wheel"
    if not list(wheels.glob("recbole-1.2.1-*.whl")):
        cmd = [sys.executable, "-m", "pip", "download", "recbole==1.2.1", "--no-deps", "-d", str(wheels)]
        print("$", " ".join(cmd), flush=True)
        subprocess.run(cmd, check=True)
    import zipfile

    src = work / "recbole-src"
    with zipfile.ZipFile(next(wheels.glob("recbole-1.2.1-*.whl"))) as z:
        z.extractall(src, [n for n in z.namelist() if "dataset_example/ml-100k/ml-100k." in n])
    rgalign("data", "import", "movielens", str(src), str(data))
    return data


def synthetic(work: Path) -> Path:
    data = work / "synthetic"
    if not (data / "dataset.yaml").is_file():
        rgalign("data", "synth", str(data), "--seed", "0")
    return data


def train(data: Path, run: Path, seed: int, overrides: dict | None = None) -> dict:
    """metrics.json of a run with ``seed`` and the config ``overrides`` (TrainConfig keys; none:
    the defaults), trained unless finished, with its wall time."""
    timing = run / "wall_seconds.json"
    if not (run / "metrics.json").is_file():
        import yaml

        run.parent.mkdir(parents=True, exist_ok=True)
        cfg = run.parent / f"seed{seed}.yaml"
        cfg.write_text(yaml.safe_dump({**(overrides or {}), "seed": seed}, sort_keys=True))
        t0 = time.perf_counter()
        rgalign("train", str(data), "--out", str(run), "--config", str(cfg))
        timing.write_text(json.dumps({"seconds": time.perf_counter() - t0}))
    out = json.loads((run / "metrics.json").read_text())
    if timing.is_file():
        out["wall_seconds"] = json.loads(timing.read_text())["seconds"]
    else:  # trained by another invocation: from run.json's creation to metrics.json's writing
        import calendar

        created = json.loads((run / "run.json").read_text())["created"]
        start = calendar.timegm(time.strptime(created, "%Y-%m-%dT%H:%M:%SZ"))
        out["wall_seconds"] = (run / "metrics.json").stat().st_mtime - start
    return out


def _row(metrics: dict, model: str) -> dict:
    return metrics["popularity"] if model == "popularity" else metrics["test"].get(model, {})


def _fmt(x) -> str:
    return "–" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{x:.4f}"


def table(name: str, runs: dict[int, dict], config: str = "default config") -> str:
    """Markdown: per seed (GAUC, error_rate, time) and the mean of every column."""
    seeds = sorted(runs)
    lines = [f"### {name}: test split, {len(seeds)} seed(s), {config}", "",
             "| model | " + " | ".join(f"GAUC s{s}" for s in seeds) + " | " + " | ".join(f"mean {c}" for c in COLUMNS) + " |",
             "|---|" + "---:|" * (len(seeds) + len(COLUMNS))]
    for m in MODELS:
        per = [_row(runs[s], m).get("gauc") for s in seeds]
        means = []
        for c in COLUMNS:
            vals = [_row(runs[s], m).get(c) for s in seeds]
            vals = [v for v in vals if v is not None and not math.isnan(v)]
            means.append(sum(vals) / len(vals) if vals else None)
        lines.append(f"| {LABELS[m]} | " + " | ".join(_fmt(v) for v in per) + " | " + " | ".join(_fmt(v) for v in means) + " |")
    shares = {k: v for k, v in runs[seeds[0]]["test"]["baseline"].items() if k.startswith("share_")}
    times = [runs[s].get("wall_seconds") for s in seeds]
    lines += ["", "Test impressions: " + ", ".join(f"{k[6:].replace('_', ' ')} {100 * v:.1f}%" for k, v in shares.items())
              + ". Run time (train + evaluation, wall): "
              + ", ".join(f"seed {s} {t / 60:.1f} min" for s, t in zip(seeds, times) if t) + "."]
    checks = []
    for s in seeds:
        g = {m: _row(runs[s], m).get("gauc", math.nan) for m in MODELS}
        e = {m: _row(runs[s], m).get("error_rate", math.nan) for m in MODELS}
        checks.append(
            f"seed {s}: each model >= popularity {all(g[m] >= g['popularity'] for m in MODELS[1:])}, "
            f"QE+RGA > QE > baseline {g['qe_rga'] > g['qe'] > g['baseline']}, "
            f"QE+RGA error_rate < baseline {e['qe_rga'] < e['baseline']}, "
            f"QE+RGA - baseline GAUC {100 * (g['qe_rga'] - g['baseline']):+.2f} pt, "
            f"error_rate {100 * (e['qe_rga'] - e['baseline']) / e['baseline']:+.1f}%")
    lines += [""] + [f"- {c}" for c in checks]
    dpo = [runs[s]["stages"].get("4-dpo", {}).get("held_out") for s in seeds]
    kept = [runs[s]["stages"].get("4-dpo", {}).get("dpo_kept") for s in seeds]
    if any(dpo):
        lines += ["", "DPO, held-out pairs (loss vs ln 2 = 0.693, reward accuracy; whether stage 4 kept the policy): " + ", ".join(
            f"seed {s} {d['loss']:.3f} / {d['reward_accuracy']:.2f}" + ("" if k is None else " kept" if k else " not kept")
            for s, d, k in zip(seeds, dpo, kept) if d and "loss" in d) + "."]
    return "\n".join(lines) + "\n"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--datasets", default="movielens,synthetic")
    ap.add_argument("--seeds", default="0,1,2")
    ap.add_argument("--work", type=Path, default=Path("runs/realdata"))
    ap.add_argument("--out", type=Path, default=Path("benchmarks/results/realdata"))
    ap.add_argument("--table-only", action="store_true", help="tables from the finished runs in WORK")
    ap.add_argument("--stored", type=Path, default=None,
                    help="an earlier realdata.json: its seeds that WORK lacks join the tables (same code only: "
                         "a run is not re-trained, so a stored seed is only comparable if the code and defaults "
                         "did not change since)")
    ap.add_argument("--config", type=Path, default=None,
                    help="a YAML file of TrainConfig keys over the defaults for every run (its seed is "
                         "--seeds'); use a --work of its own: a finished run is never re-trained")
    args = ap.parse_args()
    seeds = [int(s) for s in args.seeds.split(",")]
    overrides: dict = {}
    if args.config is not None:
        import yaml

        overrides = yaml.safe_load(args.config.read_text()) or {}
        if not isinstance(overrides, dict):
            ap.error(f"--config {args.config}: a mapping of TrainConfig keys, got {type(overrides).__name__}")
        overrides.pop("seed", None)
    config = ("config " + ", ".join(f"{k}: {v}" for k, v in sorted(overrides.items()))) if overrides else "default config"
    results: dict[str, dict[int, dict]] = {}
    for name in args.datasets.split(","):
        if args.table_only:
            runs = {s: args.work / "runs" / name / f"seed{s}" for s in seeds}
            results[name] = {s: train(Path("-"), r, s) for s, r in runs.items() if (r / "metrics.json").is_file()}
            continue
        data = fetch_movielens(args.work) if name == "movielens" else synthetic(args.work)
        results[name] = {s: train(data, args.work / "runs" / name / f"seed{s}", s, overrides) for s in seeds}
    if args.stored is not None:
        for name, runs in json.loads(args.stored.read_text()).items():
            for s, r in runs.items():
                if name in results and int(s) not in results[name]:
                    results[name][int(s)] = {"test": r["test"], "popularity": r["popularity"], "wall_seconds": r.get("wall_seconds"),
                                             "stages": {"4-dpo": {"held_out": r["dpo_held_out"], "dpo_kept": r.get("dpo_kept")}}
                                             if r.get("dpo_held_out") else {}}
            if name in results:
                results[name] = dict(sorted(results[name].items()))
    args.out.mkdir(parents=True, exist_ok=True)
    md = "\n".join(table(n, r, config) for n, r in results.items() if r)
    (args.out / "realdata.md").write_text(md)
    keep = {"_config": overrides} if overrides else {}
    keep |= {n: {s: {"test": r["test"], "popularity": r["popularity"], "wall_seconds": r.get("wall_seconds"),
                    "dpo_held_out": r["stages"].get("4-dpo", {}).get("held_out"),
                    "dpo_kept": r["stages"].get("4-dpo", {}).get("dpo_kept")} for s, r in runs.items()}
            for n, runs in results.items()}
    (args.out / "realdata.json").write_text(json.dumps(keep, indent=1, sort_keys=True) + "\n")
    print(md)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
