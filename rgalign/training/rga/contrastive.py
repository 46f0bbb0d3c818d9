"""Stage 5, RG-CL: InfoNCE of the policy's latent query against what it should point at
(`info_nce`), and those targets: the clicked intents' latents mixed with the preferred
query's (`clicked_intent_targets`)."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from rgalign.errors import ConfigError


def info_nce(
    anchor: torch.Tensor,
    positives: torch.Tensor,
    negatives: torch.Tensor | None = None,
    temperature: float = 0.1,
    negative_mask: torch.Tensor | None = None,
    duplicate_eps: float = 1e-6,
    targets: torch.Tensor | None = None,
) -> torch.Tensor:
    """InfoNCE of each anchor against its positive, in-batch negatives and extra negatives.

    Args:
        anchor: (B, d) latent queries (the policy's, with gradient).
        positives: (P, d) targets, row ``targets[i]`` the positive of anchor i (P = B and row i
            by default); every other row is a negative of anchor i (in-batch negatives).
            Usually constants (`clicked_intent_targets`).
        negatives: (M, d) extra negatives shared by the batch, e.g. the KB intents' latents.
        temperature: 0.1. On unit vectors the logits lie in [-10, 10], room enough for a
            softmax over B + M (a few hundred) entries; much lower (CLIP's 0.07 and below)
            puts nearly all the gradient on the single hardest negative.
        negative_mask: (B, M) or (M,) bool, True where negative m is a valid negative for
            anchor i; pass False for the intents request i clicked (they are not negatives).
        duplicate_eps: in-batch positive j is not a negative of anchor i when it is the same
            vector as positive i (cosine >= 1 - eps): two requests with the same clicked intents
            would otherwise push each other's anchors away from the right answer.
        targets: (B,) int64, the row of ``positives`` that is anchor i's: a rank of a global
            batch (`global_loop`) computes its own anchors against the positives of the whole
            batch, so its loss terms are those one process computes for the same rows.

    All of anchor, positives and negatives are L2-normalised here (cosine similarity), so the
    loss aligns directions, which is what the ranker reads from a unit-norm latent query.

    Returns the mean over the batch of ``-log softmax([a_i.p_j]_j ++ [a_i.n_m]_m / T)[i]``.
    """
    b = anchor.shape[0]
    if targets is None and anchor.shape != positives.shape:
        raise ConfigError(
            f"anchor and positives must both be (B, d), got {tuple(anchor.shape)} and {tuple(positives.shape)}"
        )
    if anchor.dim() != 2 or positives.dim() != 2 or anchor.shape[1] != positives.shape[1]:
        raise ConfigError(f"anchor (B, d) and positives (P, d) expected, got {tuple(anchor.shape)} and "
                          f"{tuple(positives.shape)}")
    if temperature <= 0:
        raise ConfigError(f"temperature must be > 0, got {temperature}")
    a = F.normalize(anchor, dim=-1)
    p = F.normalize(positives.to(a), dim=-1)
    t = torch.arange(b, device=a.device) if targets is None else targets.to(device=a.device, dtype=torch.long)
    if tuple(t.shape) != (b,):
        raise ConfigError(f"targets must be ({b},), got {tuple(t.shape)}")
    logits = a @ p.T / temperature  # (B, P)
    same = (p[t] @ p.T) >= 1.0 - duplicate_eps
    same[torch.arange(b, device=a.device), t] = False
    logits = logits.masked_fill(same, float("-inf"))
    if negatives is not None and negatives.shape[0] > 0:
        if negatives.dim() != 2 or negatives.shape[1] != a.shape[1]:
            raise ConfigError(f"negatives must be (M, {a.shape[1]}), got {tuple(negatives.shape)}")
        neg = a @ F.normalize(negatives.to(a), dim=-1).T / temperature  # (B, M)
        if negative_mask is not None:
            nm = negative_mask.to(device=a.device, dtype=torch.bool)
            nm = nm.expand(b, -1) if nm.dim() == 1 else nm
            if tuple(nm.shape) != tuple(neg.shape):
                raise ConfigError(f"negative_mask has shape {tuple(negative_mask.shape)}, expected {tuple(neg.shape)}")
            neg = neg.masked_fill(~nm, float("-inf"))
        logits = torch.cat([logits, neg], dim=1)
    return F.cross_entropy(logits, t)


def clicked_intent_targets(
    kb_latents: torch.Tensor,
    shown: torch.Tensor,
    labels: torch.Tensor,
    mask: torch.Tensor,
    preferred: torch.Tensor | None = None,
    preferred_weight: float = 0.5,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """RG-CL positives: what each request's latent query should point at.

    Args:
        kb_latents: (N, d) latents of the KB intents' texts, e.g. ``reasoner.encode_prompts(kb_texts)``.
        shown (R, S) int64, labels (R, S), mask (R, S): the request's slate and clicks.
        preferred: (R, d) optional latent of the reward model's preferred query, e.g.
            ``candidate_latents(...)[arange(R), best_idx]``.
        preferred_weight: its share in the positive when a request has both.

    Returns:
        positives (R, d) unit norm: ``normalize((1 - w) * mean(clicked intents' latents) +
        w * preferred)``; the clicked mean alone without ``preferred``; ``preferred`` alone for a
        request without a click.
        has_positive (R,) bool: False for a request with neither (train only on the rest).
        negative_mask (R, N) bool: True for KB intents the request did not click: the
            ``negative_mask`` of `info_nce` with ``negatives=kb_latents``.

    Both sources are used by default because they say different things: the clicked intents
    are the ground truth, the preferred query is the ranker's view of what the reasoner should
    produce; mixing them keeps RG-CL tied to clicks while following the reward model. The
    targets are detached: RG-CL moves the anchor to the target, not the target to the anchor
    (which could collapse both).
    """
    if not 0.0 <= preferred_weight <= 1.0:
        raise ConfigError(f"preferred_weight must be in [0, 1], got {preferred_weight}")
    n_kb, d = kb_latents.shape
    r = shown.shape[0]
    kb = F.normalize(kb_latents.detach().float(), dim=-1)
    clicked = (labels.bool() & mask.bool()).to(kb.device)
    multi_hot = torch.zeros(r, n_kb, device=kb.device)
    multi_hot.scatter_add_(1, shown.long().clamp(0, n_kb - 1).to(kb.device), clicked.float())
    multi_hot = multi_hot.clamp(max=1.0)
    n_clicked = multi_hot.sum(dim=1, keepdim=True)
    has_click = n_clicked.squeeze(1) > 0
    click_mean = F.normalize(multi_hot @ kb / n_clicked.clamp(min=1.0), dim=-1)
    if preferred is None:
        target, has = click_mean, has_click
    else:
        if tuple(preferred.shape) != (r, d):
            raise ConfigError(f"preferred has shape {tuple(preferred.shape)}, expected ({r}, {d})")
        pref = F.normalize(preferred.detach().float().to(kb.device), dim=-1)
        w = torch.where(has_click, preferred_weight, 1.0).to(kb.dtype).unsqueeze(1)
        target = (1 - w) * click_mean + w * pref
        has = torch.ones(r, dtype=torch.bool, device=kb.device)
    return F.normalize(target, dim=-1), has, multi_hot == 0
