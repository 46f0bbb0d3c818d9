"""In-process inference on an export: raw feature dicts -> top-k KB intents.

    records (B dicts) --preprocess--> prompts (build_prompt) --tokenise, left padding, max_len-->
        input_ids, attention_mask (B, T) int64        + encode_records --> cat (B, Fc), num (B, Fn)
    --reason--> latent_query (B, d) --rank--> scores (B, N), topk_scores / topk_idx (B, K)
    --postprocess--> [(intent_ids, scores)] best first

Each arrow is a reusable piece: `Preprocessor` (prompts, tokens, encoded features),
`Pipeline.reason`, `Pipeline.rank`, `postprocess`. Triton's python-backend models call the same
pieces, so what is served is what was gated here.

`Pipeline.from_export(EXPORT, precision)` runs the ONNX graphs with ONNX Runtime;
`rgalign.export.reference.TorchPipeline.from_run(RUN)` runs the PyTorch models of a training run
behind the same interface, for parity checks and benchmarks. Nothing here imports torch.

Example:
    >>> pipe = Pipeline.from_export("export", precision="int8", threads=2)   # doctest: +SKIP
    >>> pipe([{"gender": "F", "tier": "gold", ..., "recent_actions": "opened tracking"}], k=3)
    [Ranked(intent_ids=['i012', 'i007', 'i031'], scores=[2.31, 1.87, 0.42])]
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from rgalign.artifacts.manifest import artifact_path, read_manifest
from rgalign.artifacts.registry import MODELS
from rgalign.errors import ExportError
from rgalign.inference.postprocess import Ranked, postprocess
from rgalign.inference.preprocess import Batch, Preprocessor
from rgalign.inference.batch_invariance import load_runner
from rgalign.inference.runtime import ProviderSpec, Runner
from rgalign.io import read_json

# requests per forward pass when a call holds many: bounds the attention's (B, h, T, T) memory
CHUNK = 64


class Pipeline:
    """Preprocess -> reasoner -> ranker -> top-k, with any runners (ORT, PyTorch, TensorRT)."""

    def __init__(
        self,
        preprocessor: Preprocessor,
        reasoner: Runner,
        ranker: Runner,
        intent_ids: Sequence[str],
        name: str = "",
    ) -> None:
        self.preprocessor = preprocessor
        self.reasoner = reasoner
        self.ranker = ranker
        self.intent_ids = list(intent_ids)
        self.name = name

    @classmethod
    def from_export(
        cls,
        export_dir: str | os.PathLike,
        precision: str = "fp32",
        providers: Sequence[ProviderSpec] | None = None,
        threads: int | None = None,
    ) -> Pipeline:
        """Load ``EXPORT/{reasoner,ranker}/<precision>/model.onnx`` with ONNX Runtime.

        ``providers``: ORT execution providers (default CPU); a requested GPU provider that the
        session does not really use raises `ExportError`. ``threads``: intra-op threads.
        """
        root = Path(export_dir)
        manifest = read_manifest(root)
        paths = [artifact_path(root, manifest, model, precision) for model in MODELS]
        return cls(
            Preprocessor.from_export(root),
            # batch-dependent (dynamically quantized) graphs run row by row: answers never
            # depend on batch mates (rgalign.inference.batch_invariance)
            load_runner(paths[0], providers, threads),
            load_runner(paths[1], providers, threads),
            read_json(root / manifest["serving"]["intents"])["intent_ids"],
            name=f"onnxruntime-{precision}",
        )

    # ---- the pieces ----------------------------------------------------------------------------

    def preprocess(self, records: Sequence[Mapping[str, Any]]) -> Batch:
        return self.preprocessor(records)

    def reason(self, input_ids: np.ndarray, attention_mask: np.ndarray) -> np.ndarray:
        """(B, T), (B, T) int64 -> latent queries (B, d) float32."""
        return self.reasoner({"input_ids": input_ids, "attention_mask": attention_mask})["latent_query"]

    def rank(self, cat: np.ndarray, num: np.ndarray, query: np.ndarray) -> dict[str, np.ndarray]:
        """-> ``scores`` (B, N), ``topk_scores`` (B, K), ``topk_idx`` (B, K) int64."""
        return self.ranker({"cat": cat, "num": num, "query": query.astype(np.float32, copy=False)})

    def postprocess(self, ranked: Mapping[str, np.ndarray], k: int) -> list[Ranked]:
        return postprocess(self.intent_ids, ranked["topk_scores"], ranked["topk_idx"], k, ranked.get("scores"))

    # ---- whole requests ------------------------------------------------------------------------

    def forward(self, records: Sequence[Mapping[str, Any]]) -> dict[str, np.ndarray]:
        """Every output for ``records``: ``latent_query``, ``scores``, ``topk_scores``,
        ``topk_idx`` (computed in chunks of `CHUNK` requests)."""
        records = list(records)
        parts: list[dict[str, np.ndarray]] = []
        for i in range(0, len(records), CHUNK):
            b = self.preprocess(records[i : i + CHUNK])
            q = self.reason(b.input_ids, b.attention_mask)
            parts.append({"latent_query": q, **self.rank(b.cat, b.num, q)})
        if not parts:
            raise ExportError("no records to run the pipeline on")
        return {key: np.concatenate([p[key] for p in parts]) for key in parts[0]}

    def __call__(self, records: Sequence[Mapping[str, Any]], k: int = 3) -> list[Ranked]:
        if not records:
            return []
        return self.postprocess(self.forward(records), k)
