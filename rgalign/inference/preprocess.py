"""Raw feature dicts -> model inputs, as every server and gate prepares them.

    records (B dicts) --build_prompt--> prompts --tokenise, left padding, max_len-->
        input_ids, attention_mask (B, T) int64        + encode_records --> cat (B, Fc), num (B, Fn)

The tokenizer an export saved is loaded with `transformers.PreTrainedTokenizerFast` (a
``tokenizer.json``), which needs no torch: `AutoTokenizer` would import it.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from rgalign.artifacts.manifest import read_manifest
from rgalign.data.encoders import FeatureEncoders
from rgalign.io import read_json
from rgalign.models.prompt import PromptFields, build_prompt
from rgalign.models.saved_tokenizer import open_saved_tokenizer


def load_export_tokenizer(path: str | os.PathLike, padding_side: str = "left") -> Any:
    """The reasoner's tokenizer as an export saved it (``save_pretrained``), without torch."""
    from transformers import PreTrainedTokenizerFast

    return open_saved_tokenizer(
        path, lambda p: PreTrainedTokenizerFast.from_pretrained(p, local_files_only=True), padding_side
    )


@dataclass(frozen=True)
class Batch:
    """Model inputs of B requests: input_ids, attention_mask (B, T) int64; cat (B, Fc) int64;
    num (B, Fn) float32."""

    input_ids: np.ndarray
    attention_mask: np.ndarray
    cat: np.ndarray
    num: np.ndarray

    def __len__(self) -> int:
        return int(self.cat.shape[0])


class Preprocessor:
    """Raw feature dicts -> `Batch`: the prompt (`build_prompt`), its tokens (left padding,
    truncated to ``max_len`` keeping the end, where the ``query:`` marker is) and the ranker's
    encoded features (`FeatureEncoders.encode_records`)."""

    def __init__(self, tokenizer: Any, fields: Any, encoders: Any, max_len: int) -> None:
        self.tokenizer = tokenizer  # padded on the left per call; its own setting is left alone
        self.fields = fields
        self.encoders = encoders
        self.max_len = int(max_len)

    @classmethod
    def from_export(cls, export_dir: str | os.PathLike) -> Preprocessor:
        root = Path(export_dir)
        manifest = read_manifest(root)
        serving = manifest["serving"]
        return cls(
            load_export_tokenizer(root / serving["tokenizer"], padding_side="left"),
            PromptFields.from_dict(read_json(root / serving["prompt_fields"])),
            FeatureEncoders.from_json(root / serving["encoders"]),
            serving["max_prompt_length"],
        )

    def prompts(self, records: Sequence[Mapping[str, Any]]) -> list[str]:
        return [build_prompt(r, self.fields) for r in records]

    def tokenize(self, prompts: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
        """(input_ids, attention_mask), each (B, T) int64, T = the longest prompt (<= max_len)."""
        enc = self.tokenizer(
            list(prompts), padding=True, padding_side="left", truncation=True, max_length=self.max_len,
            return_tensors="np",
        )
        return enc["input_ids"].astype(np.int64), enc["attention_mask"].astype(np.int64)

    def __call__(self, records: Sequence[Mapping[str, Any]]) -> Batch:
        records = list(records)
        ids, mask = self.tokenize(self.prompts(records))
        cat, num = self.encoders.encode_records(records)
        return Batch(ids, mask, cat.astype(np.int64), num.astype(np.float32))
