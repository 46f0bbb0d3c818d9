"""What each model's export *is*: names, dtypes, dynamic axes, the dummy batches it is checked on,
and the gate thresholds per precision (as optimum's ``OnnxConfig`` describes a model's export).

Two models are exported, each wrapped in a small module whose forward is exactly the graph::

    reasoner   input_ids (B, T) int64, attention_mask (B, T) int64 -> latent_query (B, d) float32
    ranker     cat (B, Fc) int64, num (B, Fn) float32, query (B, d) float32
                   -> scores (B, N) float32, topk_scores (B, K) float32, topk_idx (B, K) int64

``B`` (batch) and ``T`` (sequence, at most the reasoner's ``max_len``) are dynamic. The KB table
(intent embeddings and the intent text buffer) is a constant inside the ranker graph, so ``N`` is
fixed at export. ``K = min(10, N)`` is fixed at export too (ONNX ``TopK`` takes K as an input, but
a constant K lets every runtime, TensorRT included, plan the output shape): 10 because the int8
gate compares top-10 sets and the product shows 3. A caller that wants more than K intents ranks
``scores`` itself (see `rgalign.inference.postprocess.postprocess`).

The output is named ``latent_query``, not ``embedding``: Triton's python backend and several
serving tools treat an output called ``embedding`` specially.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from rgalign.models.qe_ranker import QERanker
from rgalign.models.reasoner import Reasoner, last_token_index, position_ids_from_mask

# top-K fixed at export: the int8 gate's "top-10 overlap" needs 10, and 10 >= the 3 shown
TOPK = 10

# (batch, seq) shapes of the padded parity batches: a single short prompt, an odd batch of
# medium ones, a full batch of long ones (clipped to the reasoner's max_len)
REASONER_SHAPES = ((1, 16), (3, 40), (8, 64))
RANKER_BATCHES = (1, 3, 8)


@dataclass(frozen=True)
class TensorSpec:
    """One graph input or output: ``shape`` holds ints for fixed dims, names for dynamic ones."""

    name: str
    dtype: str  # numpy dtype name: "int64", "float32"
    shape: tuple[int | str, ...]

    def to_dict(self) -> dict:
        return {"name": self.name, "dtype": self.dtype, "shape": list(self.shape)}


@dataclass(frozen=True)
class Tolerances:
    """SPEC §5 gates. Figures are compared against the PyTorch model in fp32.

    ``cosine`` is the mean over rows of the per-row cosine similarity of the gated output: for
    the ranker the *row-centred* scores (a shared offset of every intent's logit would otherwise
    dominate the cosine and hide a reordering); for the reasoner the *batch-centred* latent
    queries (each minus the reference latents' mean over the parity prompts: a model whose
    latents barely differ between prompts would otherwise pass any precision; see
    `rgalign.export.validate.batch_centred_cosine`). The minimum over rows is reported beside
    it, and the reasoner's uncentred cosine too (ungated).

    int4 (weight-only ``MatMulNBits``) is held to int8's thresholds: it replaces int8 where it
    passes, so it must rank as well.
    """

    fp32_max_abs: float = 1e-4
    fp16_cosine: float = 0.999
    int8_cosine: float = 0.99
    int8_topk_overlap: float = 0.9  # |top-10(int8) ∩ top-10(fp32)| / 10, mean over requests
    int8_gauc_drop: float = 0.002  # GAUC(fp32 pipeline) - GAUC(int8 pipeline), held-out requests

    def to_dict(self) -> dict:
        return {k: getattr(self, k) for k in self.__dataclass_fields__}

    def cosine(self, precision: str) -> float | None:
        """The cosine threshold of ``precision`` (None for fp32: it is gated on max |diff|)."""
        return {"fp16": self.fp16_cosine, "int8": self.int8_cosine, "int4": self.int8_cosine}.get(precision)


@dataclass(frozen=True)
class ExportSpec:
    """How one model is exported and checked.

    ``batches(seed)`` gives the padded parity batches (a list of feeds, numpy arrays by input
    name); ``example`` the torch tensors traced by the exporter; ``dynamic_shapes`` the dims the
    exporter keeps symbolic (input name -> {axis: (name, min, max)}).
    """

    name: str
    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]
    gated_output: str  # the output the cosine gate reads
    centre_gated: bool  # centre rows before the cosine (ranker scores; see Tolerances)
    dynamic_shapes: dict[str, dict[int, tuple[str, int, int | None]]]
    example: tuple[torch.Tensor, ...]
    batches: Callable[[int], list[dict[str, np.ndarray]]]
    tolerances: Tolerances = field(default_factory=Tolerances)
    # centre the gated output on the reference's mean over every parity row (reasoner latents)
    centre_batch: bool = False

    @property
    def input_names(self) -> list[str]:
        return [t.name for t in self.inputs]

    @property
    def output_names(self) -> list[str]:
        return [t.name for t in self.outputs]


class ReasonerGraph(nn.Module):
    """The exported reasoner: (B, T) ids and mask -> (B, d) unit latent query.

    Holds the backbone's *base model* (embeddings, layers, final norm) and the projection, not
    the causal LM: the LM head (vocab x hidden: 0.6 GB at Qwen3-0.6B shape when untied) is
    never part of the graph, whatever the exporter does with unused parameters. The forward is
    `Reasoner.forward`'s: final hidden states -> last real token -> projection -> L2 norm.
    """

    def __init__(self, reasoner: Reasoner) -> None:
        super().__init__()
        self.base = reasoner.backbone.base_model
        self.proj = reasoner.proj
        self.pass_positions = reasoner._pass_positions

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        kwargs = {"input_ids": input_ids, "attention_mask": attention_mask, "use_cache": False}
        if self.pass_positions:
            kwargs["position_ids"] = position_ids_from_mask(attention_mask)
        h = self.base(**kwargs).last_hidden_state  # (B, T, H)
        idx = last_token_index(attention_mask).view(-1, 1, 1).expand(-1, 1, h.shape[-1])
        return F.normalize(self.proj(h.gather(1, idx).squeeze(1)), dim=-1)


class RankerGraph(nn.Module):
    """The exported ranker: scores of all N KB intents and their top-K, in one graph."""

    def __init__(self, ranker: QERanker, k: int) -> None:
        super().__init__()
        self.ranker = ranker
        self.k = k

    def forward(
        self, cat: torch.Tensor, num: torch.Tensor, query: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        scores = self.ranker.score_all(cat, num, query)
        top_scores, top_idx = torch.topk(scores, self.k, dim=-1)
        return scores, top_scores, top_idx


def topk_for(n_intents: int) -> int:
    return min(TOPK, n_intents)


def left_padded(
    rng: np.random.Generator, batch: int, seq: int, vocab: int, bos: int | None, pad: int
) -> dict[str, np.ndarray]:
    """A left-padded batch of random prompts: row 0 has the full length ``seq``, the others a
    random length in [1, seq]; each starts with ``<bos>`` when the tokenizer has one."""
    lengths = rng.integers(1, seq + 1, size=batch)
    lengths[0] = seq
    ids = np.full((batch, seq), pad, dtype=np.int64)
    mask = np.zeros((batch, seq), dtype=np.int64)
    low = min(4, vocab - 1)  # past the special tokens of rgalign's tokenizers (pad, bos, eos, unk)
    for i, n in enumerate(lengths):
        row = rng.integers(low, vocab, size=n)
        if bos is not None:
            row[0] = bos
        ids[i, seq - n :] = row
        mask[i, seq - n :] = 1
    return {"input_ids": ids, "attention_mask": mask}


def reasoner_spec(reasoner: Reasoner) -> ExportSpec:
    tok = reasoner.tokenizer
    max_len = int(reasoner.config.max_len)
    vocab = int(reasoner.backbone.get_input_embeddings().num_embeddings)
    vocab = min(vocab, len(tok))  # ids the tokenizer can produce
    pad = tok.pad_token_id if tok.pad_token_id is not None else 0
    bos = tok.bos_token_id
    d = int(reasoner.config.d_query)

    def batches(seed: int) -> list[dict[str, np.ndarray]]:
        rng = np.random.default_rng(seed)
        return [left_padded(rng, b, min(t, max_len), vocab, bos, pad) for b, t in REASONER_SHAPES]

    # the traced example: 2 rows (so the batch dim is not specialised to 1), the second padded
    ex = left_padded(np.random.default_rng(0), 2, min(16, max_len), vocab, bos, pad)
    ex["attention_mask"][1, : ex["attention_mask"].shape[1] // 2] = 0
    ex["input_ids"][1, : ex["attention_mask"].shape[1] // 2] = pad
    return ExportSpec(
        name="reasoner",
        inputs=(
            TensorSpec("input_ids", "int64", ("batch", "seq")),
            TensorSpec("attention_mask", "int64", ("batch", "seq")),
        ),
        outputs=(TensorSpec("latent_query", "float32", ("batch", d)),),
        gated_output="latent_query",
        centre_gated=False,
        centre_batch=True,
        dynamic_shapes={
            "input_ids": {0: ("batch", 1, None), 1: ("seq", 1, max_len)},
            "attention_mask": {0: ("batch", 1, None), 1: ("seq", 1, max_len)},
        },
        example=(torch.from_numpy(ex["input_ids"]), torch.from_numpy(ex["attention_mask"])),
        batches=batches,
    )


def ranker_spec(ranker: QERanker) -> ExportSpec:
    c = ranker.config
    fc, fn, d, n = len(c.cardinalities), c.n_numeric, c.d_query, c.n_intents
    k = topk_for(n)
    cards = np.asarray(c.cardinalities, dtype=np.int64)

    def make(rng: np.random.Generator, b: int) -> dict[str, np.ndarray]:
        # ids in [0, cardinality]: includes the OOV bucket 0 and one id past the table, which
        # the model maps to OOV as well (a bad id must not crash, in ONNX as in PyTorch)
        cat = (rng.random((b, fc)) * (cards + 1)).astype(np.int64) if fc else np.zeros((b, 0), np.int64)
        num = rng.standard_normal((b, fn)).astype(np.float32)
        q = rng.standard_normal((b, d)).astype(np.float32)
        q /= np.linalg.norm(q, axis=-1, keepdims=True)  # the reasoner's output is unit-norm
        return {"cat": cat, "num": num, "query": q}

    def batches(seed: int) -> list[dict[str, np.ndarray]]:
        rng = np.random.default_rng(seed)
        return [make(rng, b) for b in RANKER_BATCHES]

    ex = make(np.random.default_rng(0), 2)
    return ExportSpec(
        name="ranker",
        inputs=(
            TensorSpec("cat", "int64", ("batch", fc)),
            TensorSpec("num", "float32", ("batch", fn)),
            TensorSpec("query", "float32", ("batch", d)),
        ),
        outputs=(
            TensorSpec("scores", "float32", ("batch", n)),
            TensorSpec("topk_scores", "float32", ("batch", k)),
            TensorSpec("topk_idx", "int64", ("batch", k)),
        ),
        gated_output="scores",
        centre_gated=True,
        dynamic_shapes={name: {0: ("batch", 1, None)} for name in ("cat", "num", "query")},
        example=tuple(torch.from_numpy(ex[name]) for name in ("cat", "num", "query")),
        batches=batches,
    )


def graph_module(spec: ExportSpec, model: nn.Module) -> nn.Module:
    """The module whose forward is ``spec``'s graph, in eval mode."""
    if spec.name == "reasoner":
        return ReasonerGraph(model).eval()
    if spec.name == "ranker":
        return RankerGraph(model, spec.outputs[1].shape[1]).eval()
    raise ValueError(f"no graph module for spec {spec.name!r}")
