"""The learning-rate schedules on small budgets: one step and ten steps train, and never divide by
zero (torch's OneCycleLR did, with total_steps * pct_start == 1), and every other budget keeps
OneCycleLR's exact numbers, so the default runs' results do not move."""

from __future__ import annotations

import math
import types
import warnings

import numpy as np
import pytest
import torch

from rgalign.training import loops
from rgalign.training.alignment.common import train_policy
from rgalign.training.distributed import DistInfo
from rgalign.training.schedule import linear_warmup, one_cycle
from tiny import TINY_FIELDS, tiny_reasoner, tiny_requests
from rgalign.models.prompt import build_prompt


def _opt() -> torch.optim.Optimizer:
    return torch.optim.AdamW([torch.nn.Parameter(torch.zeros(1))], lr=1e-3)


def test_one_cycle_is_onecyclelr_bit_for_bit_wherever_that_is_defined():
    warnings.simplefilter("ignore")  # OneCycleLR warns when stepped without an optimizer step
    compared = 0
    for total in [*range(2, 42), 125, 997]:
        for pct in (0.05, 0.1, 0.3):
            ref_opt, opt = _opt(), _opt()
            try:
                ref = torch.optim.lr_scheduler.OneCycleLR(ref_opt, max_lr=1e-3, total_steps=total, pct_start=pct)
            except ZeroDivisionError:
                continue
            sched = one_cycle(opt, 1e-3, total, pct)
            for _ in range(total):
                assert opt.param_groups[0]["lr"] == ref_opt.param_groups[0]["lr"]
                assert opt.param_groups[0]["betas"] == ref_opt.param_groups[0]["betas"]
                ref.step()
                sched.step()
                compared += 1
    assert compared > 3000


@pytest.mark.parametrize(("total", "pct"), [(10, 0.1), (20, 0.05), (1, 0.05), (1, 0.1), (2, 0.5), (5, 1.0)])
def test_budgets_where_onecyclelr_fails_or_trains_nothing(total, pct):
    opt = _opt()
    sched = one_cycle(opt, 1e-3, total, pct)
    lrs = []
    for _ in range(total):
        lrs.append(opt.param_groups[0]["lr"])
        sched.step()
    assert all(math.isfinite(lr) and 0 < lr <= 1e-3 for lr in lrs)
    assert max(lrs) == pytest.approx(1e-3)  # the peak is reached, also by a single step
    if total * pct == 1:  # a warm-up ending at step 0 starts at the peak
        assert lrs[0] == pytest.approx(1e-3)


def test_the_rankers_warmup_never_divides_by_zero():
    assert linear_warmup(0, 0) == 1.0 and linear_warmup(0, 1) == 1.0
    assert linear_warmup(0, 4) == 0.25 and linear_warmup(9, 4) == 1.0


def _examples(n: int) -> tuple[list[str], list[str]]:
    prompts = [build_prompt(r, TINY_FIELDS) for r in tiny_requests(n, seed=3)]
    return prompts, [" where is my parcel"] * n


@pytest.mark.parametrize(("n", "batch", "epochs"), [(1, 4, 1), (10, 1, 1), (10, 1, 2), (3, 2, 2)],
                         ids=["1-step", "10-steps", "2-epochs-20-steps", "2-epochs-tiny-set"])
def test_reasoner_sft_trains_on_tiny_budgets(n, batch, epochs):
    torch.manual_seed(0)
    reasoner = tiny_reasoner()
    before = reasoner.backbone.lm_head.weight.detach().clone()
    prompts, targets = _examples(n)
    res = loops.train_sft(reasoner, reasoner.tokenizer, prompts, targets, epochs=epochs, batch_size=batch, lr=1e-3,
                          max_len=96, seed=0, dist=DistInfo(), quiet=True)
    assert len(res.log.rows) == epochs * math.ceil(n / batch)
    assert math.isfinite(res.final_loss)
    assert not torch.equal(before, reasoner.backbone.lm_head.weight)  # it trained, even the single step


@pytest.mark.parametrize("n", [1, 10], ids=["1-step", "10-steps"])
def test_the_dpo_and_rg_cl_loop_trains_on_tiny_budgets(n):
    reasoner = tiny_reasoner()
    ctx = types.SimpleNamespace(dist=DistInfo(), quiet=True)
    prompts, _ = _examples(n)
    target = torch.nn.functional.normalize(torch.randn(n, reasoner.config.d_query, generator=torch.Generator().manual_seed(0)), dim=-1)
    from rgalign.models.tokenizer import encode_prompts

    def step(idx: np.ndarray):
        enc = encode_prompts(reasoner.tokenizer, [prompts[i] for i in idx], 96)
        z = reasoner(enc["input_ids"], enc["attention_mask"])
        loss = (1 - (z * target[idx]).sum(-1)).mean()
        return loss, {"loss": float(loss.detach())}

    before = reasoner.proj.weight.detach().clone()
    log = train_policy(ctx, reasoner, n, step, epochs=1, batch_size=1, lr=1e-3, weight_decay=0.0, seed=0,
                       description="t")
    assert len(log.rows) == n and all(math.isfinite(r["loss"]) for r in log.rows)
    assert not torch.equal(before, reasoner.proj.weight)
