"""Load and validate a dataset folder (SPEC §1).

::

    DATA/
      dataset.yaml          schema (rgalign.data.schema)
      users.parquet         user_id + user feature columns
      intents.parquet       intent_id, text, optional category: the chatbot's KB, in KB order
      impressions.parquet   request_id, user_id, intent_id, label, ts + context feature columns

``.csv`` files with the same stems are read when there is no ``.parquet``. Loading checks
everything a model would otherwise trip on later, and stops at the first problem with ONE line
naming the file, the column and the first offending row::

    impressions.parquet: column 'label' row 17: value 2 is not 0/1

All checks are vectorised (pandas / numpy): a million impressions load in a few seconds, with
memory linear in the data.

After loading, ids, categorical and text columns are strings (integer ids read as ``"42"``),
numeric features are int64 or float64 as in the file (never NaN), ``label`` is int8, ``ts``
int64, and ``impressions`` has a ``split`` column (``train`` / ``valid`` / ``test``, whole
requests at a time).

Example::

    >>> ds = load_dataset("data/synth")                       # doctest: +SKIP
    >>> ds.intent_ids[:2], ds.impressions.split.value_counts()  # doctest: +SKIP
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from rgalign.data.schema import SPLITS, DatasetSchema, at
from rgalign.data.splits import assign_splits, request_codes
from rgalign.errors import DataError

TABLES = ("users", "intents", "impressions")
EXTENSIONS = (".parquet", ".csv")

# pandas' default NA tokens, applied to numeric columns of a CSV only: in a string column "NA" is
# a region code and "None" a word, not a missing value.
_NA_TOKENS = [
    "", "#N/A", "#N/A N/A", "#NA", "-1.#IND", "-1.#QNAN", "-NaN", "-nan", "1.#IND", "1.#QNAN",
    "<NA>", "N/A", "NA", "NULL", "NaN", "None", "n/a", "nan", "null",
]


@dataclass(eq=False)  # frames do not compare with ==; identity is the useful equality here
class Dataset:
    """A validated dataset. Build it with :func:`load_dataset` or :meth:`Dataset.from_frames`.

    ``users``: one row per user (``user_id`` + user features). ``intents``: one row per KB
    intent (``intent_id``, ``text``, maybe ``category``), in KB order. ``impressions``: one row
    per (request, intent shown): ``request_id, user_id, intent_id, label, ts`` + context features
    + ``split``. ``sources`` maps each table to the file it came from (for messages).
    """

    root: Path | None
    schema: DatasetSchema
    users: pd.DataFrame
    intents: pd.DataFrame
    impressions: pd.DataFrame
    sources: dict[str, str] = field(default_factory=lambda: {t: t for t in TABLES})

    # ----------------------------------------------------------------- the KB
    @property
    def intent_ids(self) -> list[str]:
        """KB intent ids, in KB order (the order of the intents file)."""
        return self.intents["intent_id"].tolist()

    @property
    def intent_texts(self) -> list[str]:
        """KB intent texts, aligned with :attr:`intent_ids`."""
        return self.intents["text"].tolist()

    # ----------------------------------------------------------------- views
    def split_impressions(self, split: str) -> pd.DataFrame:
        """The impressions of one split (``train`` / ``valid`` / ``test``)."""
        _check_split_name(split)
        return self.impressions[self.impressions["split"] == split]

    def request_table(self, split: str | None = None) -> pd.DataFrame:
        """One row per request, in order of first appearance.

        Columns: ``request_id, user_id, ts`` (the request's earliest ts), the user features
        (joined from ``users``) then the context features, in schema order.
        """
        imp = self.impressions if split is None else self.split_impressions(split)
        table, _, _ = request_frame(self, imp)
        return table

    def describe(self) -> dict[str, Any]:
        """Counts per split (requests, impressions, users, clicks, CTR) and features by kind."""
        imp = self.impressions
        codes, first = request_codes(imp["request_id"])
        label = imp["label"].to_numpy()
        req_clicks = np.bincount(codes, weights=label, minlength=len(first))
        req_split = imp["split"].to_numpy()[first]
        splits: dict[str, dict[str, Any]] = {}
        for name in (*SPLITS, "all"):
            rmask = np.ones(len(first), bool) if name == "all" else req_split == name
            imask = rmask[codes]
            n_imp = int(imask.sum())
            clicks = int(label[imask].sum())
            splits[name] = {
                "requests": int(rmask.sum()),
                "impressions": n_imp,
                "users": int(imp["user_id"][imask].nunique()),
                "clicks": clicks,
                "ctr": clicks / n_imp if n_imp else 0.0,
                "requests_with_click": int((req_clicks[rmask] > 0).sum()),
            }
        s = self.schema
        return {
            "name": s.name,
            "root": str(self.root) if self.root is not None else None,
            "files": dict(self.sources),
            "users": len(self.users),
            "intents": len(self.intents),
            "splits": splits,
            "features": {
                "user": {"categorical": list(s.user_categorical), "numeric": list(s.user_numeric), "text": list(s.user_text)},
                "context": {"categorical": list(s.context_categorical), "numeric": list(s.context_numeric), "text": list(s.context_text)},
            },
            "group_key": s.group_key,
            "split": s.split.to_dict(),
        }

    # ----------------------------------------------------------------- construction
    @classmethod
    def from_frames(
        cls,
        schema: DatasetSchema,
        users: pd.DataFrame,
        intents: pd.DataFrame,
        impressions: pd.DataFrame,
        root: Path | None = None,
        sources: dict[str, str] | None = None,
        splits: pd.Series | None = None,
    ) -> "Dataset":
        """Validate in-memory frames exactly as :func:`load_dataset` validates files.

        The frames are not modified (normalised copies are kept). ``sources`` names the tables in
        messages (default ``users`` / ``intents`` / ``impressions``). ``splits``: each impression's
        split, given (a shard of a bigger log, split as the whole log is) instead of assigned.
        """
        src = {t: t for t in TABLES}
        src.update(sources or {})
        users, intents, impressions = _validate(schema, users, intents, impressions, src, splits)
        return cls(root=root, schema=schema, users=users, intents=intents, impressions=impressions, sources=src)


def load_dataset(path: str | Path) -> Dataset:
    """Read ``dataset.yaml`` and the three tables (parquet, else CSV) and validate them.

    Raises DataError, one line, at the first problem: see the module docstring.
    """
    root = Path(path)
    if not root.is_dir():
        raise DataError(
            f"{root}: not a dataset folder (expected dataset.yaml, users, intents and impressions "
            "tables; `rgalign data synth OUT` writes an example)"
        )
    schema = DatasetSchema.from_yaml(root / "dataset.yaml")
    string_cols = {
        "users": ["user_id", *schema.user_categorical, *schema.user_text],
        "intents": ["intent_id", "text", "category"],
        "impressions": [
            "request_id", "user_id", "intent_id", *schema.context_categorical, *schema.context_text,
            *([schema.split.column] if schema.split.by == "column" else []),
        ],
    }
    frames: dict[str, pd.DataFrame] = {}
    sources: dict[str, str] = {}
    for table in TABLES:
        file = _find_table(root, table)
        sources[table] = file.name
        frames[table] = _read_table(file, string_cols[table])
    return Dataset.from_frames(schema, frames["users"], frames["intents"], frames["impressions"], root=root, sources=sources)


# ===================================================================== reading
def _find_table(root: Path, stem: str) -> Path:
    for ext in EXTENSIONS:
        f = root / f"{stem}{ext}"
        if f.is_file():
            return f
    tried = ", ".join(f"{stem}{ext}" for ext in EXTENSIONS)
    raise DataError(f"{root}: missing {stem} table: tried {tried}")


def require_pyarrow(why: str):
    """Import pyarrow, or raise a DataError that says why it is needed and what failed (pandas
    alone would only say "Unable to find a usable engine")."""
    try:
        import pyarrow
        import pyarrow.parquet  # noqa: F401
    except ImportError as e:
        raise DataError(
            f"{why} needs pyarrow, which failed to import ({e}); install a pyarrow that matches the "
            "installed numpy (pyarrow >= 26 needs numpy >= 2), or use CSV files"
        ) from e
    return pyarrow


def _read_table(file: Path, string_cols: list[str]) -> pd.DataFrame:
    if file.suffix == ".parquet":
        require_pyarrow(f"reading {file}")
    try:
        if file.suffix == ".parquet":
            return pd.read_parquet(file)
        header = pd.read_csv(file, nrows=0).columns
        dtype = {c: str for c in string_cols if c in header}
        # Only non-string columns get NA tokens; string columns keep "" and "NA" verbatim.
        na_values = {c: _NA_TOKENS for c in header if c not in dtype}
        return pd.read_csv(file, dtype=dtype, keep_default_na=False, na_values=na_values)
    except Exception as e:  # noqa: BLE001 - any reader failure becomes one readable line
        msg = str(e).strip().splitlines()[0] if str(e).strip() else ""
        raise DataError(f"{file}: cannot read ({type(e).__name__}: {msg})") from e


# ===================================================================== validation
def _validate(
    schema: DatasetSchema,
    users: pd.DataFrame,
    intents: pd.DataFrame,
    impressions: pd.DataFrame,
    src: dict[str, str],
    splits: pd.Series | None = None,
) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    s = schema
    _require(
        impressions,
        src["impressions"],
        {
            "request_id": "the request id", "user_id": "the user id", "intent_id": "the intent shown",
            "label": "0/1 click", "ts": "int seconds", **_declared(s, "context"),
        },
    )
    # Positional rows: messages say "row N" = N-th data row, whatever the frame's index.
    impressions = impressions.reset_index(drop=True)

    users, intents = validate_users_intents(s, users, intents, src)
    u, i = src["users"], src["intents"]

    # --- impressions
    m = src["impressions"]
    imp = impressions
    imp = imp.assign(**{c: _ids(imp[c], m, c) for c in ("request_id", "user_id", "intent_id")})
    imp = imp.assign(label=_label(imp["label"], m), ts=_ts(imp["ts"], m))
    imp = imp.assign(**{c: _strings(imp[c]) for c in (*s.context_categorical, *s.context_text)})
    imp = imp.assign(**{c: _numeric(imp[c], m, c, "numeric feature") for c in s.context_numeric})
    if len(imp) == 0:
        raise DataError(f"{m}: no impressions")

    # References: every impression's user and intent exist.
    known_user = imp["user_id"].isin(users["user_id"]).to_numpy()
    if not known_user.all():
        row = int(np.flatnonzero(~known_user)[0])
        raise DataError(f"{at(m, 'user_id', row)}: unknown user {imp['user_id'].iloc[row]!r} (not in {u})")
    intent_code = pd.Index(intents["intent_id"]).get_indexer(imp["intent_id"])
    if (intent_code < 0).any():
        row = int(np.flatnonzero(intent_code < 0)[0])
        raise DataError(f"{at(m, 'intent_id', row)}: unknown intent {imp['intent_id'].iloc[row]!r} (not in {i})")

    # Request level: one user per request, context constant, an intent shown once per request.
    codes, first = request_codes(imp["request_id"])
    for c in ("user_id", *s.context_features):
        _constant_within_request(imp, c, codes, first, m, "context feature" if c != "user_id" else "user_id")
    twice = pd.Series(codes * np.int64(len(intents)) + intent_code).duplicated().to_numpy()
    if twice.any():
        row = int(np.flatnonzero(twice)[0])
        raise DataError(
            f"{at(m, 'intent_id', row)}: intent {imp['intent_id'].iloc[row]!r} is shown twice in "
            f"request {imp['request_id'].iloc[row]!r}; keep one impression per (request, intent)"
        )

    # GAUC groups: a column of impressions (constant within a request) or of users.
    gk = s.group_key
    if gk in imp.columns:
        if gk not in ("request_id", "user_id", *s.context_features):
            _constant_within_request(imp, gk, codes, first, m, "group_key")
    elif gk not in users.columns:
        raise DataError(f"dataset.yaml: group_key '{gk}' is not a column of {m} or {u}; use user_id or request_id")

    # a shard of a bigger log brings the split its requests have in the whole log
    imp = imp.assign(split=assign_splits(imp, s.split, m) if splits is None else splits.set_axis(imp.index).astype("str"))
    return users, intents, imp


def validate_users_intents(
    s: DatasetSchema, users: pd.DataFrame, intents: pd.DataFrame, src: dict[str, str]
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """The users and intents tables checked and normalised (also for a log read by shard, whose
    impressions are checked batch by batch)."""
    _require(users, src["users"], {"user_id": "the user id", **_declared(s, "user")})
    _require(intents, src["intents"], {"intent_id": "the KB intent id", "text": "the intent's text"})
    users = users.reset_index(drop=True)
    intents = intents.reset_index(drop=True)
    u = src["users"]
    users = users.assign(user_id=_ids(users["user_id"], u, "user_id"))
    users = users.assign(**{c: _strings(users[c]) for c in (*s.user_categorical, *s.user_text)})
    users = users.assign(**{c: _numeric(users[c], u, c, "numeric feature") for c in s.user_numeric})
    _unique(users["user_id"], u, "user_id")
    i = src["intents"]
    intents = intents.assign(intent_id=_ids(intents["intent_id"], i, "intent_id"))
    intents = intents.assign(text=_ids(intents["text"], i, "text", what="text"))
    if "category" in intents.columns:
        intents = intents.assign(category=_strings(intents["category"]))
    _unique(intents["intent_id"], i, "intent_id")
    if len(intents) == 0:
        raise DataError(f"{i}: no intents; the KB needs at least one")
    return users, intents


def _declared(s: DatasetSchema, group: str) -> dict[str, str]:
    out = {}
    for kind in ("categorical", "numeric", "text"):
        for c in getattr(s, f"{group}_{kind}"):
            out[c] = f"declared in dataset.yaml {group}_features.{kind}"
    return out


def _require(df: pd.DataFrame, source: str, columns: dict[str, str]) -> None:
    for c, why in columns.items():
        if c not in df.columns:
            found = ", ".join(map(str, df.columns[:12])) + (", ..." if len(df.columns) > 12 else "")
            raise DataError(f"{source}: missing column '{c}' ({why}); columns found: {found or 'none'}")


def _first_bad(mask: np.ndarray | pd.Series) -> int | None:
    mask = np.asarray(mask, dtype=bool)
    return int(np.flatnonzero(mask)[0]) if mask.any() else None


def _ids(col: pd.Series, source: str, name: str, what: str = "id") -> pd.Series:
    """Non-missing strings; integer ids (including floats like 42.0 from a nullable column) as "42"."""
    row = _first_bad(col.isna())
    if row is not None:
        raise DataError(f"{at(source, name, row)}: missing {what}")
    if pd.api.types.is_float_dtype(col):
        v = col.to_numpy()
        if np.all(v == np.floor(v)):
            col = col.astype(np.int64)
    out = col if pd.api.types.is_string_dtype(col) and not pd.api.types.is_object_dtype(col) else col.astype(str)
    row = _first_bad(out == "")
    if row is not None:
        raise DataError(f"{at(source, name, row)}: missing {what} (empty string)")
    return out


def _strings(col: pd.Series) -> pd.Series:
    """Categorical and text values as strings; a missing value is the empty string."""
    if pd.api.types.is_string_dtype(col) and not pd.api.types.is_object_dtype(col):
        return col.fillna("") if col.hasnans else col
    return col.astype(str).where(col.notna(), "")


def _numeric(col: pd.Series, source: str, name: str, what: str) -> pd.Series:
    """Finite numbers; integers stay int64 (so prompts say 34, not 34.0), others float64."""
    if pd.api.types.is_bool_dtype(col):
        return col.astype(np.int64)
    if not pd.api.types.is_numeric_dtype(col):
        num = pd.to_numeric(col, errors="coerce")
        row = _first_bad(num.isna() & col.notna())
        if row is not None:
            raise DataError(f"{at(source, name, row)}: value {col.iloc[row]!r} is not a number ({what})")
        col = num
    v = col.to_numpy(dtype=np.float64, na_value=np.nan)
    row = _first_bad(np.isnan(v))
    if row is not None:
        raise DataError(f"{at(source, name, row)}: NaN in {what}; fill or drop it before loading")
    row = _first_bad(~np.isfinite(v))
    if row is not None:
        raise DataError(f"{at(source, name, row)}: value {v[row]} is not finite ({what})")
    if pd.api.types.is_integer_dtype(col):
        return col.astype(np.int64)
    return pd.Series(v, index=col.index, name=col.name)


def _label(col: pd.Series, source: str) -> pd.Series:
    v = _numeric(col, source, "label", "label").to_numpy()
    row = _first_bad((v != 0) & (v != 1))
    if row is not None:
        value = v[row].item()
        value = int(value) if float(value).is_integer() else value
        raise DataError(f"{at(source, 'label', row)}: value {value} is not 0/1")
    return pd.Series(v.astype(np.int8), index=col.index, name="label")


def _ts(col: pd.Series, source: str) -> pd.Series:
    num = _numeric(col, source, "ts", "ts, int seconds")
    v = num.to_numpy()
    if v.dtype.kind == "f":
        row = _first_bad(v != np.floor(v))
        if row is not None:
            raise DataError(f"{at(source, 'ts', row)}: value {v[row]} is not whole seconds")
    return pd.Series(v.astype(np.int64), index=col.index, name="ts")


def _unique(col: pd.Series, source: str, name: str) -> None:
    dup = col.duplicated().to_numpy()
    row = _first_bad(dup)
    if row is not None:
        value = col.iloc[row]
        first = int(np.flatnonzero((col == value).to_numpy())[0])
        raise DataError(f"{at(source, name, row)}: duplicate id {value!r} (first at row {first})")


def _constant_within_request(
    imp: pd.DataFrame, col: str, codes: np.ndarray, first: np.ndarray, source: str, what: str
) -> None:
    """Each row's value equals its request's first row's value (compared as factorized codes)."""
    values, _ = pd.factorize(imp[col], use_na_sentinel=False)
    diff = values != values[first][codes]
    row = _first_bad(diff)
    if row is not None:
        r0 = int(first[codes[row]])
        req = imp["request_id"].iloc[row]
        raise DataError(
            f"{at(source, col, row)}: {what} not constant within request {req!r} "
            f"({imp[col].iloc[r0]!r} at row {r0}, {imp[col].iloc[row]!r} here)"
        )


def _check_split_name(split: str) -> None:
    if split not in SPLITS:
        raise DataError(f"unknown split {split!r}; expected one of {', '.join(SPLITS)}")


# ===================================================================== request level
def request_frame(ds: Dataset, imp: pd.DataFrame) -> tuple[pd.DataFrame, np.ndarray, np.ndarray]:
    """One row per request of ``imp`` (a subset of ``ds.impressions``), in order of first appearance.

    Returns ``(table, codes, first)``: ``table`` with columns ``request_id, user_id, ts`` + user
    features + context features (R rows); ``codes (N,)`` the request index of each row of
    ``imp``; ``first (R,)`` the position in ``imp`` of each request's first row.
    """
    s = ds.schema
    codes, first = request_codes(imp["request_id"])
    head = imp.iloc[first]
    # A request's time is its earliest impression's (the same rule as the ts split).
    ts = pd.Series(imp["ts"].to_numpy()).groupby(codes, sort=True).min().to_numpy()
    user_part = ds.users.set_index("user_id")[list(s.user_features)].reindex(head["user_id"].to_numpy())
    table = pd.concat(
        [
            pd.DataFrame({"request_id": head["request_id"].to_numpy(), "user_id": head["user_id"].to_numpy(), "ts": ts}),
            user_part.reset_index(drop=True),
            head[list(s.context_features)].reset_index(drop=True),
        ],
        axis=1,
    )
    return table, codes, first
