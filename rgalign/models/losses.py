"""Ranker losses over each request's *shown* impressions.

All take logits (B, S), labels (B, S) in {0, 1} and mask (B, S) (1 = a real impression, 0 =
padding, since requests show different numbers of intents), and return a scalar.

- `listnet_loss`: the paper's listwise loss. Softmax cross-entropy between the normalised click
  distribution of a request and the softmax of its logits over the shown intents. Requests
  without a click have no target distribution and contribute nothing.
- `bce_loss`: pointwise binary cross-entropy, mean over real impressions: ListNet is invariant to
  a per-request shift of the logits, so on its own it leaves the probabilities uncalibrated
  (SPEC §4's logloss needs them).
- `kl_to_previous`: KL(previous ranker || current ranker) of the per-request softmax
  distributions: the stability term that keeps a re-trained reward model close to the one RGA
  aligned the reasoner against.
- `ranker_loss`: ListNet + alpha * BCE + beta * KL, with its parts for logging.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def _masked_log_softmax(logits: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """log_softmax over the positions where ``mask``; 0 (not -inf) elsewhere, so that
    ``0 * value`` never becomes NaN."""
    neg = torch.finfo(logits.dtype).min
    return torch.log_softmax(logits.masked_fill(~mask, neg), dim=-1).masked_fill(~mask, 0.0)


def listnet_loss(logits: torch.Tensor, labels: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """ListNet (top-1) loss: mean over requests with >= 1 click of
    ``-sum_i y_i / sum(y) * log softmax(logits)_i``, both over the request's real impressions.

    (B, S) each -> scalar; 0 (with a gradient path) when no request has a click.
    """
    mask = mask.bool()
    y = labels.to(logits.dtype) * mask
    clicks = y.sum(dim=-1)  # (B,)
    has_click = clicks > 0
    target = y / clicks.clamp(min=1.0).unsqueeze(-1)
    per_request = -(target * _masked_log_softmax(logits, mask)).sum(dim=-1)
    return (per_request * has_click).sum() / has_click.sum().clamp(min=1)


def bce_loss(logits: torch.Tensor, labels: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Binary cross-entropy with logits, mean over real impressions: (B, S) each -> scalar."""
    mask = mask.to(logits.dtype)
    per = F.binary_cross_entropy_with_logits(logits, labels.to(logits.dtype), reduction="none")
    return (per * mask).sum() / mask.sum().clamp(min=1)


def kl_to_previous(
    logits: torch.Tensor, prev_logits: torch.Tensor, mask: torch.Tensor, T: float = 1.0
) -> torch.Tensor:
    """KL(p_prev || p_cur) of the per-request softmax over real impressions at temperature T,
    mean over requests with >= 1 real impression, times T^2 (Hinton et al.'s scaling, so the
    gradient size does not depend on T). ``prev_logits`` is treated as a constant.

    (B, S) each -> scalar; exactly 0 when ``logits == prev_logits``.
    """
    mask = mask.bool()
    logp_prev = _masked_log_softmax(prev_logits.detach() / T, mask)
    logp_cur = _masked_log_softmax(logits / T, mask)
    per_request = (logp_prev.exp() * mask * (logp_prev - logp_cur)).sum(dim=-1)
    has = mask.any(dim=-1)
    return (per_request * has).sum() / has.sum().clamp(min=1) * T * T


def ranker_loss(
    logits: torch.Tensor,
    labels: torch.Tensor,
    mask: torch.Tensor,
    prev_logits: torch.Tensor | None = None,
    alpha_bce: float = 0.5,
    beta_kl: float = 0.1,
    T: float = 1.0,
) -> tuple[torch.Tensor, dict[str, float]]:
    """``listnet + alpha_bce * bce + beta_kl * kl`` (the KL only where ``prev_logits`` is given,
    i.e. from the second round on).

    Defaults: ListNet leads (the paper's objective; its per-request size is ~log S, about 2);
    BCE at 0.5 (per-impression size ~0.3) is enough to calibrate without fighting the ranking;
    KL at 0.1 holds the new ranker near the previous one without freezing it.

    Returns (total loss scalar, {"listnet", "bce", "kl", "total"} as floats for logging).
    """
    ln = listnet_loss(logits, labels, mask)
    bce = bce_loss(logits, labels, mask)
    total = ln + alpha_bce * bce
    kl = torch.zeros((), dtype=logits.dtype, device=logits.device)
    if prev_logits is not None:
        kl = kl_to_previous(logits, prev_logits, mask, T)
        total = total + beta_kl * kl
    parts = {"listnet": float(ln.detach()), "bce": float(bce.detach()), "kl": float(kl.detach()),
             "total": float(total.detach())}
    return total, parts
