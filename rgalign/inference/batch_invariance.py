"""Answers that do not depend on batch mates: run batch-dependent graphs one row at a time.

The int8 graphs quantize their activations *dynamically*: ``DynamicQuantizeLinear`` computes one
scale and zero point per tensor, per call, from the min and max of the whole tensor. In a batch,
that tensor holds every row, so a row's scale (hence its rounding, hence its scores) depends on
which other requests share the call, and on how wide the left padding of the batch is (padded
positions are part of the tensor too). Measured on issue 16: 6 of 64 int8 requests changed their
top-3 when batched with 15 others; fp32 graphs: none.

`RowwiseRunner` makes such a graph exactly batch invariant: each row runs alone, with its own
left padding trimmed (the columns where its ``attention_mask`` is 0 before the first real token),
so every row sees exactly the tensors it would see sent alone. Graphs without dynamic
quantization run batched as before. `load_runner` decides by reading the graph, so every
consumer (the python-backend steps, the in-process `Pipeline`, a fused serving model) gets the
same answers. Its cost, measured (README "Operating it"; benchmarks/batch_invariance.py), is the
batching gain of the int8 graphs at high load.

Alternatives weighed: static (calibrated) activation scales are batch invariant but are a new
quantization recipe with its own gate; per-row scales are not expressible with ONNX Runtime's
dynamic quantization ops. Row-wise execution changes no artifact and no gate.

Example:
    >>> runner = load_runner("export/reasoner/int8/model.onnx", threads=2)  # doctest: +SKIP
    >>> type(runner).__name__
    'RowwiseRunner'
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping, Sequence
from functools import lru_cache
from typing import Any

import numpy as np

Feeds = Mapping[str, np.ndarray]
Runner = Callable[[Feeds], dict[str, np.ndarray]]

# Ops whose quantization parameters are computed from the whole input tensor at run time.
BATCH_DEPENDENT_OPS = frozenset({"DynamicQuantizeLinear", "DynamicQuantizeMatMul", "DynamicQuantizeLSTM"})
# (B, T) inputs trimmed to a row's real tokens (left padding: the mask is 0 before them).
SEQUENCE_INPUTS = ("input_ids", "attention_mask")


@lru_cache(maxsize=32)
def _graph_ops(path: str, mtime_ns: int) -> frozenset[str]:
    import onnx

    model = onnx.load(path, load_external_data=False)
    ops: set[str] = set()
    graphs = [model.graph]
    while graphs:
        g = graphs.pop()
        for node in g.node:
            ops.add(node.op_type)
            graphs.extend(a.g for a in node.attribute if a.type == onnx.AttributeProto.GRAPH)
    for f in model.functions:
        ops.update(n.op_type for n in f.node)
    return frozenset(ops)


def batch_dependent_ops(path: str | os.PathLike) -> list[str]:
    """The ops of the ONNX graph at ``path`` that make a row's output depend on its batch."""
    p = os.fspath(path)
    return sorted(_graph_ops(p, os.stat(p).st_mtime_ns) & BATCH_DEPENDENT_OPS)


class RowwiseRunner:
    """Wrap a runner so that each row of a batch runs alone (left padding trimmed) and the
    outputs are stacked back: ``feeds (B, ...) -> outputs (B, ...)``, row i equal to what the
    row gives in a batch of one."""

    def __init__(self, runner: Runner, sequence_inputs: Sequence[str] = SEQUENCE_INPUTS) -> None:
        self.runner = runner
        self.sequence_inputs = tuple(sequence_inputs)

    def __getattr__(self, name: str) -> Any:  # input_names, output_names, session of the inner runner
        return getattr(self.runner, name)

    def row(self, feeds: Feeds, i: int) -> dict[str, np.ndarray]:
        """Row ``i`` of ``feeds`` as a batch of one, without its left padding."""
        row = {k: np.ascontiguousarray(v[i : i + 1]) for k, v in feeds.items()}
        mask = row.get("attention_mask")
        if mask is not None and mask.ndim == 2 and mask.shape[1] > 1:
            real = np.flatnonzero(mask[0])
            start = int(real[0]) if real.size else 0
            if start:
                for k in self.sequence_inputs:
                    if k in row and row[k].ndim == 2 and row[k].shape[1] == mask.shape[1]:
                        row[k] = np.ascontiguousarray(row[k][:, start:])
        return row

    def __call__(self, feeds: Feeds) -> dict[str, np.ndarray]:
        n = int(next(iter(feeds.values())).shape[0])
        if n == 1 and "attention_mask" not in feeds:
            return self.runner(feeds)
        outs = [self.runner(self.row(feeds, i)) for i in range(n)]
        return {name: np.concatenate([o[name] for o in outs], axis=0) for name in outs[0]}


def invariant(runner: Runner, path: str | os.PathLike) -> Runner:
    """``runner`` for the graph at ``path``, row-wise when the graph is batch dependent."""
    return RowwiseRunner(runner) if batch_dependent_ops(path) else runner


def load_runner(
    path: str | os.PathLike,
    providers: Sequence[Any] | None = None,
    threads: int | None = None,
    batch_invariant: bool = True,
) -> Runner:
    """An ONNX Runtime runner on ``path`` whose answers do not depend on batch mates
    (``batch_invariant=False``: always batched, for measuring what invariance costs)."""
    from rgalign.inference.runtime import OrtRunner

    runner = OrtRunner.load(path, providers, threads)
    return invariant(runner, path) if batch_invariant else runner
