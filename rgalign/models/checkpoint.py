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


def read_checkpoint(directory: str | os.PathLike, kind: str) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    """(config dict, state dict) of a folder written by `save_module` for ``kind``."""
    directory = Path(directory)
    meta_path = directory / "ranker.json"
    if not meta_path.is_file():
        raise ConfigError(f"{os.fspath(directory)!r} is not a ranker checkpoint (no ranker.json)")
    meta = read_json(meta_path)
    if meta.get("kind") != kind:
        raise ConfigError(f"{os.fspath(directory)!r} holds a {meta.get('kind')!r} model, not a {kind!r}")
    if meta.get("format_version") != FORMAT_VERSION:
        raise ConfigError(f"{kind} checkpoint format {meta.get('format_version')} is not {FORMAT_VERSION}")
    return meta["config"], load_file(os.fspath(directory / "model.safetensors"))


def config_from_dict(cls: type, d: dict[str, Any]) -> Any:
    """Build the frozen config dataclass ``cls`` from a JSON dict: unknown keys are an error,
    lists become tuples (JSON has no tuples; frozen configs must stay hashable)."""
    import dataclasses

    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(d) - names)
    if unknown:
        raise ConfigError(f"unknown {cls.__name__} keys: {', '.join(unknown)}")
    return cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in d.items()})


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
