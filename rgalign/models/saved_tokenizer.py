"""Opening a tokenizer folder written by ``save_pretrained``, without torch: the checks and
settings shared by training (`rgalign.models.tokenizer.load_tokenizer`, through `AutoTokenizer`)
and serving (`rgalign.inference.preprocess`, through `PreTrainedTokenizerFast`, which needs no
torch)."""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any

from rgalign.errors import ConfigError


def open_saved_tokenizer(path: str | os.PathLike, load: Callable[[str], Any], padding_side: str | None = None) -> Any:
    """``load(folder)`` on a local folder (never the hub); `ConfigError` in one line if it fails.
    A tokenizer without a pad token pads with its end-of-sequence token (hub LLMs often have none)."""
    if not os.path.isdir(path):
        raise ConfigError(f"tokenizer folder {os.fspath(path)!r} does not exist")
    try:
        tok = load(os.fspath(path))
    except Exception as e:  # noqa: BLE001 - any failure is one readable line
        raise ConfigError(f"cannot load a tokenizer from {os.fspath(path)!r}: {e}") from None
    if padding_side is not None:
        tok.padding_side = padding_side
    if tok.pad_token is None:  # padding needs one
        tok.pad_token = tok.eos_token
    return tok
