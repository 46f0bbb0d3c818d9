"""Two facts about a module the RGA functions need: where its weights are, and a context that
runs it in eval mode and gives every submodule its own mode back afterwards."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch
from torch import nn

from rgalign.errors import TrainError


def module_device(module: nn.Module) -> torch.device:
    p = next(module.parameters(), None)
    return p.device if p is not None else torch.device("cpu")


@contextmanager
def eval_mode(module: nn.Module) -> Iterator[None]:
    """Put ``module`` (and every submodule) in eval mode; restore each one's mode afterwards.

    Modes are restored per submodule, not with ``module.train(previous)``, so a model whose
    parts were deliberately in different modes (a frozen sub-tower in eval) comes back as it was.
    """
    modes = [(m, m.training) for m in module.modules()]
    module.eval()
    try:
        still = [type(m).__name__ for m in module.modules() if m.training]
        if still:  # a submodule overriding train()/eval() would make the reward noisy
            raise TrainError(f"could not put {', '.join(sorted(set(still)))} in eval mode")
        yield
    finally:
        for m, mode in modes:
            m.training = mode
