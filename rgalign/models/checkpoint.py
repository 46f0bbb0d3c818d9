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
    return meta["config"], load_weights(directory / "model.safetensors")


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


def config_from_dict(cls: type, d: dict[str, Any]) -> Any:
    """Build the frozen config dataclass ``cls`` from a JSON dict: unknown keys are an error,
    lists become tuples (JSON has no tuples; frozen configs must stay hashable)."""
    import dataclasses

    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(d) - names)
    if unknown:
        raise ConfigError(f"unknown {cls.__name__} keys: {', '.join(unknown)}")
    return cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in d.items()})
