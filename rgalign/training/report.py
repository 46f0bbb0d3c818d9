"""``rgalign report RUN``: the paper-style ablation of a run, from its metrics.json and stage folders.

Writes (default ``RUN/report/``):

    report.md      the ablation table (baseline, QE, QE+RGA with deltas to the baseline) and one
                   row per finished stage, with its time
    stages.png     GAUC, AUC, error rate and logloss on the test split, stage by stage
    losses/*.csv   each stage's per-step losses (a copy of ``stages/<stage>/losses.csv``)
    losses.png     those curves, one panel per stage

Nothing is recomputed here: `rgalign eval RUN DATA` refreshes metrics.json first if needed.
"""

from __future__ import annotations

import csv
import io
import math
from pathlib import Path
from typing import Any

from rgalign.artifacts.run import RunDir
from rgalign.errors import TrainError
from rgalign.io import atomic_dir, read_json, write_text_atomic

MODEL_LABELS = {
    "baseline": "AutoInt+MoE (baseline)", "qe": "QE ranker (stage 2)",
    "qe_refit": "QE re-fit as in stage 6, without RGA (control)", "qe_rga": "QE + RGA (stage 6)",
}
# metrics where lower is better: the sign of an improvement flips
LOWER_IS_BETTER = {"logloss", "error_rate"}
PLOTTED = ("gauc", "auc", "error_rate", "logloss")
NOT_LOSSES = {"epoch", "step", "valid_gauc"}


def _metric_order(keys: list[str]) -> list[str]:
    """SPEC §4's order (metrics.json is written with sorted keys)."""
    head = ["auc", "gauc", "logloss", "error_rate"]
    at_k = [p for prefix in ("recall@", "ndcg@", "hitrate@") for p in keys if p.startswith(prefix)]
    return [k for k in head if k in keys] + at_k + [k for k in keys if k not in head and k not in at_k]


def _stage_order(labels: list[str]) -> list[str]:
    """Training order: round, then stage (``3-rg-sft-r1`` is round 1)."""
    def key(label: str) -> tuple[int, int]:
        head, _, rest = label.partition("-")
        tail = rest.rsplit("-r", 1)
        round_ = int(tail[1]) if len(tail) == 2 and tail[1].isdigit() else 0
        return round_, int(head) if head.isdigit() else 99
    return sorted(labels, key=key)


def _fmt(x: float) -> str:
    return "n/a" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{x:.4f}"


def ablation_markdown(metrics: dict[str, Any], title: str = "") -> str:
    """The Markdown tables of one run's metrics.json."""
    test = metrics.get("test", {})
    if not test:
        raise TrainError("metrics.json has no test metrics: no ranker has finished training yet")
    keys = [k for k in _metric_order(list(next(iter(test.values())))) if not k.startswith("share_")]
    lines = [f"# {title}".rstrip() if title else "# RGAlign-Rec ablation", "",
             "Test split. Relative deltas are against the baseline; for logloss and error_rate lower is better.", "",
             "| model | " + " | ".join(keys) + " |", "|---|" + "---:|" * len(keys)]
    rel = metrics.get("relative_to_baseline", {})
    pop = metrics.get("popularity")
    if pop:
        lines.append("| *item popularity (reference)* | " + " | ".join(_fmt(pop.get(k)) for k in keys) + " |")
    for name in sorted(test, key=lambda m: list(MODEL_LABELS).index(m) if m in MODEL_LABELS else 99):
        m = test[name]
        lines.append(f"| {MODEL_LABELS.get(name, name)} | " + " | ".join(_fmt(m.get(k)) for k in keys) + " |")
        if name in rel:
            lines.append("| &nbsp;&nbsp;vs baseline | " + " | ".join(f"{100 * rel[name].get(k, math.nan):+.2f}%"
                                                                     for k in keys) + " |")
    shares = {k[len("share_"):]: v for k, v in next(iter(test.values())).items() if k.startswith("share_")}
    if shares:
        lines += ["", "Test impressions by cohort (gauc_<cohort> above; seen = in the training split): "
                  + ", ".join(f"{k.replace('_', ' ')} {100 * v:.1f}%" for k, v in shares.items()) + "."]
    per_stage = metrics.get("per_stage", {})
    if per_stage:
        stages = metrics.get("stages", {})
        lines += ["", "## Stage by stage", "",
                  "Stages 3-5 are read through that round's reward model (the QE ranker the stage was aligned "
                  "against); stages 2 and 6 with their own ranker.", "",
                  "| stage | " + " | ".join(keys) + " | seconds |", "|---|" + "---:|" * (len(keys) + 1)]
        for label in _stage_order(list(per_stage)):
            m = per_stage[label]
            secs = stages.get(label, {}).get("seconds")
            lines.append(f"| {label} | " + " | ".join(_fmt(m.get(k)) for k in keys) + f" | {_fmt_secs(secs)} |")
    return "\n".join(lines) + "\n"


def _fmt_secs(s: float | None) -> str:
    return "" if s is None else f"{s:.0f}"


def _read_losses(path: Path) -> dict[str, list[float]]:
    text = path.read_text() if path.is_file() else ""
    rows = list(csv.DictReader(io.StringIO(text)))
    if not rows:
        return {}
    cols = [c for c in rows[0] if c not in NOT_LOSSES]
    return {c: [float(r[c]) for r in rows if r.get(c) not in (None, "", "nan")] for c in cols}


def _plot_stages(per_stage: dict[str, dict[str, float]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    labels = _stage_order(list(per_stage))
    fig, axes = plt.subplots(2, 2, figsize=(11, 7))
    for ax, key in zip(axes.flat, PLOTTED):
        ys = [per_stage[s].get(key, math.nan) for s in labels]
        ax.plot(range(len(labels)), ys, marker="o")
        ax.set_xticks(range(len(labels)), labels, rotation=35, ha="right", fontsize=8)
        ax.set_title(f"test {key}" + (" (lower is better)" if key in LOWER_IS_BETTER else ""))
        ax.grid(alpha=0.3)
    fig.suptitle("RGAlign-Rec: test metrics stage by stage")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _plot_losses(curves: dict[str, dict[str, list[float]]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    n = max(1, len(curves))
    cols = min(3, n)
    rows = math.ceil(n / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(5 * cols, 3.2 * rows), squeeze=False)
    for ax, (label, series) in zip(axes.flat, curves.items()):
        for name, ys in series.items():
            if ys:
                ax.plot(ys, label=name, linewidth=1)
        ax.set_title(label)
        ax.set_xlabel("step")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    for ax in list(axes.flat)[len(curves):]:
        ax.axis("off")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def write_report(run_dir: str | Path, out: str | Path | None = None) -> Path:
    """Write the report of ``run_dir`` into ``out`` (default ``RUN/report``), atomically; return it."""
    run = RunDir(Path(run_dir))
    if not run.metrics_json.is_file():
        raise TrainError(f"{run.root}: no metrics.json; train with `rgalign train DATA --out {run.root}` "
                         f"or recompute it with `rgalign eval {run.root} DATA`")
    metrics = read_json(run.metrics_json)
    out = Path(out) if out is not None else run.root / "report"
    seed = read_json(run.run_json).get("seed") if run.run_json.is_file() else None
    title = f"RGAlign-Rec ablation: {run.root.name}" + (f" (seed {seed})" if seed is not None else "")
    markdown = ablation_markdown(metrics, title)
    curves: dict[str, dict[str, list[float]]] = {}
    for label in _stage_order(list(metrics.get("stages", {}))):
        src = run.root / "stages" / label / "losses.csv"
        if src.is_file():
            curves[label] = _read_losses(src)
    with atomic_dir(out) as d:
        write_text_atomic(d / "report.md", markdown)
        if metrics.get("per_stage"):
            _plot_stages(metrics["per_stage"], d / "stages.png")
        (d / "losses").mkdir()
        for label in curves:
            write_text_atomic(d / "losses" / f"{label}.csv", (run.root / "stages" / label / "losses.csv").read_text())
        if curves:
            _plot_losses(curves, d / "losses.png")
    return out
