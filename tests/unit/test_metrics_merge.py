"""A split held in pieces (one per rank of a sharded run) gives, merged, the metrics of the whole
split in one process: GAUC over users whose requests lie on several pieces, AUC, logloss, error
rate, the ranking metrics, the cohorts, and the popularity reference from summed counts."""

from __future__ import annotations

import threading

import numpy as np
import pytest

from rgalign import metrics
from rgalign.metrics.merge import finish, merge_parts, split_parts
from rgalign.training.prompt_budget import make_budget

K = 3


def _split(seed: int = 0, requests: int = 400, slate: int = 6, intents: int = 40, users: int = 30):
    """Impression rows of ``requests`` whole requests: labels, probs, user groups, request ids,
    (R, N) scores and relevance, and a cohort mask."""
    rng = np.random.default_rng(seed)
    req = np.repeat(np.arange(requests), slate)
    user = rng.integers(0, users, requests)[req]
    labels = rng.random(len(req)) < 0.3
    probs = np.round(rng.random(len(req)), 2)  # rounded: ties, which AUC counts 1/2
    scores_all = np.round(rng.random((requests, intents)), 2)
    relevant = rng.random((requests, intents)) < 0.05
    cohort = rng.random(len(req)) < 0.4
    return labels, probs, np.array([f"u{u}" for u in user], dtype=object), req, scores_all, relevant, cohort


def _whole(labels, probs, groups, req, scores_all, relevant, cohort) -> dict[str, float]:
    out = metrics.compute_all(labels, probs, groups, req, scores_all, relevant, k=K)
    out.update(metrics.cohort_gauc(labels, probs, groups, {"seen": cohort}))
    return out


def _pieces(cuts, labels, probs, groups, req, scores_all, relevant, cohort):
    """One `SplitParts` per run of requests [cuts[i], cuts[i + 1])."""
    out = []
    for lo, hi in zip(cuts[:-1], cuts[1:]):
        rows = (req >= lo) & (req < hi)
        out.append(split_parts(labels[rows], probs[rows], groups[rows], req[rows], scores_all[lo:hi],
                               relevant[lo:hi], k=K, cohorts={"seen": cohort[rows]}))
    return out


@pytest.mark.parametrize("cuts", [[0, 400], [0, 170, 400], [0, 0, 90, 250, 400, 400]])
def test_merged_pieces_give_the_whole_splits_metrics(cuts):
    data = _split()
    want = _whole(*data)
    got = finish(merge_parts(_pieces(cuts, *data)))
    assert set(got) == set(want)
    for key, value in want.items():
        assert got[key] == pytest.approx(value, abs=1e-12, nan_ok=True), key
    if len(cuts) == 2:  # one piece: the very same numbers
        assert got == pytest.approx(want, abs=0, nan_ok=True)


def test_gauc_of_users_split_over_pieces_is_not_a_mean_of_the_pieces():
    """Users span pieces: averaging each piece's GAUC would be wrong, the merge is not."""
    labels, probs, groups, req, scores_all, relevant, cohort = _split(seed=3)
    cut = 200
    rows = req < cut
    per_piece = [metrics.gauc(labels[m], probs[m], groups[m]) for m in (rows, ~rows)]
    whole = metrics.gauc(labels, probs, groups)
    merged = finish(merge_parts(_pieces([0, cut, 400], labels, probs, groups, req, scores_all, relevant, cohort)))
    assert merged["gauc"] == pytest.approx(whole, abs=1e-12)
    assert abs(np.mean(per_piece) - whole) > 1e-4  # the check can fail: a naive merge differs


def test_popularity_from_summed_counts_equals_one_process():
    rng = np.random.default_rng(1)
    shown, labels = rng.integers(0, 30, 5000), rng.random(5000) < 0.2
    want = metrics.smoothed_like_rate(shown, labels, 30)
    counts = [np.stack([np.bincount(shown[sl], minlength=30).astype(float),
                        np.bincount(shown[sl], weights=labels[sl].astype(float), minlength=30)])
              for sl in (slice(0, 1234), slice(1234, 5000))]
    shows, clicks = counts[0] + counts[1]
    np.testing.assert_array_equal(metrics.like_rate_from_counts(shows, clicks), want)


def test_an_empty_piece_merges_and_an_empty_split_fails_loudly():
    data = _split()
    empty = split_parts(np.zeros(0, bool), np.zeros(0), np.zeros(0, object), np.zeros(0), np.zeros((0, 40)),
                        np.zeros((0, 40), bool), k=K, cohorts={"seen": np.zeros(0, bool)})
    got = finish(merge_parts([empty, *_pieces([0, 400], *data)]))
    assert got["gauc"] == pytest.approx(_whole(*data)["gauc"], abs=1e-12)
    with pytest.raises(metrics.MetricInputError, match="no impression on any shard"):
        finish(merge_parts([empty, empty]))


def _thread_gather(world: int):
    """An all-gather for ``world`` threads (one per "rank"), in rank order, as torch's in a group."""
    slots: list = [None] * world
    barrier = threading.Barrier(world)

    def gather_for(rank: int):
        def gather(obj):
            slots[rank] = obj
            barrier.wait()
            out = list(slots)
            barrier.wait()  # nobody overwrites a slot before everyone has read it
            return out
        return gather
    return gather_for


class _Tok:
    """A whitespace tokenizer, enough for the budget's arithmetic."""

    def __call__(self, texts, verbose=False, add_special_tokens=True):
        return {"input_ids": [t.split() for t in texts]}


def test_prompt_budget_over_ranks_equals_one_process():
    from tiny import TINY_FIELDS, tiny_requests

    raw = tiny_requests(120, 0)
    for i, r in enumerate(raw):  # a long tail of free text, so caps are needed
        r.update({name: " ".join(["word"] * (5 + (i * 7) % 90)) for name in TINY_FIELDS.user_text + TINY_FIELDS.context_text})
    want = make_budget(_Tok(), {"train": raw, "test": raw[:30]}, TINY_FIELDS, cap=64)
    assert want[0].text_max_chars  # the case with caps
    pieces = [(raw[:50], raw[:10]), (raw[50:], raw[10:30])]
    gather_for, got = _thread_gather(2), [None, None]

    def rank(r: int) -> None:
        tr, te = pieces[r]
        got[r] = make_budget(_Tok(), {"train": tr, "test": te}, TINY_FIELDS, cap=64, gather=gather_for(r))

    threads = [threading.Thread(target=rank, args=(r,)) for r in (0, 1)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert got[0] == got[1] == want
