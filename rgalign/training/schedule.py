"""The learning-rate schedules of the training loops, in one place so that none divides by the
length of a phase that a small budget leaves empty.

`one_cycle`, the reasoner's loops (stages 1, 3, 4, 5): a short warm-up to the peak rate, then a
cosine decay, with AdamW's beta1 cycled against it. `linear_warmup`, the rankers' (0, 2, 6).

Why not ``torch.optim.lr_scheduler.OneCycleLR`` itself: it divides by the length of each phase,
and a phase can have no length on a small budget. With ``total_steps * pct_start == 1`` (10 steps
at ``pct_start`` 0.1, 20 at 0.05: 2 epochs of a tiny set) the warm-up phase ends at step 0 and
its constructor raises ``ZeroDivisionError``; with ``total_steps == 1`` the only step trains at
the final rate, 2.5e5 times below the peak, i.e. not at all. `OneCycle` computes the very same
numbers as ``OneCycleLR`` (same formulas, same order of float operations: a test compares them
bit for bit over a grid of step counts) wherever ``OneCycleLR`` is defined, and:

- a phase of no length is at its end value (a warm-up that ends at step 0 starts at the peak:
  the limit of a warm-up a hair shorter than one step, which ``OneCycleLR`` already gives);
- a schedule of one step takes it at the peak rate: there is nothing to warm up or anneal.

Example::

    sched = one_cycle(opt, max_lr=1e-3, total_steps=steps, pct_start=0.05)
    for batch in batches:
        ...; opt.step(); sched.step()
"""

from __future__ import annotations

import math

import torch

# OneCycleLR's defaults, which every loop used: start at max_lr / 25, end at start / 1e4, beta1
# cycled between 0.95 (low rate) and 0.85 (peak rate)
DIV_FACTOR = 25.0
FINAL_DIV_FACTOR = 1e4
MAX_MOMENTUM = 0.95
BASE_MOMENTUM = 0.85


def _cos(start: float, end: float, pct: float) -> float:
    """Cosine anneal from ``start`` to ``end`` as ``pct`` goes 0 -> 1 (OneCycleLR's formula)."""
    cos_out = math.cos(math.pi * pct) + 1
    return end + (start - end) / 2.0 * cos_out


class OneCycle:
    """One-cycle learning rate (and beta1) over ``total_steps`` optimizer steps.

    Sets every parameter group's ``lr`` (and ``betas[0]`` for Adam-style optimizers, ``momentum``
    for SGD) for step 0 on construction and for the next step on each `step` call.
    """

    def __init__(self, optimizer: torch.optim.Optimizer, max_lr: float, total_steps: int, pct_start: float) -> None:
        if not 0.0 <= pct_start <= 1.0:
            raise ValueError(f"pct_start must be in [0, 1], got {pct_start}")
        self.optimizer = optimizer
        self.total_steps = max(1, int(total_steps))
        self.max_lr = float(max_lr)
        self.initial_lr = self.max_lr / DIV_FACTOR
        self.min_lr = self.initial_lr / FINAL_DIV_FACTOR
        self.use_beta1 = "betas" in optimizer.defaults
        # (last step of the phase, lr at its start, lr at its end, beta1 at start, beta1 at end)
        self.phases = [
            (float(pct_start * self.total_steps) - 1, self.initial_lr, self.max_lr, MAX_MOMENTUM, BASE_MOMENTUM),
            (self.total_steps - 1, self.max_lr, self.min_lr, BASE_MOMENTUM, MAX_MOMENTUM),
        ]
        self.step_num = 0
        self._apply()

    def lr_and_momentum(self, step: int) -> tuple[float, float]:
        """(learning rate, beta1) of 0-based optimizer step ``step``."""
        if self.total_steps == 1:
            return self.max_lr, BASE_MOMENTUM
        step = min(step, self.total_steps - 1)
        start_step = 0.0
        for i, (end_step, lr0, lr1, m0, m1) in enumerate(self.phases):
            if step <= end_step or i == len(self.phases) - 1:
                span = end_step - start_step
                pct = (step - start_step) / span if span > 0 else 1.0
                return _cos(lr0, lr1, pct), _cos(m0, m1, pct)
            start_step = end_step
        raise AssertionError("unreachable: the last phase always matches")

    def step(self) -> None:
        self.step_num += 1
        self._apply()

    def seek(self, step: int) -> None:
        """Set the rate (and beta1) of 0-based step ``step``: what ``step`` calls would have
        reached, for a loop that resumes at ``step`` (`global_loop`)."""
        self.step_num = step
        self._apply()

    def _apply(self) -> None:
        lr, momentum = self.lr_and_momentum(self.step_num)
        for group in self.optimizer.param_groups:
            group["lr"] = lr
            if self.use_beta1:
                group["betas"] = (momentum, *group["betas"][1:])
            elif "momentum" in group:
                group["momentum"] = momentum

    def get_last_lr(self) -> list[float]:
        return [g["lr"] for g in self.optimizer.param_groups]


def linear_warmup(step: int, warmup_steps: int) -> float:
    """The rankers' schedule (their rate then adapts to the valid GAUC, see `loops.EarlyStopping`):
    the factor of step ``step`` (0-based) of a linear warm-up over ``warmup_steps`` steps, 1 after
    it; a warm-up of fewer than one step is none (never a division by zero)."""
    return min(1.0, (step + 1) / max(1, warmup_steps))


def one_cycle(optimizer: torch.optim.Optimizer, max_lr: float, total_steps: int, pct_start: float) -> OneCycle:
    """The schedule every reasoner loop uses (see the module docstring)."""
    return OneCycle(optimizer, max_lr, total_steps, pct_start)
