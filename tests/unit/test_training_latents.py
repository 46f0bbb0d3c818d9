"""latent_queries batches prompts by length: the rows must come back in the callers' order and
equal the one-prompt-at-a-time latents."""

from __future__ import annotations

import numpy as np
import torch

from tiny import tiny_reasoner
from rgalign.training.distributed import DistInfo
from rgalign.training.evaluate import latent_queries


def test_latent_queries_keep_the_order_of_prompts_of_mixed_lengths():
    reasoner = tiny_reasoner(seed=0).eval()
    lengths = np.random.default_rng(0).integers(2, 40, 37)
    prompts = [" ".join(f"w{i}" for i in range(n)) for n in lengths]
    batched = latent_queries(reasoner, prompts, 8, DistInfo())
    single = torch.cat([reasoner.encode_prompts([p]) for p in prompts])
    assert batched.shape == (37, reasoner.config.d_query)
    torch.testing.assert_close(batched, single, atol=1e-5, rtol=1e-4)


def test_latent_queries_on_worker_threads_equal_those_on_one_thread():
    from rgalign.training.loops import torch_threads

    reasoner = tiny_reasoner(seed=1).eval()
    prompts = [" ".join(f"w{i}" for i in range(n)) for n in np.random.default_rng(1).integers(2, 30, 50)]
    with torch_threads(1):
        one = latent_queries(reasoner, prompts, 8, DistInfo())
    with torch_threads(2):  # 7 batches over 2 worker threads
        pooled = latent_queries(reasoner, prompts, 8, DistInfo())
    torch.testing.assert_close(pooled, one, atol=1e-6, rtol=1e-6)
    assert torch.is_grad_enabled()  # the workers' no_grad did not leak into this thread
