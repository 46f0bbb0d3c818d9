"""Ranker losses against hand computations; masking and click-less requests."""

from __future__ import annotations

import math

import torch

from rgalign.models.losses import bce_loss, kl_to_previous, listnet_loss, ranker_loss


def test_listnet_matches_hand_computation():
    logits = torch.tensor([[1.0, 2.0, 0.0]])
    labels = torch.tensor([[1.0, 1.0, 0.0]])
    mask = torch.ones(1, 3)
    z = math.log(math.e + math.e**2 + 1)
    expected = -(0.5 * (1 - z) + 0.5 * (2 - z))
    assert abs(listnet_loss(logits, labels, mask).item() - expected) < 1e-6


def test_listnet_ignores_masked_positions_and_clickless_requests():
    logits = torch.tensor([[1.0, 2.0, 0.0, 50.0], [3.0, -1.0, 2.0, 0.0], [0.5, 0.1, 9.0, 4.0]])
    labels = torch.tensor([[1.0, 1.0, 0.0, 1.0], [0.0, 0.0, 0.0, 0.0], [0.0, 0.0, 0.0, 0.0]])
    mask = torch.tensor([[1, 1, 1, 0], [1, 1, 1, 1], [1, 1, 0, 0]])
    # row 0's 4th position is padding (its label and logit must not count); rows 1-2 no clicks
    reference = listnet_loss(logits[:1, :3], labels[:1, :3], torch.ones(1, 3))
    torch.testing.assert_close(listnet_loss(logits, labels, mask), reference)
    none = listnet_loss(logits[1:], labels[1:], mask[1:])
    assert none.item() == 0.0


def test_listnet_gradients_are_finite_with_padding():
    logits = torch.tensor([[1.0, 2.0, 0.0, 0.0]], requires_grad=True)
    loss = listnet_loss(logits, torch.tensor([[0.0, 1.0, 0.0, 0.0]]), torch.tensor([[1, 1, 1, 0]]))
    loss.backward()
    assert torch.isfinite(logits.grad).all() and logits.grad[0, 3] == 0


def test_bce_mean_over_real_impressions():
    logits = torch.tensor([[0.0, 2.0, 100.0]])
    labels = torch.tensor([[1.0, 0.0, 1.0]])
    mask = torch.tensor([[1, 1, 0]])
    expected = (math.log(2) + math.log(1 + math.e**2)) / 2
    assert abs(bce_loss(logits, labels, mask).item() - expected) < 1e-5


def test_kl_is_zero_for_equal_logits_and_matches_hand_computation():
    logits = torch.randn(4, 5, generator=torch.Generator().manual_seed(0))
    mask = torch.tensor([[1, 1, 1, 1, 1], [1, 1, 0, 0, 0], [0, 0, 0, 0, 0], [1, 0, 0, 0, 0]])
    assert abs(kl_to_previous(logits, logits.clone(), mask).item()) < 1e-7
    prev = torch.tensor([[0.0, math.log(3.0)]])
    cur = torch.tensor([[0.0, 0.0]])
    p = torch.tensor([0.25, 0.75])
    expected = float((p * (p.log() - math.log(0.5))).sum())
    assert abs(kl_to_previous(cur, prev, torch.ones(1, 2)).item() - expected) < 1e-6
    assert abs(kl_to_previous(cur * 2, prev * 2, torch.ones(1, 2), T=2.0).item() - 4 * expected) < 1e-5


def test_ranker_loss_combines_with_weights():
    g = torch.Generator().manual_seed(1)
    logits, prev = torch.randn(3, 4, generator=g), torch.randn(3, 4, generator=g)
    labels = torch.tensor([[1.0, 0, 0, 0], [0, 0, 1, 0], [0, 0, 0, 0]])
    mask = torch.ones(3, 4)
    total, parts = ranker_loss(logits, labels, mask, prev, alpha_bce=0.3, beta_kl=0.7)
    expected = (listnet_loss(logits, labels, mask) + 0.3 * bce_loss(logits, labels, mask)
                + 0.7 * kl_to_previous(logits, prev, mask))
    torch.testing.assert_close(total, expected)
    assert set(parts) == {"listnet", "bce", "kl", "total"} and parts["kl"] > 0
    _, no_prev = ranker_loss(logits, labels, mask)
    assert no_prev["kl"] == 0.0
