"""The reasoner's speed-up over PyTorch eager fp32, in one run: every CPU precision of an export
against the run's PyTorch reasoner at one shape (default batch 1, 64 tokens: SPEC §8).

    python benchmarks/reasoner_ratio.py EXPORT [--threads 2] [--batch 1] [--seq 64] [--repeats 10]

PyTorch eager stays loaded; each ONNX Runtime precision is loaded in turn (one ORT engine in
memory at a time: a Qwen3-0.6B-shape reasoner is 2.4 GB in fp32) and its calls *alternate* with
eager calls, so both see the same load on a shared machine (measured here: eager alone drifted
from 2.4 s to 1.0 s within two minutes). Each figure is the median of ``repeats`` calls after 2
warm-up calls; a precision's ratio is against the eager median taken beside it. Prints one JSON
object (also written with --out).
"""

from __future__ import annotations

import argparse
import gc
import json
import statistics
import time
from pathlib import Path


def _alternate_ms(a, b, feed, repeats: int) -> tuple[float, float]:
    """Median ms of ``a(feed)`` and ``b(feed)``, called in turn."""
    for _ in range(2):
        a(feed)
        b(feed)
    ta, tb = [], []
    for _ in range(repeats):
        for fn, times in ((a, ta), (b, tb)):
            t = time.perf_counter()
            fn(feed)
            times.append(time.perf_counter() - t)
    return statistics.median(ta) * 1e3, statistics.median(tb) * 1e3


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("export", type=Path)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--batch", type=int, default=1)
    ap.add_argument("--seq", type=int, default=64)
    ap.add_argument("--repeats", type=int, default=10)
    ap.add_argument("--out", type=Path)
    args = ap.parse_args()

    import numpy as np
    import torch

    from rgalign.artifacts.manifest import artifact_path, read_manifest
    from rgalign.export.reference import TorchPipeline
    from rgalign.inference.runtime import OrtRunner

    torch.set_num_threads(args.threads)
    manifest = read_manifest(args.export)
    feed = {"input_ids": np.full((args.batch, args.seq), 5, dtype=np.int64),
            "attention_mask": np.ones((args.batch, args.seq), dtype=np.int64)}
    result: dict = {"shape": [args.batch, args.seq], "threads": args.threads, "repeats": args.repeats, "ms": {}}

    eager = TorchPipeline.from_run(manifest["source"]["run"]).reasoner
    result["speedup_vs_eager"] = {}
    for precision in manifest["precisions"]:
        runner = OrtRunner.load(artifact_path(args.export, manifest, "reasoner", precision), threads=args.threads)
        ort_ms, eager_ms = _alternate_ms(runner, eager, feed, args.repeats)
        result["ms"][f"onnxruntime-{precision}"] = round(ort_ms, 2)
        result["ms"][f"pytorch-eager beside {precision}"] = round(eager_ms, 2)
        result["speedup_vs_eager"][f"onnxruntime-{precision}"] = round(eager_ms / ort_ms, 2)
        del runner
        gc.collect()
    result["gates_passed"] = manifest.get("gates_passed")
    text = json.dumps(result, indent=1)
    print(text)
    if args.out:
        args.out.write_text(text + "\n")


if __name__ == "__main__":
    main()
