"""The reasoner's speed-up over PyTorch eager fp32, in one run: every CPU precision of an export
against the run's PyTorch reasoner at one shape (default batch 1, 64 tokens: SPEC §8).

    python benchmarks/reasoner_ratio.py EXPORT [--threads 2] [--batch 1] [--seq 64] [--repeats 10]

PyTorch eager is timed first and last (the machine is shared: its load drifts), each ONNX Runtime
precision in between, one engine in memory at a time (a Qwen3-0.6B-shape reasoner is 2.4 GB per
engine in fp32). Each figure is the median of ``repeats`` calls after 2 warm-up calls; the ratio
is against the mean of the two eager medians. Prints one JSON object (also written with --out).
"""

from __future__ import annotations

import argparse
import gc
import json
import statistics
import time
from pathlib import Path


def _median_ms(fn, feed, repeats: int) -> float:
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

    def eager() -> float:
        pipe = TorchPipeline.from_run(manifest["source"]["run"])
        ms = _median_ms(pipe.reasoner, feed, args.repeats)
        del pipe
        gc.collect()
        return ms

    first = eager()
    for precision in manifest["precisions"]:
        runner = OrtRunner.load(artifact_path(args.export, manifest, "reasoner", precision), threads=args.threads)
        result["ms"][f"onnxruntime-{precision}"] = round(_median_ms(runner, feed, args.repeats), 2)
        del runner
        gc.collect()
    last = eager()
    result["ms"]["pytorch-eager (first, last)"] = [round(first, 2), round(last, 2)]
    base = (first + last) / 2
    result["speedup_vs_eager"] = {k: round(base / v, 2) for k, v in result["ms"].items() if k.startswith("onnx")}
    result["gates_passed"] = manifest.get("gates_passed")
    text = json.dumps(result, indent=1)
    print(text)
    if args.out:
        args.out.write_text(text + "\n")


if __name__ == "__main__":
    main()
