"""In-process inference on an export: raw feature dicts -> top-k KB intents.

    records (B dicts) --preprocess--> prompts (build_prompt) --tokenise, left padding, max_len-->
        input_ids, attention_mask (B, T) int64        + encode_records --> cat (B, Fc), num (B, Fn)
    --reason--> latent_query (B, d) --rank--> scores (B, N), topk_scores / topk_idx (B, K)
    --postprocess--> [(intent_ids, scores)] best first

Each arrow is a reusable piece: `Preprocessor` (prompts, tokens, encoded features),
`Pipeline.reason`, `Pipeline.rank`, `postprocess`. Triton's python-backend models call the same
pieces, so what is served is what was gated here.

`Pipeline.from_export(EXPORT, precision)` runs the ONNX graphs with ONNX Runtime;
`TorchPipeline.from_run(RUN)` runs the PyTorch models of a training run behind the same interface,
for parity checks and benchmarks.

Example:
    >>> pipe = Pipeline.from_export("export", precision="int8", threads=2)   # doctest: +SKIP
    >>> pipe([{"gender": "F", "tier": "gold", ..., "recent_actions": "opened tracking"}], k=3)
    [Ranked(intent_ids=['i012', 'i007', 'i031'], scores=[2.31, 1.87, 0.42])]
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np

from rgalign.errors import ExportError
from rgalign.export.runtime import ProviderSpec, Runner, TorchRunner
from rgalign.inference.batch_invariance import load_runner
from rgalign.io import read_json

# requests per forward pass when a call holds many: bounds the attention's (B, h, T, T) memory
CHUNK = 64


class Ranked(NamedTuple):
    """One request's answer: KB intent ids and their scores (logits), best first."""

    intent_ids: list[str]
    scores: list[float]


@dataclass(frozen=True)
class Batch:
    """Model inputs of B requests: input_ids, attention_mask (B, T) int64; cat (B, Fc) int64;
    num (B, Fn) float32."""

    input_ids: np.ndarray
    attention_mask: np.ndarray
    cat: np.ndarray
    num: np.ndarray

    def __len__(self) -> int:
        return int(self.cat.shape[0])


class Preprocessor:
    """Raw feature dicts -> `Batch`: the prompt (`build_prompt`), its tokens (left padding,
    truncated to ``max_len`` keeping the end, where the ``query:`` marker is) and the ranker's
    encoded features (`FeatureEncoders.encode_records`)."""

    def __init__(self, tokenizer: Any, fields: Any, encoders: Any, max_len: int) -> None:
        self.tokenizer = tokenizer  # padded on the left per call; its own setting is left alone
        self.fields = fields
        self.encoders = encoders
        self.max_len = int(max_len)

    @classmethod
    def from_export(cls, export_dir: str | os.PathLike) -> Preprocessor:
        from rgalign.data.encoders import FeatureEncoders
        from rgalign.models.prompt import PromptFields
        from rgalign.models.tokenizer import load_tokenizer

        root = Path(export_dir)
        manifest = read_manifest(root)
        serving = manifest["serving"]
        return cls(
            load_tokenizer(root / serving["tokenizer"], padding_side="left"),
            PromptFields.from_dict(read_json(root / serving["prompt_fields"])),
            FeatureEncoders.from_json(root / serving["encoders"]),
            serving["max_prompt_length"],
        )

    def prompts(self, records: Sequence[Mapping[str, Any]]) -> list[str]:
        from rgalign.models.prompt import build_prompt

        return [build_prompt(r, self.fields) for r in records]

    def tokenize(self, prompts: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
        """(input_ids, attention_mask), each (B, T) int64, T = the longest prompt (<= max_len)."""
        enc = self.tokenizer(
            list(prompts), padding=True, padding_side="left", truncation=True, max_length=self.max_len,
            return_tensors="np",
        )
        return enc["input_ids"].astype(np.int64), enc["attention_mask"].astype(np.int64)

    def __call__(self, records: Sequence[Mapping[str, Any]]) -> Batch:
        records = list(records)
        ids, mask = self.tokenize(self.prompts(records))
        cat, num = self.encoders.encode_records(records)
        return Batch(ids, mask, cat.astype(np.int64), num.astype(np.float32))


def postprocess(
    intent_ids: Sequence[str],
    topk_scores: np.ndarray,
    topk_idx: np.ndarray,
    k: int,
    scores: np.ndarray | None = None,
) -> list[Ranked]:
    """Top-``k`` (B, K) indices and scores -> one `Ranked` per row.

    When ``k`` exceeds the graph's K, the full ``scores`` (B, N) are ranked here instead (ties
    to the lower KB index, as `rgalign.metrics` breaks them).
    """
    if k < 1:
        raise ExportError(f"k must be >= 1, got {k}")
    if k > topk_idx.shape[1]:
        if scores is None:
            raise ExportError(f"k={k} is more than the {topk_idx.shape[1]} intents the graph ranks")
        k = min(k, scores.shape[1])
        topk_idx = np.argsort(-scores, axis=1, kind="stable")[:, :k]
        topk_scores = np.take_along_axis(scores, topk_idx, axis=1)
    return [
        Ranked([intent_ids[int(j)] for j in row_idx[:k]], [float(s) for s in row_scores[:k]])
        for row_idx, row_scores in zip(topk_idx, topk_scores)
    ]


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
        paths = []
        for model in ("reasoner", "ranker"):
            art = manifest["artifacts"].get(f"{model}/{precision}")
            if art is None:
                have = sorted({k.split("/")[1] for k in manifest["artifacts"] if "/" in k})
                raise ExportError(
                    f"{root}: no {precision} {model} in this export (it has {', '.join(have) or 'none'}); "
                    f"re-run `rgalign export --precision {precision}`"
                )
            paths.append(root / art["path"])
        # batch-dependent (dynamically quantized) graphs run row by row: answers never depend
        # on batch mates (rgalign.inference.batch_invariance)
        return cls(
            Preprocessor.from_export(root),
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


class TorchPipeline(Pipeline):
    """The same pipeline on the PyTorch models (eager): the reference of every gate."""

    @classmethod
    def from_models(cls, reasoner: Any, ranker: Any, encoders: Any, fields: Any) -> TorchPipeline:
        from rgalign.export.specs import RankerGraph, ReasonerGraph, topk_for

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
        """The deployable pair of a training run (`rgalign.training.run.final_models`)."""
        from rgalign.export.source import load_run

        src = load_run(run_dir)
        return cls.from_models(src.reasoner, src.ranker, src.encoders, src.fields)

    def forward(self, records: Sequence[Mapping[str, Any]]) -> dict[str, np.ndarray]:
        import torch

        with torch.inference_mode():
            return super().forward(records)


def read_manifest(export_dir: str | os.PathLike) -> dict[str, Any]:
    path = Path(export_dir) / "manifest.json"
    if not path.is_file():
        raise ExportError(
            f"{os.fspath(export_dir)} is not an export (no manifest.json); run `rgalign export RUN --out ...`"
        )
    return read_json(path)
