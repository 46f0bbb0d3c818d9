"""The learning-rate schedules on small budgets: one step and ten steps train, and never divide by
zero (torch's OneCycleLR did, with total_steps * pct_start == 1), and every other budget keeps
OneCycleLR's exact numbers, so the default runs' results do not move."""

from __future__ import annotations

import math
import warnings

import numpy as np
import pytest
import torch

from rgalign.training import loops
from rgalign.training.global_loop import one_cycle_schedule, train_global
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


def _latent_step(reasoner, prompts, target):
    from rgalign.models.tokenizer import encode_prompts

    def step(model, batch: np.ndarray, local: np.ndarray):
        idx = batch[local]
        enc = encode_prompts(reasoner.tokenizer, [prompts[i] for i in idx], 96)
        z = model(enc["input_ids"], enc["attention_mask"])
        loss = (1 - (z * target[idx]).sum(-1)).mean()
        return loss, len(idx), {"loss": float(loss.detach())}

    return step


@pytest.mark.parametrize("n", [1, 10], ids=["1-step", "10-steps"])
def test_the_dpo_and_rg_cl_loop_trains_on_tiny_budgets(n):
    reasoner = tiny_reasoner()
    prompts, _ = _examples(n)
    target = torch.nn.functional.normalize(torch.randn(n, reasoner.config.d_query, generator=torch.Generator().manual_seed(0)), dim=-1)
    before = reasoner.proj.weight.detach().clone()
    res = train_global(reasoner, n, _latent_step(reasoner, prompts, target), epochs=1, batch_size=1, lr=1e-3,
                       weight_decay=0.0, seed=0, dist=DistInfo(), schedule=one_cycle_schedule(1e-3, 0.1), config={},
                       quiet=True)
    assert len(res.log.rows) == n and all(math.isfinite(r["loss"]) for r in res.log.rows)
    assert not torch.equal(before, reasoner.proj.weight)


def test_seek_is_where_the_steps_lead():
    a, b = one_cycle(_opt(), 1e-3, 17, 0.1), one_cycle(_opt(), 1e-3, 17, 0.1)
    for k in range(17):
        b.seek(k)
        assert a.get_last_lr() == b.get_last_lr() and a.optimizer.param_groups[0]["betas"] == b.optimizer.param_groups[0]["betas"]
        a.step()


def test_one_process_keeps_the_former_dpo_and_rg_cl_loop_bit_for_bit():
    """Stages 4 and 5 moved from a per-rank loop (each rank its own batches) to the global-batch
    loop; on one process the two take the very same steps, so a one-process run's results do not
    move. The former loop, as it was (alignment/common.py before), is the reference here."""
    n, batch_size, epochs, lr = 10, 3, 2, 1e-3
    prompts, _ = _examples(n)
    target = torch.nn.functional.normalize(torch.randn(n, 32, generator=torch.Generator().manual_seed(0)), dim=-1)
    lengths = np.arange(n) % 4
    torch.manual_seed(0)
    old = tiny_reasoner()
    torch.manual_seed(0)
    new = tiny_reasoner()
    # the former loop
    step = _latent_step(old, prompts, target)
    params = [p for p in old.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=0.01)
    rng = np.random.default_rng(0)
    steps_per_epoch = math.ceil(n / batch_size)
    sched = one_cycle(opt, max_lr=lr, total_steps=epochs * steps_per_epoch, pct_start=0.1)
    old.train()
    losses = []
    for _ in range(epochs):
        for idx in loops.epoch_batches(rng.permutation(n), batch_size, steps_per_epoch, rng, lengths):
            loss, _, stats = step(old, idx, np.arange(len(idx)))
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(params, 1.0)
            opt.step()
            sched.step()
            losses.append(stats["loss"])
    res = train_global(new, n, _latent_step(new, prompts, target), epochs=epochs, batch_size=batch_size, lr=lr,
                       weight_decay=0.01, seed=0, dist=DistInfo(), schedule=one_cycle_schedule(lr, 0.1), config={},
                       lengths=lengths, quiet=True)
    assert [r["loss"] for r in res.log.rows] == losses
    for (name, a), b in zip(old.state_dict().items(), new.state_dict().values()):
        assert torch.equal(a, b), name
