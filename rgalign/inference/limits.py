"""Request limits, checked at the boundary before any parsing or tokenization work is spent.

A served request reaches the preprocess step as raw bytes per batch item. Before ``json.loads``
runs on them, and before a prompt is tokenized, each item is held to `RequestLimits`:

- ``max_item_bytes`` of raw JSON per item: refused above it, so a 20 MB string never reaches
  the JSON parser or the tokenizer;
- ``max_text_chars`` per string value of a declared feature: refused above it (not silently
  truncated: the prompt keeps its *end*, so a cut chosen here could change the answer);
- values of declared features must be JSON scalars, integers within int64, categorical floats
  finite: what `build_prompt` and the encoders can format without raising.

Every refusal is a `RequestError` (its own HTTP 400) naming the item and the feature. The same
checks serve any consumer of raw requests (the python-backend preprocess, an in-process or fused
pipeline): call `decode_item` on raw bytes, or `check_record` on a parsed dict.

Example:
    >>> limits = RequestLimits(max_item_bytes=1024, max_text_chars=16)
    >>> decode_item(b'{"age": 31}', 0, limits)
    {'age': 31}
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass
from typing import Any

from rgalign.errors import ConfigError, RequestError

# JSON nesting deeper than this is refused before parsing: Python's decoder recurses once per
# level and raises RecursionError near 1,000; feature objects are one level of scalars.
MAX_JSON_DEPTH = 32
_INT64 = 2**63


@dataclass(frozen=True)
class RequestLimits:
    """Per-item limits of a raw request. Defaults and their reasons:

    - ``max_text_chars=4096``: a prompt is cut to the model's ``max_prompt_length`` tokens
      (96 to 512 for the shipped configs) and a token holds ~3-4 characters of this text, so
      4,096 characters of one field already exceed any prompt; tokenizing 4 KB takes well under
      a millisecond, where the 20 MB text of issue 16 took 28 s.
    - ``max_item_bytes=65536``: several text fields at the limit in multi-byte UTF-8 plus the
      scalar features fit; a request is at most ``max_batch`` items, so one request carries at
      most 1 MiB at the default batch of 16.
    """

    max_item_bytes: int = 65536
    max_text_chars: int = 4096

    def __post_init__(self) -> None:
        if self.max_item_bytes < 64:
            raise ConfigError(f"max_item_bytes must be >= 64, got {self.max_item_bytes}")
        if self.max_text_chars < 1:
            raise ConfigError(f"max_text_chars must be >= 1, got {self.max_text_chars}")

    def to_dict(self) -> dict[str, int]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> RequestLimits:
        return cls(**{k: int(d[k]) for k in cls.__dataclass_fields__ if k in d and str(d[k]).strip()})


def _json_depth_over(text: str, limit: int) -> bool:
    """Whether brackets outside strings nest deeper than ``limit`` (a linear scan, no recursion)."""
    depth = 0
    in_string = escaped = False
    for ch in text:
        if in_string:
            if escaped:
                escaped = False
            elif ch == "\\":
                escaped = True
            elif ch == '"':
                in_string = False
        elif ch == '"':
            in_string = True
        elif ch in "[{":
            depth += 1
            if depth > limit:
                return True
        elif ch in "]}":
            depth -= 1
    return False


def decode_item(raw: Any, i: int, limits: RequestLimits) -> dict[str, Any]:
    """One batch item's raw bytes (or str) -> its feature dict, or RequestError naming item ``i``."""
    data = raw if isinstance(raw, (bytes, bytearray)) else str(raw).encode("utf-8", "surrogatepass")
    if len(data) > limits.max_item_bytes:
        raise RequestError(
            f"features[{i}]: {len(data):,} bytes of JSON, over the limit of "
            f"{limits.max_item_bytes:,} per item (deploy --max-item-bytes)"
        )
    try:
        text = bytes(data).decode("utf-8")
    except UnicodeDecodeError as e:
        raise RequestError(f"features[{i}]: not UTF-8 text ({e.reason})") from None
    if _json_depth_over(text, MAX_JSON_DEPTH):
        raise RequestError(f"features[{i}]: JSON nested deeper than {MAX_JSON_DEPTH} levels")
    try:
        record = json.loads(text)
    except json.JSONDecodeError as e:
        raise RequestError(f"features[{i}]: malformed JSON ({e.msg} at line {e.lineno} column {e.colno})") from None
    except (ValueError, RecursionError) as e:  # e.g. an integer of more than 4,300 digits
        raise RequestError(f"features[{i}]: unreadable JSON ({one_line(e)})") from None
    if not isinstance(record, dict):
        raise RequestError(f"features[{i}]: expected a JSON object of features, got {_kind(record)}")
    return record


def check_record(
    record: Mapping[str, Any],
    i: int,
    names: Iterable[str],
    limits: RequestLimits,
    categorical: Iterable[str] = (),
) -> None:
    """RequestError unless every declared feature of ``record`` (``names``) is a value the
    prompt and the encoders can take: a JSON scalar, an integer within int64, a string within
    ``max_text_chars``, a finite float for a ``categorical`` feature. Missing features and type
    mismatches are left to the encoders, which name them."""
    cats = set(categorical)
    for name in names:
        if name not in record:
            continue
        v = record[name]
        if v is None or isinstance(v, bool):
            continue
        if isinstance(v, str):
            if len(v) > limits.max_text_chars:
                raise RequestError(
                    f"features[{i}]: feature '{name}' has {len(v):,} characters, over the limit of "
                    f"{limits.max_text_chars:,} (deploy --max-text-chars)"
                )
        elif isinstance(v, int):
            if not -_INT64 <= v < _INT64:
                raise RequestError(f"features[{i}]: feature '{name}' is an integer out of the int64 range")
        elif isinstance(v, float):
            if name in cats and not math.isfinite(v):
                raise RequestError(f"features[{i}]: categorical feature '{name}' must be finite, got {v!r}")
        else:
            raise RequestError(
                f"features[{i}]: feature '{name}' must be a string or a number (or null), got {_kind(v)}"
            )


def _kind(value: Any) -> str:
    return type(value).__name__  # Python's names for JSON values: dict, list, str, int, float


def one_line(error: BaseException, limit: int = 200) -> str:
    """``Type: first line of the message``, at most ``limit`` characters: what a client is told
    about an unexpected exception (never a traceback, never more than one line)."""
    text = str(error).strip().splitlines()
    first = text[0] if text else ""
    line = f"{type(error).__name__}: {first}" if first else type(error).__name__
    return line if len(line) <= limit else line[: limit - 3] + "..."
