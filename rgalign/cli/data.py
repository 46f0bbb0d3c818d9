"""``rgalign data synth OUT`` and ``rgalign data check DATA`` (SPEC §1, §9).

Thin: each command calls one library function and prints a summary. A DataError propagates to
:func:`rgalign.cli.main`, which prints it as one line and exits non-zero.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import typer
from rich.table import Table

from rgalign.cli._app import app, console

data_app = typer.Typer(
    help="Create and check datasets: a synthetic Shopee-like chatbot log, or your own (SPEC §1).",
    no_args_is_help=True,
)
app.add_typer(data_app, name="data", help="Create (synth) and validate (check) datasets.")


@data_app.command("synth")
def synth_cmd(
    out: Path = typer.Argument(..., help="Folder to write (empty, new, or a previous synthetic dataset)."),
    users: int = typer.Option(2000, "--users", min=1, help="Number of users."),
    intents: int = typer.Option(200, "--intents", min=1, help="KB size (at most 222)."),
    requests: int = typer.Option(20000, "--requests", min=3, help="Number of chatbot openings (requests)."),
    seed: int = typer.Option(0, "--seed", help="Random seed; the same seed gives the same bytes."),
    slate_size: int = typer.Option(10, "--slate-size", min=1, help="Intents shown per request."),
) -> None:
    """Write a synthetic dataset whose clicks depend on the meaning of the context."""
    from rgalign.data.synth import synthesize

    t0 = time.perf_counter()
    with console.status(f"synthesizing {requests * slate_size:,} impressions ..."):
        path = synthesize(out, users=users, intents=intents, requests=requests, seed=seed, slate_size=slate_size)
    summary = json.loads((path / "synth.json").read_text())["summary"]
    console.print(
        f"wrote [bold]{path}[/]: {users:,} users, {intents} intents, {requests:,} requests, "
        f"{summary['impressions']:,} impressions, CTR {summary['ctr']:.1%}, "
        f"{summary['requests_with_click']:.0%} of requests with a click ({time.perf_counter() - t0:.1f} s)",
        highlight=False,
        soft_wrap=True,
    )


@data_app.command("check")
def check_cmd(
    data: Path = typer.Argument(..., help="Dataset folder (dataset.yaml + users, intents, impressions)."),
    as_json: bool = typer.Option(False, "--json", help="Print the summary as JSON instead of tables."),
) -> None:
    """Validate a dataset and summarise it; the first problem is reported as one line."""
    from rgalign.data.loader import load_dataset

    t0 = time.perf_counter()
    with console.status(f"loading {data} ..."):
        info = load_dataset(data).describe()
    if as_json:
        console.print_json(json.dumps(info))
        return

    splits = Table(title=f"{info['name']}  ({info['root']})", title_justify="left")
    for col in ("split", "requests", "impressions", "users", "clicks", "CTR", "requests with a click"):
        splits.add_column(col, justify="left" if col == "split" else "right")
    for name, s in info["splits"].items():
        share = s["requests_with_click"] / s["requests"] if s["requests"] else 0.0
        splits.add_row(
            name, f"{s['requests']:,}", f"{s['impressions']:,}", f"{s['users']:,}", f"{s['clicks']:,}",
            f"{s['ctr']:.2%}", f"{s['requests_with_click']:,} ({share:.0%})",
            end_section=name == "test",
        )
    console.print(splits)

    feats = Table(title="features", title_justify="left")
    for col in ("group", "categorical", "numeric", "text"):
        feats.add_column(col)
    for group, kinds in info["features"].items():
        feats.add_row(group, *(", ".join(kinds[k]) or "-" for k in ("categorical", "numeric", "text")))
    console.print(feats)
    files = ", ".join(info["files"].values())
    console.print(
        f"{info['users']:,} users, {info['intents']:,} KB intents; files: {files}; group_key: "
        f"{info['group_key']}; split: {info['split']}; OK ({time.perf_counter() - t0:.1f} s)",
        highlight=False,
        soft_wrap=True,
    )


import_app = typer.Typer(help="Import a public log into the SPEC §1 format.", no_args_is_help=True)
data_app.add_typer(import_app, name="import", help="Import a public log (movielens) as a dataset.")


@import_app.command("movielens")
def import_movielens_cmd(
    src: Path = typer.Argument(..., help="Folder with MovieLens-100K: u.data/u.item/u.user, or RecBole's ml-100k.inter/.item/.user (searched below it too)."),
    out: Path = typer.Argument(..., help="Dataset folder to write (empty, new, or a previous import)."),
) -> None:
    """Convert MovieLens-100K: a request = a user's ratings on one day; label = rating >= 4."""
    from rgalign.data.movielens import import_movielens

    t0 = time.perf_counter()
    with console.status(f"importing {src} ..."):
        path = import_movielens(src, out)
    meta = json.loads((path / "import.json").read_text())
    console.print(
        f"wrote [bold]{path}[/] ({meta['layout']} layout): {meta['users']:,} users, {meta['intents']:,} intents, "
        f"{meta['requests']:,} requests, {meta['impressions']:,} impressions, like rate {meta['like_rate']:.1%}; "
        f"validated ({time.perf_counter() - t0:.1f} s)",
        highlight=False, soft_wrap=True,
    )
