"""How training loops cut an epoch into batches (`loops.epoch_batches`)."""

from __future__ import annotations

import numpy as np
import pytest

from rgalign.training.loops import LENGTH_GROUP, epoch_batches


def test_plain_batches_are_consecutive_slices():
    order = np.random.default_rng(0).permutation(10)
    batches = epoch_batches(order, 4, 3, np.random.default_rng(1))
    assert [b.tolist() for b in batches] == [order[:4].tolist(), order[4:8].tolist(), order[8:].tolist()]


def test_length_grouped_batches_cover_the_epoch_once_and_pad_less():
    rng = np.random.default_rng(0)
    n, bs = 1000, 8
    lengths = rng.integers(30, 90, n)
    order = rng.permutation(n)
    steps = -(-n // bs)
    batches = epoch_batches(order, bs, steps, np.random.default_rng(1), lengths)
    assert len(batches) == steps
    assert sorted(np.concatenate(batches).tolist()) == list(range(n))  # every example, once
    padded = sum(len(b) * lengths[b].max() for b in batches)
    plain = sum(len(b) * lengths[b].max() for b in epoch_batches(order, bs, steps, np.random.default_rng(1)))
    assert padded < 0.8 * plain
    # the batch order is shuffled: not sorted by length across the epoch
    maxima = [lengths[b].max() for b in batches]
    assert maxima != sorted(maxima)
    # a batch only mixes examples of one run of LENGTH_GROUP batches' worth of the shuffled order
    run_of = {int(i): pos // (bs * LENGTH_GROUP) for pos, i in enumerate(order)}
    assert all(len({run_of[int(i)] for i in b}) == 1 for b in batches)


@pytest.mark.parametrize("lengths", [None, np.arange(9)])
def test_a_short_shard_repeats_its_first_batch_to_keep_ranks_in_step(lengths):
    # two ranks: 9 examples shard into 5 and 4; with batch 2 both must take 3 steps
    rng_a, rng_b = np.random.default_rng(3), np.random.default_rng(3)
    a = epoch_batches(np.array([0, 2, 4, 6, 8]), 2, 3, rng_a, lengths)
    b = epoch_batches(np.array([1, 3, 5, 7]), 2, 3, rng_b, lengths)
    assert len(a) == len(b) == 3
    assert sorted(np.concatenate(b).tolist()) == [1, 1, 3, 3, 5, 7]
    assert rng_a.random() == rng_b.random()  # the shared generator stays in step across ranks
