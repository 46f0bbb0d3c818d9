"""``rgalign train DATA --out RUN`` and ``rgalign eval RUN DATA`` (SPEC §3)."""

from __future__ import annotations

import json
from pathlib import Path

import typer
from rich.table import Table

from rgalign.cli._app import app, console

METRIC_KEYS = ("auc", "gauc", "logloss", "error_rate")


def _read_config(path: Path | None) -> dict | None:
    """The --config file (YAML or JSON), read here at the CLI boundary only."""
    if path is None:
        return None
    from rgalign.errors import ConfigError

    if not path.is_file():
        raise ConfigError(f"--config {path}: no such file")
    import yaml

    text = path.read_text()
    try:
        if path.suffix == ".json":
            return json.loads(text)
        return yaml.safe_load(text) or {}
    except (ValueError, yaml.YAMLError) as e:
        raise ConfigError(f"--config {path}: cannot parse: {e}") from None


def ordering_line(result: dict) -> str | None:
    """One line: the test GAUC of popularity and each model, best last, and whether the paper's
    ordering holds (QE+RGA > QE > baseline >= popularity)."""
    test, pop = result.get("test", {}), result.get("popularity")
    names = [m for m in ("baseline", "qe", "qe_rga") if m in test]
    if not names:
        return None
    g = {m: test[m]["gauc"] for m in names}
    if pop:
        g = {"popularity": pop["gauc"], **g}
    ranked = sorted(g.items(), key=lambda kv: kv[1])
    chain = f"{ranked[0][0]} {ranked[0][1]:.4f}" + "".join(
        f" {'=' if v == prev else '<'} {m} {v:.4f}" for (_, prev), (m, v) in zip(ranked, ranked[1:]))
    want = [m for m in ("popularity", "baseline", "qe", "qe_rga") if m in g]
    holds = all(g[a] < g[b] or (a == "popularity" and g[a] <= g[b]) for a, b in zip(want, want[1:]))
    order = " > ".join(reversed([m for m in want if m != "popularity"])) + (" >= popularity" if "popularity" in want else "")
    return f"test GAUC: {chain}; ordering {order}: {'holds' if holds else 'does not hold'}"


def print_metrics(result: dict, note: str | None = None) -> None:
    """The ablation table: one row per model, deltas relative to the baseline, and the item
    popularity reference (so a user sees at a glance whether the models beat it); then GAUC by
    cohort (seen / cold intents and users)."""
    test = result.get("test", {})
    if not test:
        console.print("no finished ranker to evaluate yet")
        return
    first = next(iter(test.values()))
    head = [k for k in ("auc", "gauc", "logloss", "error_rate") if k in first]
    keys = head + sorted(k for k in first if k not in head and not k.startswith(("share_", "gauc_")))
    cohorts = [f"gauc_{c}" for c in ("seen_intents", "cold_intents", "seen_users", "cold_users") if f"gauc_{c}" in first]
    rel = result.get("relative_to_baseline", {})
    pop = result.get("popularity")
    rows = ([("popularity (reference)", pop)] if pop else []) + list(test.items())
    for title, cols in (("test split", keys), ("test GAUC by cohort (seen = in the training split)", cohorts)):
        if not cols:
            continue
        table = Table(title=title, title_justify="left")
        table.add_column("model")
        for k in cols:
            table.add_column(k.removeprefix("gauc_").replace("_", " "), justify="right")
        for name, m in rows:
            table.add_row(name, *[f"{m.get(k, float('nan')):.4f}" for k in cols])
            if name in rel and cols is keys:
                table.add_row("  vs baseline", *[f"{100 * rel[name].get(k, float('nan')):+.2f}%" for k in cols],
                              style="dim")
        console.print(table)
    line = ordering_line(result)
    if line:
        console.print(line, highlight=False)
    if note:
        console.print(note, highlight=False)
    shares = {c.removeprefix("gauc_"): first[f"share_{c.removeprefix('gauc_')}"] for c in cohorts
              if f"share_{c.removeprefix('gauc_')}" in first}
    if shares:
        console.print("test impressions: " + ", ".join(f"{v:.0%} {k.replace('_', ' ')}" for k, v in shares.items()),
                      highlight=False)


@app.command("train")
def train_cmd(
    data: Path = typer.Argument(..., help="Dataset folder (SPEC §1)."),
    out: Path = typer.Option(..., "--out", "-o", help="Run folder; an existing one is resumed after its last finished stage."),
    config: Path = typer.Option(None, "--config", help="YAML/JSON overriding any TrainConfig keys."),
    stages: str = typer.Option("0-6", "--stages", help="Stages to run, e.g. 0-6, 0-2 or 0,2 (SPEC §3)."),
    rounds: int = typer.Option(1, "--rounds", min=1, help="Rounds of the closed loop: stages 3-6 run this many times."),
    backbone: str = typer.Option(None, "--backbone", help="Reasoner backbone: a local Hugging Face causal-LM folder."),
    lora: str = typer.Option(
        None, "--lora",
        help="auto|on|off: LoRA adapters on the reasoner in stages 1, 3-5, merged at each stage's end (auto: on for "
             "a --backbone, off for the built-in one; rank, alpha, targets: the config's finetune section).",
    ),
    seed: int = typer.Option(None, "--seed", help="Random seed (overrides the config's)."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress bars."),
    dist: str = typer.Option("auto", "--dist", help="Under torchrun: how the reasoner's training (stages 1, 3, 4, 5) spreads "
                             "over the processes: ddp (replicas), fsdp (FSDP2 shards), auto (fsdp from 100M parameters)."),
    checkpoint_every: int = typer.Option(0, "--checkpoint-every", min=0, help="Write a resumable state of the "
                                         "reasoner's stages 1, 3, 4 and 5 every N steps (it resumes on any number of processes; with --shard-data, on the same number only)."),
    shard_data: str = typer.Option("auto", "--shard-data", help="auto|on|off: each process reads only its shard of "
                                   "the impressions, encoders fitted by a streamed pass (auto: on from 2M impressions)."),
) -> None:
    """Train the baseline, the reasoner, the QE ranker and the RGA alignment stage by stage; writes RUN/metrics.json."""
    from dataclasses import replace

    from rgalign.training.config import TrainConfig
    from rgalign.training.trainer import parse_stages, train

    cfg = TrainConfig.from_dict(_read_config(config)).with_backbone(backbone).with_lora(lora)
    if seed is not None:
        cfg = replace(cfg, seed=seed)
    result = train(data, out, cfg, parse_stages(stages), rounds=rounds, log=lambda m: console.print(m, highlight=False), quiet=quiet,
                   dist_strategy=dist, checkpoint_every=checkpoint_every, shard_data=shard_data)
    if result:
        print_metrics(result)
        console.print(f"wrote {out / 'metrics.json'}")


@app.command("eval")
def eval_cmd(
    run: Path = typer.Argument(..., help="Run folder written by `rgalign train`."),
    data: Path = typer.Argument(..., help="The dataset the run was trained on."),
) -> None:
    """Recompute RUN/metrics.json (test split) from the run's checkpoints."""
    from rgalign.training.trainer import evaluate

    result = evaluate(run, data, log=lambda m: console.print(m, highlight=False))
    print_metrics(result)
    console.print(f"wrote {run / 'metrics.json'}")


@app.command("report")
def report_cmd(
    run: Path = typer.Argument(..., help="Run folder written by `rgalign train`."),
    out: Path = typer.Option(None, "--out", "-o", help="Report folder (default RUN/report)."),
) -> None:
    """The paper-style ablation of a run: Markdown table, metric-per-stage chart, loss curves."""
    from rgalign.training.report import write_report

    folder = write_report(run, out)
    console.print((folder / "report.md").read_text(), markup=False, highlight=False, soft_wrap=True)
    console.print(f"wrote {folder}/report.md, stages.png, losses.png and losses/*.csv")
