"""Guards for the models a stage must not change (the reward model, the DPO reference, the RG-CL
target encoder): `freeze` them, checksum their state (`param_checksums`) before and after, and
name what changed (`changed_names`); `FrozenModels` does all three for a stage."""

from __future__ import annotations

import math
from collections.abc import Mapping

import torch
from torch import nn

from rgalign.errors import TrainError


def freeze(module: nn.Module) -> nn.Module:
    """Freeze a reference / reward model in place: no parameter requires grad, eval mode."""
    for p in module.parameters():
        p.requires_grad_(False)
    return module.eval()


@torch.no_grad()
def param_checksums(module: nn.Module) -> dict[str, float]:
    """One float per state-dict entry (parameters and buffers): a position-weighted float64
    sum, ``sum_k x_k * (1 + (k mod 97) / 97)``, so a changed element, a sign flip or two
    swapped elements all change it (a plain sum misses swaps and cancelling updates)."""
    out: dict[str, float] = {}
    for name, t in module.state_dict().items():
        x = t.detach().flatten().cpu().double()
        w = 1.0 + (torch.arange(x.numel(), dtype=torch.float64) % 97) / 97.0
        out[name] = float((x * w).sum())
    return out


def changed_names(before: Mapping[str, float], after: Mapping[str, float], rtol: float = 0.0) -> list[str]:
    """Names whose checksum differs (beyond ``rtol`` relative), or that exist on one side only."""
    names = sorted(set(before) | set(after))
    out = []
    for k in names:
        if k not in before or k not in after:
            out.append(k)
            continue
        x, y = before[k], after[k]
        if not (x == y or (math.isfinite(x) and math.isfinite(y) and abs(x - y) <= rtol * max(abs(x), abs(y)))):
            out.append(k)
    return out


def frozen_unchanged(before: Mapping[str, float], after: Mapping[str, float], rtol: float = 0.0) -> bool:
    """True when two `param_checksums` snapshots are identical (exactly, by default)."""
    return not changed_names(before, after, rtol)


class FrozenModels:
    """Checksums of models that a stage must not change; `check` raises if one did."""

    def __init__(self, **models: nn.Module) -> None:
        self.models = {k: freeze(m) for k, m in models.items()}
        self.before = {k: param_checksums(m) for k, m in self.models.items()}

    def check(self, stage: str) -> dict[str, bool]:
        out = {}
        for k, m in self.models.items():
            changed = changed_names(self.before[k], param_checksums(m))
            if changed:
                raise TrainError(f"{stage}: the frozen {k} changed ({', '.join(changed[:3])}); this is a bug")
            out[k] = True
        return out
