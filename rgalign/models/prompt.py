"""How a request's raw features become the reasoner's prompt, and how clicked intents become its
SFT target.

The prompt format (deterministic; the same features always give the same string)::

    user: tier=gold; region=SG; age=31 | context: entry_page=order_detail;
    last_order_status=shipped; days_since_last_order=6 | recent_actions: checked tracking twice |
    query:

(one line in reality). Rules:

- sections in a fixed order: ``user:`` (user categorical, then user numeric fields), ``context:``
  (context categorical, then numeric), then one section per text field, user text before context
  text, named by the field (``recent_actions: ...``), then the closing ``query:`` marker. The
  reasoner's latent query is pooled at that marker's last token, so it is always present and
  always last. A section with no fields is left out.
- within a section, fields in the schema's declared order, ``name=value`` joined by ``"; "``.
- categorical values as their string (a float that is a whole number, as pandas sometimes reads
  ids, is written as an int: ``3.0`` -> ``3``).
- numeric values rounded for a language model, see `format_number`: whole numbers as ints, else
  1 decimal from 1 up, 2 significant digits below 1; digits beyond that are noise to the model
  and cost tokens.
- text verbatim, unless the run's prompt budget (`PromptFields.text_max_chars`, derived from the
  training prompts by `rgalign.training.prompt_budget`) caps that field: then its *oldest* part
  (the start) is cut at a word boundary and replaced by the marker ``...`` (`cut_text`), so the
  structured fields are never what a token budget drops.
- a value that is ``None`` or NaN is written ``?`` (unknown); a field missing from the dict is a
  `DataError`: silently prompting without it would hide a broken request.

The SFT target (`build_target`) is the clicked intents' texts, joined by ``" ; "``, with a
leading space so that ``prompt + target`` reads naturally ("... | query: Where is my parcel?").
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from rgalign.data.schema import FEATURE_GROUPS, FeatureGroups
from rgalign.errors import DataError

QUERY_MARKER = "query:"
SECTION_SEP = " | "
FIELD_SEP = "; "
TARGET_SEP = " ; "
UNKNOWN = "?"
CUT_MARKER = "..."


@dataclass(frozen=True)
class PromptFields(FeatureGroups):
    """Which feature names go where in the prompt (names in their declared order)."""

    # (field, max characters) of the text fields the prompt budget caps; () caps nothing
    text_max_chars: tuple[tuple[str, int], ...] = ()

    def __post_init__(self) -> None:
        for name in FEATURE_GROUPS:
            object.__setattr__(self, name, tuple(getattr(self, name)))
        caps = dict(self.text_max_chars.items() if isinstance(self.text_max_chars, Mapping) else self.text_max_chars)
        unknown = sorted(set(caps) - set(self.user_text + self.context_text))
        if unknown:
            raise DataError(f"prompt budget caps {', '.join(unknown)}, which are not text fields")
        object.__setattr__(self, "text_max_chars", tuple((str(k), int(v)) for k, v in caps.items()))
        names = [n for group in self._groups() for n in group]
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            raise DataError(f"prompt fields declared twice: {', '.join(dupes)}")

    def _groups(self) -> tuple[tuple[str, ...], ...]:
        return (
            self.user_categorical,
            self.user_numeric,
            self.user_text,
            self.context_categorical,
            self.context_numeric,
            self.context_text,
        )

    @property
    def all_names(self) -> tuple[str, ...]:
        return tuple(n for group in self._groups() for n in group)

    @classmethod
    def from_schema(cls, schema: Any) -> PromptFields:
        """From anything with the six tuples of `rgalign.data.schema.DatasetSchema`."""
        return cls(**{name: tuple(getattr(schema, name)) for name in FEATURE_GROUPS})

    def with_text_budget(self, caps: Mapping[str, int]) -> PromptFields:
        """The same fields with text fields capped at ``caps`` characters."""
        return PromptFields(**{name: getattr(self, name) for name in FEATURE_GROUPS}, text_max_chars=tuple(caps.items()))

    def to_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = {name: list(getattr(self, name)) for name in FEATURE_GROUPS}
        if self.text_max_chars:
            d["text_max_chars"] = dict(self.text_max_chars)
        return d

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> PromptFields:
        return cls(**{name: tuple(d.get(name, ())) for name in FEATURE_GROUPS},
                   text_max_chars=tuple(dict(d.get("text_max_chars") or {}).items()))


def _is_missing(value: Any) -> bool:
    return value is None or (isinstance(value, float) and math.isnan(value))


def format_number(value: Any, name: str = "?") -> str:
    """A numeric feature as a short string: 31 -> "31", 6.0 -> "6", 6.25 -> "6.2",
    1234.56 -> "1235", 0.1234 -> "0.12", 0.00001 -> "0", None/NaN -> "?".

    A string that parses as a number is accepted (JSON clients send "31"); anything else is a
    `DataError` naming the field.
    """
    if _is_missing(value):
        return UNKNOWN
    if isinstance(value, str):
        try:
            value = float(value)
        except ValueError:
            raise DataError(f"numeric feature {name!r} has a non-numeric value {value!r}") from None
    try:
        x = float(value)
    except (TypeError, ValueError):
        raise DataError(f"numeric feature {name!r} has a non-numeric value {value!r}") from None
    if math.isnan(x):
        return UNKNOWN
    if math.isinf(x):
        return "inf" if x > 0 else "-inf"
    if x == round(x) and abs(x) < 1e15:
        return str(int(round(x)))
    if abs(x) >= 100:  # three digits or more: the fraction is noise
        return str(int(round(x)))
    if abs(x) >= 1:
        s = f"{x:.1f}"
    elif abs(x) < 1e-4:  # below this, :g would switch to exponent notation
        return "0"
    else:
        s = f"{x:.2g}"  # two significant digits: 0.1234 -> 0.12, 0.0012 -> 0.0012
    s = s.rstrip("0").rstrip(".") if "." in s else s
    return "0" if s in ("-0", "") else s


def format_category(value: Any) -> str:
    """A categorical value as its string; whole floats as ints; None/NaN as "?"."""
    if _is_missing(value):
        return UNKNOWN
    if isinstance(value, float) and value == round(value):
        return str(int(value))
    return str(value)


def cut_text(text: str, max_chars: int) -> str:
    """``text`` if it has at most ``max_chars`` characters; else its end, cut at a word boundary,
    after the marker ``...``: the oldest part goes first (a history field lists oldest first),
    and the result never exceeds ``max_chars``.

    >>> cut_text("Alien (1979); Heat (1995); Fargo (1996)", 30)
    '... Heat (1995); Fargo (1996)'
    """
    if len(text) <= max_chars:
        return text
    room = max_chars - len(CUT_MARKER) - 1
    if room <= 0:
        return CUT_MARKER
    tail = text[len(text) - room :]
    if not text[len(text) - room - 1].isspace():  # started mid-word: drop that partial word
        space = tail.find(" ")
        tail = tail[space + 1 :] if space >= 0 else ""
    tail = tail.lstrip()
    return f"{CUT_MARKER} {tail}" if tail else CUT_MARKER


def _get(features: Mapping[str, Any], name: str) -> Any:
    if name not in features:
        raise DataError(f"feature {name!r} is missing from the request")
    return features[name]


def build_prompt(features: Mapping[str, Any], fields: PromptFields) -> str:
    """Serialise one request's raw features (``{name: value}``) as the reasoner's prompt.

    Extra keys in ``features`` are ignored (a request may carry ids the model does not use).
    See the module docstring for the format.
    """
    sections: list[str] = []
    for label, cats, nums in (
        ("user", fields.user_categorical, fields.user_numeric),
        ("context", fields.context_categorical, fields.context_numeric),
    ):
        parts = [f"{n}={format_category(_get(features, n))}" for n in cats]
        parts += [f"{n}={format_number(_get(features, n), n)}" for n in nums]
        if parts:
            sections.append(f"{label}: {FIELD_SEP.join(parts)}")
    caps = dict(fields.text_max_chars)
    for name in fields.user_text + fields.context_text:
        value = _get(features, name)
        text = UNKNOWN if _is_missing(value) else str(value)
        if name in caps:
            text = cut_text(text, caps[name])
        sections.append(f"{name}: {text}")
    sections.append(QUERY_MARKER)
    return SECTION_SEP.join(sections)


def build_target(intent_texts: Sequence[str]) -> str:
    """The SFT target for a request: its clicked intents' texts, with a leading space.

    >>> build_target(["Where is my parcel?", "Change delivery address"])
    ' Where is my parcel? ; Change delivery address'
    """
    texts = [t.strip() for t in intent_texts if t and t.strip()]
    if not texts:
        raise DataError("build_target needs at least one non-empty intent text")
    return " " + TARGET_SEP.join(texts)
