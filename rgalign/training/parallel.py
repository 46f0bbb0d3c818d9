"""How a model is trained on several processes: replicated (DDP) or sharded (FSDP2).

DDP keeps the whole model on every rank: parameters, gradients and AdamW's two moments, 16 bytes
per fp32 parameter (9.6 GB per rank at Qwen3-0.6B's 0.6B parameters, 64 GB at Qwen3-4B's). FSDP2
(`torch.distributed.fsdp.fully_shard`) keeps ``1/world`` of each on a rank and gathers one decoder
layer's parameters at a time for its forward and backward. ``--dist auto`` picks FSDP from
`FSDP_AUTO_PARAMS` parameters up, DDP below (the default 3M-parameter reasoner: one all-reduce a
step is cheaper than two collectives per layer).

FSDP2 changes the module it is given in place (its class, its parameters become DTensors), while
the stages keep using the reasoner after training (rank 0 saves it, latents are computed from
it). So FSDP trains a *sharded copy*: built on the meta device (no second full copy of the
weights), sharded, then filled from the original; `TrainWrap.finish` gathers the trained weights
back into the original, one tensor at a time. With ``release_original`` the original's
parameters are moved to the meta device while the copy trains, so a rank holds ``1/world`` of the
model and not a full replica besides.

Tested here on CPU with gloo (torch 2.13: gloo has ``all_gather_into_tensor`` and
``reduce_scatter_tensor``, which FSDP2 needs), 1-2 processes and 2 "nodes" on localhost
(tests/unit/test_training_parallel.py). NCCL/GPU is written against the same official API but
was not run here.

Example::

    >>> wrap = wrap_for_training(_LMLoss(reasoner), dist)          # doctest: +SKIP
    >>> opt = torch.optim.AdamW(wrap.parameters(), lr=1e-3)         # doctest: +SKIP
    >>> loss = wrap.module(ids, mask, labels); loss.backward(); opt.step()  # doctest: +SKIP
    >>> wrap.finish()   # the trained weights are in the original module again  # doctest: +SKIP
"""

from __future__ import annotations

import copy
from collections.abc import Iterator
from dataclasses import dataclass, field

import torch
from torch import nn

from rgalign.training.distributed import DistInfo, device

# From this many parameters `--dist auto` shards (FSDP): a replica's 16 B/parameter of weights,
# gradients and AdamW moments is 1.6 GB there, and grows with the backbone; below it a replica
# fits any node and DDP's single all-reduce per step is the cheaper collective.
FSDP_AUTO_PARAMS = 100_000_000


def parameter_count(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def resolve_strategy(module: nn.Module, dist: DistInfo) -> str:
    """``"none"`` (one process), ``"ddp"`` or ``"fsdp"`` for ``module`` under ``dist``."""
    if not dist.enabled:
        return "none"
    if dist.strategy != "auto":
        return dist.strategy
    return "fsdp" if parameter_count(module) >= FSDP_AUTO_PARAMS else "ddp"


def dist_record(dist: DistInfo, module: nn.Module) -> dict[str, object]:
    """How a stage trained ``module``, for its stage.json: processes and strategy."""
    return {"world_size": dist.world_size, "strategy": resolve_strategy(module, dist),
            "parameters": parameter_count(module)}


@dataclass
class TrainWrap:
    """A module made ready for multi-process training.

    ``module``: what to call in the training loop (its ``forward`` runs the collectives);
    ``parameters()``: what the optimizer steps; `finish` puts the trained weights back into
    ``original`` (a no-op unless sharded). ``strategy``: ``none`` / ``ddp`` / ``fsdp``.
    """

    module: nn.Module
    original: nn.Module
    strategy: str
    _buffers: dict[str, torch.Tensor] = field(default_factory=dict, repr=False)
    _released: bool = False
    _tied: list[list[str]] = field(default_factory=list, repr=False)

    def parameters(self) -> Iterator[nn.Parameter]:
        return (p for p in self.module.parameters() if p.requires_grad)

    def finish(self) -> nn.Module:
        """Gather the sharded copy's weights into ``original`` on every rank (collective: every
        rank calls it). Returns ``original``."""
        if self.strategy != "fsdp":
            return self.original
        from torch.distributed.tensor import DTensor

        if self._released:
            self.original.to_empty(device=torch.device("cpu"))
            _retie(self.original, self._tied)
            for name, buf in self.original.named_buffers():
                buf.copy_(self._buffers[name])
        target = self.original.state_dict(keep_vars=True)
        with torch.no_grad():
            # one tensor gathered at a time: the peak is one full tensor above the shards
            for name, value in self.module.state_dict().items():
                full = value.full_tensor() if isinstance(value, DTensor) else value
                target[name].copy_(full.to(target[name].device))
        self.module = self.original
        self.strategy = "none"
        return self.original


def wrap_for_training(
    module: nn.Module, dist: DistInfo, *, find_unused: bool = False, release_original: bool = False,
    mixed_precision: bool | None = None,
) -> TrainWrap:
    """``module`` wrapped for ``dist``: itself (one process), DDP, or a sharded FSDP2 copy.

    ``find_unused``: DDP's flag for modules some of whose parameters get no gradient (FSDP2 needs
    no flag). ``release_original`` (FSDP): free the original's parameters while the copy trains.
    ``mixed_precision`` (FSDP): bf16 compute with fp32 gradient reduction; default on where CUDA
    supports bf16, off on CPU.
    """
    strategy = resolve_strategy(module, dist)
    if strategy == "none":
        return TrainWrap(module, module, "none")
    if strategy == "ddp":
        return TrainWrap(nn.parallel.DistributedDataParallel(module, find_unused_parameters=find_unused), module, "ddp")
    return _fsdp(module, dist, release_original, mixed_precision)


def shard_units(module: nn.Module) -> list[nn.Module]:
    """The submodules FSDP shards as one unit each: a Hugging Face model's decoder layers (the
    classes it lists in ``_no_split_modules``), else the entries of its longest ``ModuleList``.
    The rest (embeddings, final norm, LM head, the latent projection) is the root's unit: tied
    input and output embeddings must share one unit."""
    names: set[str] = set()
    for m in module.modules():
        names.update(getattr(m, "_no_split_modules", None) or [])
    units = [m for m in module.modules() if type(m).__name__ in names]
    if not units:
        lists = [m for m in module.modules() if isinstance(m, nn.ModuleList)]
        units = list(max(lists, key=len)) if lists else []
    return units


def _fsdp(module: nn.Module, dist: DistInfo, release_original: bool, mixed_precision: bool | None) -> TrainWrap:
    from torch.distributed.checkpoint.state_dict import StateDictOptions, set_model_state_dict
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

    dev = device(dist)
    if mixed_precision is None:
        mixed_precision = dev.type == "cuda" and torch.cuda.is_bf16_supported()
    mp = MixedPrecisionPolicy(param_dtype=torch.bfloat16, reduce_dtype=torch.float32) if mixed_precision else MixedPrecisionPolicy()
    mesh = init_device_mesh(dev.type, (dist.world_size,))
    buffers = {name: b.detach().clone() for name, b in module.named_buffers()}
    shadow = _meta_copy(module)
    for unit in shard_units(shadow):
        fully_shard(unit, mesh=mesh, mp_policy=mp)
    fully_shard(shadow, mesh=mesh, mp_policy=mp)
    shadow.to_empty(device=dev)
    with torch.no_grad():
        for name, buf in shadow.named_buffers():  # non-persistent ones (rotary frequencies) too
            buf.copy_(buffers[name])
    # every rank holds the full original: each cuts its own shard, no broadcast needed
    set_model_state_dict(shadow, module.state_dict(), options=StateDictOptions(full_state_dict=True, strict=False))
    tied = _tied_groups(module)
    if release_original:
        module.to(torch.device("meta"))
    shadow.train(module.training)
    return TrainWrap(shadow, module, "fsdp", buffers, release_original, tied)


def _tied_groups(module: nn.Module) -> list[list[str]]:
    """Names that share one parameter (tied input and output embeddings), each group in order."""
    groups: dict[int, list[str]] = {}
    for name, p in module.named_parameters(remove_duplicate=False):
        groups.setdefault(id(p), []).append(name)
    return [names for names in groups.values() if len(names) > 1]


def _retie(module: nn.Module, groups: list[list[str]]) -> None:
    """Make each group's names one parameter again (moving a module off the meta device gives
    every name its own new tensor)."""
    for names in groups:
        shared = module.get_parameter(names[0])
        for name in names[1:]:
            owner, _, leaf = name.rpartition(".")
            setattr(module.get_submodule(owner), leaf, shared)


def _meta_copy(module: nn.Module) -> nn.Module:
    """A copy of ``module`` whose parameters are on the meta device (no storage); buffers are
    copied, plain attributes (configs, a tokenizer) shared. Tied parameters stay tied: one
    parameter object has one copy."""
    memo: dict[int, object] = {}
    for p in module.parameters():
        memo[id(p)] = nn.Parameter(torch.empty_like(p, device="meta"), requires_grad=p.requires_grad)
    for m in module.modules():
        for key, value in vars(m).items():
            if not key.startswith("_") and not isinstance(value, (torch.Tensor, nn.Module)):
                memo[id(value)] = value
    return copy.deepcopy(module, memo)
