"""The dataset schema: which columns are features, of which kind, and how to split (SPEC §1).

A dataset folder carries a ``dataset.yaml``::

    name: my-chatbot-logs
    user_features:    {categorical: [gender, tier, region], numeric: [age, orders_90d], text: []}
    context_features: {categorical: [entry_page, last_order_status],
                       numeric: [hour, days_since_last_order], text: [recent_actions]}
    group_key: user_id
    split: {by: ts, test_fraction: 0.2}

:class:`DatasetSchema` is its in-memory form: a frozen dataclass, validated on construction, so a
schema that exists is a schema that makes sense. YAML is read only in :meth:`DatasetSchema.from_yaml`.

Example::

    >>> s = DatasetSchema(name="x", user_categorical=("tier",), context_text=("recent_actions",))
    >>> s.categorical, s.text
    (('tier',), ('recent_actions',))
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from rgalign.errors import DataError

SPLITS = ("train", "valid", "test")

# Columns with a fixed meaning in the tables: a feature may not reuse their names, or a feature
# column would silently be the id (or the label) itself.
RESERVED_COLUMNS = ("user_id", "request_id", "intent_id", "label", "ts", "split")

_KINDS = ("categorical", "numeric", "text")
_GROUPS = ("user_features", "context_features")


@dataclass(frozen=True)
class SplitSpec:
    """How impressions are split into train / valid / test, always at request level.

    ``by="ts"``: requests ordered by time; the last ``test_fraction`` of them are test, the
    ``valid_fraction`` before those are valid, the rest train (a temporal split, as in production:
    the model is evaluated on the future). ``by="column"``: the impressions' ``column`` holds
    ``train`` / ``valid`` / ``test`` per row.
    """

    by: str = "ts"
    test_fraction: float = 0.2
    # 0.1: enough requests for early stopping and calibration without starving training.
    valid_fraction: float = 0.1
    column: str = "split"

    def __post_init__(self) -> None:
        if self.by not in ("ts", "column"):
            raise DataError(f"dataset.yaml: split.by must be 'ts' or 'column', got {self.by!r}")
        for key in ("test_fraction", "valid_fraction"):
            value = getattr(self, key)
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                raise DataError(f"dataset.yaml: split.{key} must be a number, got {value!r}")
            if not 0.0 <= float(value) < 1.0:
                raise DataError(f"dataset.yaml: split.{key} must be in [0, 1), got {value!r}")
        if self.test_fraction + self.valid_fraction >= 1.0:
            raise DataError(
                "dataset.yaml: split.test_fraction + split.valid_fraction must be < 1 "
                f"(got {self.test_fraction} + {self.valid_fraction}); nothing would be left to train on"
            )
        if not isinstance(self.column, str) or not self.column:
            raise DataError(f"dataset.yaml: split.column must be a column name, got {self.column!r}")

    def to_dict(self) -> dict[str, Any]:
        if self.by == "column":
            return {"by": "column", "column": self.column}
        return {"by": "ts", "test_fraction": self.test_fraction, "valid_fraction": self.valid_fraction}

    @classmethod
    def from_dict(cls, d: Any, source: str = "dataset.yaml") -> "SplitSpec":
        if not isinstance(d, dict):
            raise DataError(f"{source}: 'split' must be a mapping like {{by: ts, test_fraction: 0.2}}, got {d!r}")
        unknown = sorted(set(d) - {"by", "test_fraction", "valid_fraction", "column"})
        if unknown:
            raise DataError(
                f"{source}: unknown key split.{unknown[0]} (allowed: by, test_fraction, valid_fraction, column)"
            )
        kwargs = {k: d[k] for k in ("by", "test_fraction", "valid_fraction", "column") if k in d}
        try:
            return cls(**kwargs)
        except DataError as e:
            raise DataError(str(e).replace("dataset.yaml", source, 1)) from None


@dataclass(frozen=True)
class FeatureGroups:
    """Feature names in six groups, (user, context) x (categorical, numeric, text), each in its
    declared order: what a dataset declares (`DatasetSchema`) and what a prompt shows
    (`rgalign.models.prompt.PromptFields`)."""

    user_categorical: tuple[str, ...] = ()
    user_numeric: tuple[str, ...] = ()
    user_text: tuple[str, ...] = ()
    context_categorical: tuple[str, ...] = ()
    context_numeric: tuple[str, ...] = ()
    context_text: tuple[str, ...] = ()


FEATURE_GROUPS: tuple[str, ...] = tuple(f.name for f in fields(FeatureGroups))


@dataclass(frozen=True)
class DatasetSchema(FeatureGroups):
    """Names and kinds of the feature columns, the GAUC group key and the split.

    User features are columns of ``users``; context features are columns of ``impressions`` and
    are constant within a request. Field order everywhere (encoders, prompts) is the order here:
    user before context, and within each, the order declared.
    """

    name: str = field(kw_only=True)  # required; keyword-only, since the feature groups come first
    group_key: str = "user_id"
    split: SplitSpec = field(default_factory=SplitSpec)

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not self.name:
            raise DataError(f"dataset.yaml: 'name' must be a non-empty string, got {self.name!r}")
        seen: dict[str, str] = {}
        for group in _GROUPS:
            for kind in _KINDS:
                attr = f"{group.split('_')[0]}_{kind}"
                names = getattr(self, attr)
                if isinstance(names, str) or not isinstance(names, (list, tuple)):
                    raise DataError(f"dataset.yaml: {group}.{kind} must be a list of column names, got {names!r}")
                for n in names:
                    if not isinstance(n, str) or not n:
                        raise DataError(f"dataset.yaml: {group}.{kind} holds {n!r}, not a column name")
                    where = f"{group}.{kind}"
                    if n in seen:
                        raise DataError(
                            f"dataset.yaml: feature '{n}' is declared twice ({seen[n]} and {where}); "
                            "declare each column once"
                        )
                    if n in RESERVED_COLUMNS:
                        raise DataError(
                            f"dataset.yaml: {where} declares '{n}', a reserved column "
                            f"({', '.join(RESERVED_COLUMNS)}); rename the feature"
                        )
                    seen[n] = where
                # Frozen: tuples keep the schema hashable even when built from lists.
                object.__setattr__(self, attr, tuple(names))
        if not isinstance(self.group_key, str) or not self.group_key:
            raise DataError(f"dataset.yaml: group_key must be a column name, got {self.group_key!r}")
        if not isinstance(self.split, SplitSpec):
            raise DataError(f"dataset.yaml: split must be a SplitSpec, got {self.split!r}")

    # ----------------------------------------------------------------- views on the features
    @property
    def categorical(self) -> tuple[str, ...]:
        """Categorical features, user then context."""
        return self.user_categorical + self.context_categorical

    @property
    def numeric(self) -> tuple[str, ...]:
        """Numeric features, user then context."""
        return self.user_numeric + self.context_numeric

    @property
    def text(self) -> tuple[str, ...]:
        """Free-text features (used verbatim in the reasoner's prompt), user then context."""
        return self.user_text + self.context_text

    @property
    def user_features(self) -> tuple[str, ...]:
        """Columns of ``users``: categorical, numeric, text."""
        return self.user_categorical + self.user_numeric + self.user_text

    @property
    def context_features(self) -> tuple[str, ...]:
        """Columns of ``impressions`` constant within a request: categorical, numeric, text."""
        return self.context_categorical + self.context_numeric + self.context_text

    @property
    def features(self) -> tuple[str, ...]:
        """All features, user then context (the key order of a raw feature dict)."""
        return self.user_features + self.context_features

    def kind_of(self, feature: str) -> str:
        """``"categorical"``, ``"numeric"`` or ``"text"``; DataError for an undeclared name."""
        for kind in _KINDS:
            if feature in getattr(self, kind):
                return kind
        raise DataError(f"feature '{feature}' is not declared in dataset.yaml")

    # ----------------------------------------------------------------- (de)serialisation
    def to_dict(self) -> dict[str, Any]:
        """The ``dataset.yaml`` structure (lists, not tuples, so it dumps as plain YAML/JSON)."""
        return {
            "name": self.name,
            "user_features": {
                "categorical": list(self.user_categorical),
                "numeric": list(self.user_numeric),
                "text": list(self.user_text),
            },
            "context_features": {
                "categorical": list(self.context_categorical),
                "numeric": list(self.context_numeric),
                "text": list(self.context_text),
            },
            "group_key": self.group_key,
            "split": self.split.to_dict(),
        }

    @classmethod
    def from_dict(cls, d: Any, source: str = "dataset.yaml") -> "DatasetSchema":
        """Build from the ``dataset.yaml`` structure; every problem is a one-line DataError.

        Required keys: ``name``, ``user_features``, ``context_features``. Within a feature group
        the kinds are optional (default: none). ``group_key`` defaults to ``user_id``, ``split`` to
        ``{by: ts, test_fraction: 0.2, valid_fraction: 0.1}``. Unknown keys are refused: a typo
        (``splits:``) would otherwise silently fall back to a default.
        """
        if not isinstance(d, dict):
            raise DataError(f"{source}: expected a mapping with keys name, user_features, context_features; got {type(d).__name__}")
        allowed = ("name", "user_features", "context_features", "group_key", "split")
        unknown = sorted(str(k) for k in set(d) - set(allowed))
        if unknown:
            raise DataError(f"{source}: unknown key '{unknown[0]}' (allowed: {', '.join(allowed)})")
        for key in ("name", "user_features", "context_features"):
            if key not in d:
                raise DataError(f"{source}: missing key '{key}' (see SPEC §1 for the format)")
        kwargs: dict[str, Any] = {"name": d["name"]}
        for group in _GROUPS:
            g = d[group]
            if g is None:
                g = {}
            if not isinstance(g, dict):
                raise DataError(f"{source}: '{group}' must be a mapping with keys categorical, numeric, text; got {g!r}")
            bad = sorted(str(k) for k in set(g) - set(_KINDS))
            if bad:
                raise DataError(f"{source}: unknown key {group}.{bad[0]} (allowed: {', '.join(_KINDS)})")
            for kind in _KINDS:
                names = g.get(kind) or []
                if not isinstance(names, list):
                    raise DataError(f"{source}: {group}.{kind} must be a list of column names, got {names!r}")
                kwargs[f"{group.split('_')[0]}_{kind}"] = tuple(names)
        if "group_key" in d:
            kwargs["group_key"] = d["group_key"]
        if "split" in d:
            kwargs["split"] = SplitSpec.from_dict(d["split"], source)
        try:
            return cls(**kwargs)
        except DataError as e:
            raise DataError(str(e).replace("dataset.yaml", source, 1)) from None

    @classmethod
    def from_yaml(cls, path: str | Path) -> "DatasetSchema":
        """Read and validate a ``dataset.yaml``."""
        import yaml  # YAML only at this boundary

        path = Path(path)
        if not path.is_file():
            raise DataError(f"{path}: missing file; a dataset folder needs a dataset.yaml (see SPEC §1)")
        try:
            d = yaml.safe_load(path.read_text(encoding="utf-8"))
        except yaml.YAMLError as e:
            mark = getattr(e, "problem_mark", None)
            where = f" line {mark.line + 1}" if mark is not None else ""
            problem = getattr(e, "problem", None) or str(e).splitlines()[0]
            raise DataError(f"{path}:{where} not valid YAML: {problem}") from None
        return cls.from_dict(d, source=str(path))

    def to_yaml(self, path: str | Path) -> None:
        """Write ``dataset.yaml`` atomically."""
        import yaml

        text = yaml.safe_dump(self.to_dict(), sort_keys=False, default_flow_style=None)
        atomic_write(path, text.encode("utf-8"))


def atomic_write(path: str | Path, data: bytes) -> None:
    """Write ``data`` to ``path`` through a temp file in the same folder and ``os.replace``, so an
    interrupted write never leaves a half file that looks whole (STYLE 10)."""
    import os
    import tempfile

    path = Path(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def at(source: str, column: str, row: int) -> str:
    """``"impressions.csv: column 'label' row 17 (line 19)"``: where a problem is, for messages.

    ``row`` is the 0-based position of the data row in the table; for CSV the 1-based line of the
    file (header on line 1) is added, because that is what an editor shows.
    """
    where = f"{source}: column '{column}' row {int(row)}"
    if source.endswith(".csv"):
        where += f" (line {int(row) + 2})"
    return where
