"""Ranker checkpoints: a folder with the weights as safetensors and the config as JSON.

    DIR/ranker.json          {"format_version", "kind", "config"}: what to build
    DIR/model.safetensors    the state dict (parameters and persistent buffers, e.g. the KB's
                             intent text table)

Written atomically (a half-written folder never looks whole); no pickles anywhere.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file
from torch import nn

from rgalign.errors import ConfigError
from rgalign.io import atomic_dir, read_json, write_json_atomic

FORMAT_VERSION = 1


def save_module(directory: str | os.PathLike, module: nn.Module, kind: str, config: dict[str, Any]) -> Path:
    """Write ``module``'s state dict and ``config`` under ``directory`` (replaced atomically)."""
    # clone: safetensors refuses tensors that share storage, and views of larger tensors
    state = {k: v.detach().cpu().contiguous().clone() for k, v in module.state_dict().items()}
    with atomic_dir(directory) as tmp:
        save_file(state, os.fspath(tmp / "model.safetensors"), metadata={"kind": kind})
        write_json_atomic(tmp / "ranker.json", {"format_version": FORMAT_VERSION, "kind": kind, "config": config})
    return Path(directory)


def read_meta(directory: str | os.PathLike, kind: str, meta_name: str = "ranker.json") -> dict[str, Any]:
    """The config dict of a checkpoint folder of ``kind`` (its ``meta_name`` JSON: format version,
    kind, config), checked: the one reader of every checkpoint's description (rankers here, the
    reasoner's ``reasoner.json`` too)."""
    directory = Path(directory)
    meta_path = directory / meta_name
    what = meta_name.removesuffix(".json")
    if not meta_path.is_file():
        raise ConfigError(f"{os.fspath(directory)!r} is not a {what} checkpoint (no {meta_name})")
    meta = read_json(meta_path)
    if meta.get("kind") != kind:
        raise ConfigError(f"{os.fspath(directory)!r} holds a {meta.get('kind')!r} model, not a {kind!r}")
    if meta.get("format_version") != FORMAT_VERSION:
        raise ConfigError(f"{kind} checkpoint format {meta.get('format_version')} is not {FORMAT_VERSION}")
    return meta["config"]


def read_checkpoint(directory: str | os.PathLike, kind: str) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    """(config dict, state dict) of a folder written by `save_module` for ``kind``."""
    config = read_meta(directory, kind)
    return config, load_weights(Path(directory) / "model.safetensors")


def load_weights(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """A safetensors file's tensors; a missing, truncated or corrupt file is one ConfigError line
    naming it (safetensors' own error is a bare ``SafetensorError`` without the path)."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{os.fspath(path)} is missing; re-run the stage that writes it")
    try:
        return load_file(os.fspath(path))
    except Exception as e:  # noqa: BLE001 - SafetensorError, OSError, ...: one line naming the file
        first = (str(e).strip().splitlines() or [type(e).__name__])[0]
        raise ConfigError(
            f"{os.fspath(path)} is unreadable ({first}): truncated or corrupt; re-run the stage that writes it"
        ) from None


# Checkpoints written before issue 12 (rankers without the cold-intent ids, the popularity gate and
# the query-intent affinity): their tensors under the new names, the new ones at the values that
# score exactly as those models did (gate 1, affinity 0, every intent known).
_RENAMED = {"intent_emb.weight": "intent_ids.emb.weight", "intent_bias": "intent_ids.bias"}
_ADDED = ("gate", "affinity", "intent_latent", "intent_ids.cold_emb", "intent_ids.cold_bias", "intent_ids.known")


def upgrade_ranker_state(state: dict[str, torch.Tensor], fresh: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """``state`` with older names renamed and absent new tensors taken from ``fresh`` (a newly
    built model's state dict, whose defaults reproduce the older model's scores)."""
    out = {_RENAMED.get(k, k): v for k, v in state.items()}
    for k in _ADDED:
        if k not in out and k in fresh:
            out[k] = fresh[k]
    return out
