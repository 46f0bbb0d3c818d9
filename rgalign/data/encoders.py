"""Feature encoders: categorical vocabularies and numeric standardisation (SPEC §1).

Fitted on the TRAIN split only (one row per request, so a busy user does not weigh more than
their requests do), saved with the model, and used unchanged at serving time:

- categorical field ``f`` -> ``int64`` in ``[0, cardinalities[f])``; index 0 is the
  out-of-vocabulary bucket, for values never seen in training (including a value that occurs
  only in valid/test, and anything new at serving time): never a crash.
- numeric field -> ``float32`` ``(x - mean) / std``.
- text fields are not encoded here (the reasoner's tokenizer does that); they are listed so that
  serving can check a request carries them.

Example::

    >>> enc = FeatureEncoders.fit(dataset)                          # doctest: +SKIP
    >>> cat, num = enc.encode_records([{"gender": "F", "age": 31, ...}])  # doctest: +SKIP
    >>> cat.shape, num.shape                                         # doctest: +SKIP
    ((1, 5), (1, 4))
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import TYPE_CHECKING, Any, Sequence

import numpy as np
import pandas as pd

from rgalign.data.schema import atomic_write
from rgalign.errors import DataError

if TYPE_CHECKING:
    from rgalign.data.loader import Dataset

FORMAT = "rgalign.feature_encoders/1"

# A (near-)constant feature in training has std ~ 0. Dividing by it would turn any other value
# seen at serving into a huge number; with std := 1 it encodes as a plain shift, x - mean.
STD_FLOOR = 1e-6


class FeatureEncoders:
    """Vocabularies and numeric statistics for a dataset's features, plus the KB's intent ids.

    Attributes:
        categorical_fields: categorical feature names, ``schema.categorical`` order (user, context).
        numeric_fields: numeric feature names, ``schema.numeric`` order.
        text_fields: text feature names, ``schema.text`` order.
        user_fields / context_fields: every feature of each group, in schema order (the key order
            of a raw feature dict, which the reasoner's prompt follows).
        vocabs: per categorical field, its training values; value ``vocabs[f][j]`` encodes as ``j + 1``.
        cardinalities: ``len(vocabs[f]) + 1`` per categorical field (embedding table sizes).
        means, stds: per numeric field (``stds`` already floored).
        intent_ids, intent_texts: the KB, in KB order.
    """

    def __init__(
        self,
        categorical_fields: Sequence[str],
        vocabs: dict[str, Sequence[str]],
        numeric_fields: Sequence[str],
        means: Sequence[float],
        stds: Sequence[float],
        text_fields: Sequence[str],
        intent_ids: Sequence[str],
        intent_texts: Sequence[str] | None = None,
        user_fields: Sequence[str] | None = None,
        context_fields: Sequence[str] | None = None,
    ) -> None:
        self.categorical_fields = list(categorical_fields)
        self.vocabs = {f: [str(v) for v in vocabs[f]] for f in self.categorical_fields}
        self.numeric_fields = list(numeric_fields)
        self.means = [float(x) for x in means]
        self.stds = [float(x) if float(x) >= STD_FLOOR else 1.0 for x in stds]
        self.text_fields = list(text_fields)
        self.intent_ids = [str(i) for i in intent_ids]
        self.intent_texts = list(intent_texts) if intent_texts is not None else []
        all_fields = self.categorical_fields + self.numeric_fields + self.text_fields
        self.user_fields = list(user_fields) if user_fields is not None else []
        self.context_fields = list(context_fields) if context_fields is not None else [
            f for f in all_fields if f not in self.user_fields
        ]
        if len(self.means) != len(self.numeric_fields) or len(self.stds) != len(self.numeric_fields):
            raise DataError("feature encoders: one mean and one std per numeric field are required")
        # Lookups built once: pandas Index for frames (vectorised), dict for JSON records.
        self._index = {f: pd.Index(self.vocabs[f]) for f in self.categorical_fields}
        self._lookup = {f: {v: j + 1 for j, v in enumerate(self.vocabs[f])} for f in self.categorical_fields}
        self._intent_index = pd.Index(self.intent_ids)
        self._mean = np.asarray(self.means, dtype=np.float64)
        self._std = np.asarray(self.stds, dtype=np.float64)

    # ----------------------------------------------------------------- fitting
    @classmethod
    def fit(cls, dataset: "Dataset") -> "FeatureEncoders":
        """Fit on the train split's requests (one row each); the KB comes from ``dataset.intents``."""
        s = dataset.schema
        train = dataset.request_table("train")
        vocabs = {}
        for f in s.categorical:
            # Sorted: the same training data gives the same indices whatever its row order.
            vocabs[f] = sorted(pd.unique(train[f].astype(str)).tolist())
        means, stds = [], []
        for f in s.numeric:
            v = train[f].to_numpy(dtype=np.float64)
            means.append(float(v.mean()) if len(v) else 0.0)
            stds.append(float(v.std()) if len(v) else 1.0)
        return cls(
            categorical_fields=s.categorical,
            vocabs=vocabs,
            numeric_fields=s.numeric,
            means=means,
            stds=stds,
            text_fields=s.text,
            intent_ids=dataset.intent_ids,
            intent_texts=dataset.intent_texts,
            user_fields=s.user_features,
            context_fields=s.context_features,
        )

    # ----------------------------------------------------------------- views
    @property
    def cardinalities(self) -> list[int]:
        """Vocabulary size + 1 (the OOV bucket, index 0) per categorical field."""
        return [len(self.vocabs[f]) + 1 for f in self.categorical_fields]

    @property
    def features(self) -> list[str]:
        """Every feature, user then context, in schema order."""
        return self.user_fields + self.context_fields

    @property
    def num_intents(self) -> int:
        return len(self.intent_ids)

    def intent_index(self, ids: Sequence[str] | np.ndarray | pd.Series) -> np.ndarray:
        """KB positions ``(N,) int64`` of intent ids; DataError for an id not in the KB."""
        values = pd.Series(ids, dtype=object).astype(str) if not isinstance(ids, pd.Series) else ids.astype(str)
        idx = self._intent_index.get_indexer(values)
        if (idx < 0).any():
            j = int(np.flatnonzero(idx < 0)[0])
            raise DataError(f"unknown intent id {values.iloc[j]!r} (item {j}); not in the KB of {self.num_intents} intents")
        return idx.astype(np.int64)

    # ----------------------------------------------------------------- encoding
    def encode_frame(self, df: pd.DataFrame) -> tuple[np.ndarray, np.ndarray]:
        """Encode a frame with one column per categorical and numeric field.

        Returns ``cat (N, Fc) int64`` (0 for unseen or missing values) and ``num (N, Fn) float32``.
        DataError for a missing column or a NaN in a numeric one.
        """
        n = len(df)
        cat = np.zeros((n, len(self.categorical_fields)), dtype=np.int64)
        for j, f in enumerate(self.categorical_fields):
            if f not in df.columns:
                raise DataError(f"encode: missing column '{f}' (categorical feature)")
            col = df[f]
            values = col if pd.api.types.is_string_dtype(col) and not pd.api.types.is_object_dtype(col) else col.astype(str)
            cat[:, j] = self._index[f].get_indexer(values) + 1  # -1 (unseen) -> 0, the OOV bucket
        num = np.zeros((n, len(self.numeric_fields)), dtype=np.float64)
        for j, f in enumerate(self.numeric_fields):
            if f not in df.columns:
                raise DataError(f"encode: missing column '{f}' (numeric feature)")
            try:
                num[:, j] = df[f].to_numpy(dtype=np.float64, na_value=np.nan)
            except (TypeError, ValueError) as e:
                raise DataError(f"encode: column '{f}' is not numeric ({e})") from None
            bad = ~np.isfinite(num[:, j])
            if bad.any():
                raise DataError(f"encode: column '{f}' row {int(np.flatnonzero(bad)[0])}: NaN or infinite numeric feature")
        num = (num - self._mean) / self._std
        return cat, num.astype(np.float32)

    def encode_records(self, records: Sequence[Any], check_text: bool = True) -> tuple[np.ndarray, np.ndarray]:
        """Encode raw feature dicts (one JSON object per batch item, as serving receives them).

        A categorical value must be a string or a number (numbers are ``str()``'d, so ``3`` means
        ``"3"``); a numeric value must be a finite int or float (not a string, not a bool); with
        ``check_text`` a text value must be a string. Unknown keys are ignored; unseen categorical
        values go to the OOV bucket. Anything else raises DataError naming the batch item and the
        feature, e.g. ``features[2]: feature 'age' must be a number, got str '31'``.

        Returns ``cat (B, Fc) int64`` and ``num (B, Fn) float32``.
        """
        b = len(records)
        cat = np.zeros((b, len(self.categorical_fields)), dtype=np.int64)
        num = np.zeros((b, len(self.numeric_fields)), dtype=np.float64)
        for i, rec in enumerate(records):
            if not isinstance(rec, dict):
                raise DataError(f"features[{i}]: expected a JSON object of features, got {type(rec).__name__}")
            for j, f in enumerate(self.categorical_fields):
                v = self._get(rec, i, f)
                if isinstance(v, str):
                    key = v
                elif isinstance(v, (int, float)):  # bool is an int: True -> "True", as pandas writes it
                    key = str(v)
                else:
                    raise DataError(
                        f"features[{i}]: feature '{f}' must be a string or a number (categorical), "
                        f"got {_type_name(v)}"
                    )
                cat[i, j] = self._lookup[f].get(key, 0)
            for j, f in enumerate(self.numeric_fields):
                v = self._get(rec, i, f)
                if isinstance(v, bool) or not isinstance(v, (int, float)):
                    raise DataError(f"features[{i}]: feature '{f}' must be a number, got {_type_name(v)} {v!r}")
                if not math.isfinite(v):
                    raise DataError(f"features[{i}]: feature '{f}' must be a finite number, got {v!r}")
                num[i, j] = v
            if check_text:
                for f in self.text_fields:
                    v = self._get(rec, i, f)
                    if not isinstance(v, str):
                        raise DataError(f"features[{i}]: feature '{f}' must be a string (text), got {_type_name(v)}")
        num = (num - self._mean) / self._std
        return cat, num.astype(np.float32)

    @staticmethod
    def _get(rec: dict, i: int, f: str) -> Any:
        if f not in rec:
            raise DataError(f"features[{i}]: missing feature '{f}'")
        return rec[f]

    # ----------------------------------------------------------------- (de)serialisation
    def to_dict(self) -> dict[str, Any]:
        return {
            "format": FORMAT,
            "user_fields": self.user_fields,
            "context_fields": self.context_fields,
            "categorical": [{"name": f, "vocab": self.vocabs[f]} for f in self.categorical_fields],
            "numeric": [
                {"name": f, "mean": m, "std": s} for f, m, s in zip(self.numeric_fields, self.means, self.stds)
            ],
            "text": self.text_fields,
            "intent_ids": self.intent_ids,
            "intent_texts": self.intent_texts,
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "FeatureEncoders":
        if not isinstance(d, dict) or d.get("format") != FORMAT:
            got = d.get("format") if isinstance(d, dict) else type(d).__name__
            raise DataError(f"feature encoders: expected format {FORMAT!r}, got {got!r}")
        try:
            return cls(
                categorical_fields=[c["name"] for c in d["categorical"]],
                vocabs={c["name"]: c["vocab"] for c in d["categorical"]},
                numeric_fields=[c["name"] for c in d["numeric"]],
                means=[c["mean"] for c in d["numeric"]],
                stds=[c["std"] for c in d["numeric"]],
                text_fields=d["text"],
                intent_ids=d["intent_ids"],
                intent_texts=d.get("intent_texts"),
                user_fields=d.get("user_fields"),
                context_fields=d.get("context_fields"),
            )
        except (KeyError, TypeError) as e:
            raise DataError(f"feature encoders: malformed ({type(e).__name__}: {e})") from None

    def to_json(self, path: str | Path) -> None:
        """Write atomically (temp file + rename). Floats round-trip exactly (JSON repr of float64)."""
        atomic_write(path, json.dumps(self.to_dict(), indent=1, ensure_ascii=False).encode("utf-8"))

    @classmethod
    def from_json(cls, path: str | Path) -> "FeatureEncoders":
        path = Path(path)
        try:
            d = json.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise DataError(f"{path}: missing feature encoders file") from None
        except json.JSONDecodeError as e:
            raise DataError(f"{path}: not valid JSON ({e})") from None
        return cls.from_dict(d)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, FeatureEncoders) and self.to_dict() == other.to_dict()

    def __repr__(self) -> str:
        return (
            f"FeatureEncoders(categorical={dict(zip(self.categorical_fields, self.cardinalities))}, "
            f"numeric={self.numeric_fields}, text={self.text_fields}, intents={self.num_intents})"
        )


def _type_name(v: Any) -> str:
    return "null" if v is None else type(v).__name__
