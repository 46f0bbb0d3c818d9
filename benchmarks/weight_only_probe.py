"""Weight-only int4 / int8 (``MatMulNBits``) of an export's fp32 reasoner, measured without a
whole export: size, batch-1 latency beside the fp32 graph, and the gate's figure (latent queries
on the held-out prompts centred on their mean, against the fp32 graph, whose parity with PyTorch
the export already gated at 1e-4).

    python benchmarks/weight_only_probe.py EXPORT [--bits 4] [--threads 2] [--seq 64]

Prints one JSON object. The int4 precision of `rgalign export --precision int4` is this graph.
"""

from __future__ import annotations

import argparse
import gc
import json
import statistics
import tempfile
import time
from pathlib import Path


def _median_ms(fn, feed, repeats: int = 8) -> float:
    for _ in range(2):
        fn(feed)
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn(feed)
        times.append(time.perf_counter() - t)
    return statistics.median(times) * 1e3


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("export", type=Path)
    ap.add_argument("--bits", type=int, default=4)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--seq", type=int, default=64)
    args = ap.parse_args()

    import numpy as np

    from rgalign.artifacts.manifest import artifact_path, read_manifest
    from rgalign.artifacts.run import run_dataset_path
    from rgalign.data.encoders import FeatureEncoders
    from rgalign.export.evaldata import requests_from_dataset
    from rgalign.export.external import graph_bytes
    from rgalign.export.precision import quantize_weight_only
    from rgalign.export.validate import batch_centred_cosine
    from rgalign.inference.preprocess import Preprocessor
    from rgalign.inference.runtime import OrtRunner
    from rgalign.io import read_json

    manifest = read_manifest(args.export)
    fp32 = artifact_path(args.export, manifest, "reasoner", "fp32")
    run = Path(manifest["source"]["run"])
    encoders = FeatureEncoders.from_json(args.export / "encoders.json")
    held_out, _ = requests_from_dataset(run_dataset_path(read_json(run / "run.json")), encoders)
    pre = Preprocessor.from_export(args.export)
    batches = [pre(held_out.records[i : i + 16]) for i in range(0, len(held_out), 16)]
    feed = {"input_ids": np.full((1, args.seq), 5, np.int64), "attention_mask": np.ones((1, args.seq), np.int64)}

    def measure(path: Path) -> tuple[np.ndarray, float]:
        runner = OrtRunner.load(path, threads=args.threads)
        q = np.concatenate([runner({"input_ids": b.input_ids, "attention_mask": b.attention_mask})["latent_query"]
                            for b in batches])
        ms = _median_ms(runner, feed)
        del runner
        gc.collect()
        return q, ms

    ref, fp32_ms = measure(fp32)
    with tempfile.TemporaryDirectory(dir=args.export.parent) as tmp:
        t0 = time.perf_counter()
        dst = quantize_weight_only(fp32, Path(tmp) / "model.onnx", bits=args.bits)
        seconds = time.perf_counter() - t0
        got, ms = measure(dst)
        size = graph_bytes(dst)
    centred = batch_centred_cosine(got, ref)
    plain = (got * ref).sum(-1) / np.linalg.norm(got, axis=-1) / np.linalg.norm(ref, axis=-1)
    print(json.dumps({
        "bits": args.bits, "held_out_prompts": len(ref), "quantise_s": round(seconds, 1),
        "cosine_centred(latent_query)": round(float(centred.mean()), 5), "gate": ">= 0.99",
        "cosine(latent_query)": round(float(plain.mean()), 6),
        "ms_batch1": {"fp32": round(fp32_ms, 1), f"int{args.bits}": round(ms, 1)},
        "bytes": {"fp32": graph_bytes(fp32), f"int{args.bits}": size},
        "threads": args.threads, "tokens": args.seq,
    }, indent=1))


if __name__ == "__main__":
    main()
