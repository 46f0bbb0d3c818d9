"""The ensemble layout's top model: ``rgalign`` chaining preprocess -> reasoner -> ranker ->
postprocess with Triton's ensemble scheduler (`rgalign.serve.repository.deploy` writes the steps).
"""

from __future__ import annotations

from typing import Any

from rgalign.artifacts.registry import ENSEMBLE
from rgalign.serve.repository import config as tc
from rgalign.serve.repository.signature import ANSWER, FEATURES, TOP_K


def ensemble_config(max_batch: int) -> Any:
    """The ``rgalign`` ensemble: preprocess -> reasoner -> ranker -> postprocess. Its response
    cache is enabled (Triton caches top-level ensemble requests; its answer depends on the request
    alone): it takes effect when the server has a cache (``rgalign serve --cache-mb N``)."""
    steps = [
        tc.EnsembleStep(
            "preprocess",
            {"features": "features"},
            {n: n for n in ("input_ids", "attention_mask", "cat", "num")},
        ),
        tc.EnsembleStep(
            "reasoner",
            {"input_ids": "input_ids", "attention_mask": "attention_mask"},
            {"latent_query": "latent_query"},
        ),
        tc.EnsembleStep(
            "ranker",
            {"cat": "cat", "num": "num", "query": "latent_query"},
            {"scores": "all_scores", "topk_scores": "topk_scores", "topk_idx": "topk_idx"},
        ),
        tc.EnsembleStep(
            "postprocess",
            {n: n for n in ("topk_scores", "topk_idx", "all_scores", "top_k")},
            {"intent_ids": "intent_ids", "scores": "scores"},
        ),
    ]
    config = tc.ensemble_model(
        ENSEMBLE,
        inputs=[FEATURES, TOP_K],
        outputs=list(ANSWER),
        steps=steps,
        max_batch_size=max_batch,
    )
    config.response_cache.enable = True
    return config
