"""A resumable training state that loads on any number of processes: safetensors + JSON, no pickles.

::

    DIR/train_state.json        {"format", "world_size" (of the writer), "param_groups", "meta"}
    DIR/model.safetensors       the full (unsharded) weights, keyed as in the unwrapped module
    DIR/optimizer.safetensors   the optimizer's per-parameter tensors, ``<fqn>/<name>`` (AdamW:
                                step, exp_avg, exp_avg_sq), full and unsharded

Why not ``torch.distributed.checkpoint`` (DCP) as the format: its ``.metadata`` file is a pickle,
and the project takes no pickles (safetensors / JSON / ONNX only). DCP's *state-dict* API is used
instead: `torch.distributed.checkpoint.state_dict.get_model_state_dict` /
``get_optimizer_state_dict`` with ``full_state_dict=True, cpu_offload=True`` gather the full state
on rank 0 (one parameter at a time, to CPU) from a plain, DDP or FSDP2 model, keyed by parameter
name; rank 0 writes it atomically. Loading, rank 0 reads the files and
``set_model_state_dict`` / ``set_optimizer_state_dict`` with ``broadcast_from_rank0=True`` send
each tensor to the other ranks, which keep their shard: so a state written by 2 processes resumes
on 1, or on 8. The cost: the full model passes through rank 0's memory (CPU) once per save.
"""

from __future__ import annotations

import os
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save_file
from torch import nn

from rgalign.errors import TrainError
from rgalign.io import atomic_dir, read_json, write_json_atomic
from rgalign.models.checkpoint import load_weights
from rgalign.training.distributed import DistInfo, barrier

FORMAT = "rgalign.train_state/1"
STATE_JSON = "train_state.json"


def exists(directory: str | os.PathLike) -> bool:
    return (Path(directory) / STATE_JSON).is_file()


def _options(dist: DistInfo, *, saving: bool):
    from torch.distributed.checkpoint.state_dict import StateDictOptions

    if not dist.enabled:  # no process group: plain full state dicts, nothing to gather
        return StateDictOptions(full_state_dict=True)
    if saving:
        return StateDictOptions(full_state_dict=True, cpu_offload=True)
    return StateDictOptions(full_state_dict=True, broadcast_from_rank0=True)


def save_train_state(
    directory: str | os.PathLike, model: nn.Module, optimizer: torch.optim.Optimizer, meta: dict[str, Any],
    dist: DistInfo,
) -> None:
    """Write the full state of ``model`` (plain, DDP or FSDP2) and ``optimizer`` plus ``meta``
    (JSON: step, data order, ...) to ``directory``, replacing it atomically. Collective: every
    rank calls it; rank 0 writes."""
    from torch.distributed.checkpoint.state_dict import get_model_state_dict, get_optimizer_state_dict

    opts = _options(dist, saving=True)
    weights = get_model_state_dict(model, options=opts)
    optim = get_optimizer_state_dict(model, optimizer, options=opts)
    if dist.is_main:
        tensors = {}
        for fqn, state in optim["state"].items():
            for name, value in state.items():
                if not isinstance(value, torch.Tensor):
                    value = torch.tensor(value)
                tensors[f"{fqn}/{name}"] = value.detach().cpu().contiguous()
        groups = [{k: (list(v) if isinstance(v, tuple) else v) for k, v in g.items()} for g in optim["param_groups"]]
        # tied parameters appear once per name: safetensors refuses shared storage, so clone
        weights = {k: v.detach().cpu().contiguous().clone() for k, v in weights.items()}
        with atomic_dir(directory) as tmp:
            save_file(weights, os.fspath(tmp / "model.safetensors"), metadata={"format": FORMAT})
            save_file(tensors, os.fspath(tmp / "optimizer.safetensors"), metadata={"format": FORMAT})
            write_json_atomic(tmp / STATE_JSON, {"format": FORMAT, "world_size": dist.world_size,
                                                 "param_groups": groups, "meta": meta})
    barrier(dist)


def load_train_state(
    directory: str | os.PathLike, model: nn.Module, optimizer: torch.optim.Optimizer, dist: DistInfo,
) -> dict[str, Any]:
    """Load a state written by `save_train_state` (by any number of processes) into ``model`` and
    ``optimizer`` on this world; returns its ``meta``. Collective: every rank calls it."""
    from torch.distributed.checkpoint.state_dict import set_model_state_dict, set_optimizer_state_dict

    directory = Path(directory)
    info = read_json(directory / STATE_JSON)  # small: every rank reads it (meta, param groups)
    if info.get("format") != FORMAT:
        raise TrainError(f"{directory}: training state format {info.get('format')!r}, expected {FORMAT!r}")
    opts = _options(dist, saving=False)
    weights: dict[str, torch.Tensor] = {}
    optim: dict[str, Any] = {"state": {}, "param_groups": info["param_groups"]}
    if dist.is_main:  # the others receive every tensor by broadcast
        weights = load_weights(directory / "model.safetensors")
        for key, value in load_weights(directory / "optimizer.safetensors").items():
            fqn, name = key.rsplit("/", 1)
            optim["state"].setdefault(fqn, {})[name] = value
    else:
        optim = {}
    set_model_state_dict(model, weights, options=opts)
    # strict=False: a parameter that never had a gradient (the latent projection under the LM
    # loss) has no AdamW state yet, on the writer as on the reader
    set_optimizer_state_dict(model, optimizer, optim, options=replace(opts, strict=False))
    return info["meta"]
