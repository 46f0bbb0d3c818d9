"""The PyTorch reference of every gate: a module as a runner (`TorchRunner`) and the training
run's models as a `Pipeline` (`TorchPipeline`), behind the same interface as ONNX Runtime's.
Lives in export (it needs torch); `rgalign.inference` runs exports without it.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch
from torch import nn

from rgalign.export.source import load_run
from rgalign.export.specs import RankerGraph, ReasonerGraph, topk_for
from rgalign.inference.pipeline import Pipeline
from rgalign.inference.preprocess import Preprocessor
from rgalign.inference.runtime import Feeds


class TorchRunner:
    """A PyTorch module as a runner (the reference): inputs in ``input_names`` order, outputs
    named ``output_names`` in the module's return order. Runs under ``inference_mode``."""

    def __init__(self, module: nn.Module, input_names: Sequence[str], output_names: Sequence[str]) -> None:
        self.module = module.eval()
        self.input_names = list(input_names)
        self.output_names = list(output_names)

    def __call__(self, feeds: Feeds) -> dict[str, np.ndarray]:
        with torch.inference_mode():
            out = self.module(*(torch.from_numpy(np.ascontiguousarray(feeds[k])) for k in self.input_names))
        outs = out if isinstance(out, (tuple, list)) else (out,)
        return {name: t.detach().cpu().numpy() for name, t in zip(self.output_names, outs)}


class TorchPipeline(Pipeline):
    """The same pipeline on the PyTorch models (eager): the reference of every gate."""

    @classmethod
    def from_models(cls, reasoner: Any, ranker: Any, encoders: Any, fields: Any) -> TorchPipeline:
        pre = Preprocessor(reasoner.tokenizer, fields, encoders, reasoner.config.max_len)
        k = topk_for(ranker.config.n_intents)
        return cls(
            pre,
            TorchRunner(ReasonerGraph(reasoner), ["input_ids", "attention_mask"], ["latent_query"]),
            TorchRunner(RankerGraph(ranker, k), ["cat", "num", "query"], ["scores", "topk_scores", "topk_idx"]),
            encoders.intent_ids,
            name="pytorch",
        )

    @classmethod
    def from_run(cls, run_dir: str | os.PathLike) -> TorchPipeline:
        """The deployable pair of a training run (`rgalign.artifacts.run.final_models`)."""
        src = load_run(run_dir)
        return cls.from_models(src.reasoner, src.ranker, src.encoders, src.fields)

    def forward(self, records: Sequence[Mapping[str, Any]]) -> dict[str, np.ndarray]:
        with torch.inference_mode():
            return super().forward(records)
