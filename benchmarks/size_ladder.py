"""The size ladder (issue 15): the reasoner of each export, tiny and Qwen3-0.6B shape, in every CPU
precision the export holds, against its own PyTorch eager fp32 reasoner in the same run, at batch
1 and 8 and 64-token prompts, with the FLOP floor measured in the same run.

    python benchmarks/size_ladder.py --export tiny=EXPORT_A --export qwen3-0.6b-shape=EXPORT_B \\
        [--threads 2] [--batches 1,8] [--seq 64] [--repeats 10] [--out results/size_ladder.json] \\
        [--markdown results/size_ladder.md]

How it measures (as `reasoner_ratio.py` does): one model at a time; its PyTorch reasoner stays
loaded and each ONNX Runtime precision is loaded in turn (one ORT engine in memory at a time: the
0.6B fp32 graph is 2.4 GB), its calls *alternating* with eager calls so both see the same load on
a shared machine. Eager runs at ``--threads`` and at 1 thread, alternated too, and a precision's
speed-up is against the *faster* of the two (on a loaded 2-core machine PyTorch's OpenMP pool can
stall on every small op: the tiny reasoner took 46-540 ms per call at 2 threads in one try, so
eager's best thread count is the fair reference, as SPEC §8's tiny target is measured;
``--eager-threads 1`` skips the slow one: on the loaded machine one 0.6B eager call took 17.3 s
at 2 threads beside 1.35 s at 1, and at batch 8 that alone would take most of an hour). Each
figure is the median of ``repeats`` alternated calls after 2 warm-up calls (at batch > 1 half as
many, at least 3, after 1 warm-up: a 0.6B eager call at batch 8 takes seconds).

The FLOP floor (`rgalign.bench.flops`): matmul FLOPs of one forward pass from the model's shape
(no LM head: the latent query reads the last hidden state), over the matmul peak measured here
at the model's own GEMM shapes and a 1024^3 one (PyTorch and ORT fp32, ORT ``MatMulInteger``
int8). fp32 and fp16 are charged at the fp32 peak (this AVX2 CPU has no fp16 arithmetic), int8
and int4 (``MatMulNBits`` with ``accuracy_level`` 4 computes with int8 activations) at the int8
peak; attention's activation x activation matmuls at fp32 in every precision.

int4 is measured, not assumed: when the export holds no int4 reasoner, one is made on the fly from
the export's fp32 reasoner with the product's own `quantize_weight_only(..., bits=4)` (``MatMulNBits``,
block 32, as ``rgalign export --precision int4`` makes it) and timed like the other rows.

Gate figure: every precision's latent queries on the run's held-out prompts (its dataset's test
split, prepared as serving prepares them, in the export's chunks) against PyTorch fp32's, as the
export's end-to-end gate measures them: `batch_centred_cosine` (centred on the reference's mean),
against the export's threshold for that precision. A precision the export holds passed all its
gates there (the export fails otherwise; the manifest says so); the on-the-fly int4 row's
"passed" is this cosine against int4's threshold (0.99) alone: the export would also gate it on
its parity batches, top-10 overlap and GAUC drop. The "best" row of each model is its fastest
passing precision at batch 1.
"""

from __future__ import annotations

import argparse
import gc
import json
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

FP32_PEAK = ("fp32", "fp16")  # charged at the fp32 matmul peak; the others at int8's


def _alternate_ms(fns: dict, feed: dict, repeats: int, warmup: int) -> dict[str, float]:
    """Median ms of each ``fns[name](feed)``, the functions called in turn."""
    for _ in range(warmup):
        for fn in fns.values():
            fn(feed)
    times: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            t = time.perf_counter()
            fn(feed)
            times[name].append(time.perf_counter() - t)
    return {name: statistics.median(ts) * 1e3 for name, ts in times.items()}


def _method(export: Path, precision: str) -> str:
    report = json.loads((export / "report.json").read_text())
    art = report.get("artifacts", {}).get(f"reasoner/{precision}", {})
    if precision in ("fp32", "fp16"):
        return f"{precision} ({art.get('graph', 'unfused')} graph)"
    return str(art.get("method", precision))


def _passed(manifest: dict, precision: str) -> bool:
    arts = manifest["artifacts"]
    gates = [(arts.get(f"reasoner/{precision}") or {}).get("gate"), (arts.get(f"pipeline/{precision}") or {}).get("gate")]
    return all(g["passed"] for g in gates if g) and gates[0] is not None


def held_out_feeds(src) -> list[dict]:
    """The run's held-out prompts as the export's held-out pass feeds them (`Pipeline.forward`'s
    chunks, serving's preprocessing)."""
    from rgalign.export.evaldata import requests_from_dataset
    from rgalign.inference.pipeline import CHUNK
    from rgalign.inference.preprocess import Preprocessor

    held_out, _ = requests_from_dataset(src.data_path, src.encoders)
    pre = Preprocessor(src.reasoner.tokenizer, src.fields, src.encoders, src.reasoner.config.max_len)
    feeds = []
    for i in range(0, len(held_out.records), CHUNK):
        b = pre(held_out.records[i : i + CHUNK])
        feeds.append({"input_ids": b.input_ids, "attention_mask": b.attention_mask})
    return feeds


def gate_figure(runner, feeds: list[dict], reference, precision: str) -> dict:
    """{cosine_centred, threshold, prompts}: ``runner``'s latents on ``feeds`` vs ``reference``'s
    (an (R, D) array), centred on the reference's mean, as `validate_pipeline` gates them."""
    import numpy as np

    from rgalign.export.specs import Tolerances
    from rgalign.export.validate import batch_centred_cosine

    got = np.concatenate([runner(f)["latent_query"] for f in feeds])
    cos = float(batch_centred_cosine(got, reference).mean())
    threshold = Tolerances().cosine(precision)
    return {"cosine_centred": round(cos, 6), "threshold": threshold, "prompts": int(len(got)),
            "passed": threshold is None or cos >= threshold}


def int4_on_the_fly(fp32_path: Path, workdir: Path) -> tuple[Path, float]:
    """(the int4 reasoner made from ``fp32_path`` by the product's own quantiser, seconds)."""
    from rgalign.export.precision import quantize_weight_only

    t = time.perf_counter()
    path = quantize_weight_only(fp32_path, workdir / "reasoner_int4.onnx", bits=4)
    return path, time.perf_counter() - t


def _bytes(path: Path) -> int:
    """A graph's size with its external data files."""
    from rgalign.export.external import external_files

    return path.stat().st_size + sum(p.stat().st_size for p in external_files(path))


def ladder_model(label: str, export: Path, threads: int, batches: list[int], seq: int, repeats: int,
                 eager_threads: list[int]) -> dict:
    import numpy as np
    import torch

    from rgalign.artifacts.manifest import artifact_path, read_manifest
    from rgalign.bench.flops import DecoderShape, decoder_flops, floor_ms, measure_peaks
    from rgalign.bench.timing import Budget
    from rgalign.export.reference import TorchRunner
    from rgalign.export.source import load_run
    from rgalign.export.specs import ReasonerGraph
    from rgalign.inference.runtime import OrtRunner

    torch.set_num_threads(threads)
    manifest = read_manifest(export)
    t0 = time.perf_counter()
    src = load_run(manifest["source"]["run"])
    reasoner = src.reasoner
    torch_runner = TorchRunner(ReasonerGraph(reasoner), ["input_ids", "attention_mask"], ["latent_query"])
    held_out = held_out_feeds(src)
    del src
    torch.set_num_threads(1 if 1 in eager_threads else threads)  # eager's faster count (see above)
    reference = np.concatenate([torch_runner(f)["latent_query"] for f in held_out])

    def eager_at(n: int):
        def run(feed):
            torch.set_num_threads(n)
            return torch_runner(feed)
        return run

    eager = {f"eager@{n}": eager_at(n) for n in dict.fromkeys(eager_threads)}
    load_s = time.perf_counter() - t0
    shape = DecoderShape.from_hf_config(reasoner.backbone.config.to_dict(), reasoner.config.d_query)
    params = sum(p.numel() for p in reasoner.parameters())
    peaks = measure_peaks({"square 1024": (1024, 1024, 1024),
                           **{f"mlp at batch {b}": (b * seq, shape.hidden, shape.intermediate) for b in batches}},
                          threads, Budget())
    out: dict = {"export": str(export), "run": manifest["source"]["run"], "params": params,
                 "fp32_gb": round(params * 4 / 1e9, 2), "shape": shape.to_dict(), "eager_load_s": round(load_s, 1),
                 "gates_passed": manifest.get("gates_passed"), "peaks": peaks, "rows": []}
    feeds = {b: {"input_ids": np.full((b, seq), 5, dtype=np.int64), "attention_mask": np.ones((b, seq), dtype=np.int64)}
             for b in batches}
    tmp = tempfile.TemporaryDirectory(prefix="ladder-int4-")
    precisions = list(manifest["precisions"]) + ([] if "int4" in manifest["precisions"] else ["int4"])
    for precision in precisions:
        made = None
        if precision in manifest["precisions"]:
            path = artifact_path(export, manifest, "reasoner", precision)
        else:
            path, made = int4_on_the_fly(artifact_path(export, manifest, "reasoner", "fp32"), Path(tmp.name))
        t = time.perf_counter()
        runner = OrtRunner.load(path, threads=threads)
        ort_load_s = time.perf_counter() - t
        gate = gate_figure(runner, held_out, reference, precision)
        passed = _passed(manifest, precision) if made is None else gate["passed"]
        method = (_method(export, precision) if made is None
                  else f"weight-only int4 (MatMulNBits, block 32), made here in {made:.0f} s")
        for b in batches:
            reps = repeats if b == 1 else max(3, repeats // 2)
            ms = _alternate_ms({"ort": runner, **eager}, feeds[b], reps, warmup=2 if b == 1 else 1)
            ort_ms = ms.pop("ort")
            eager_ms = min(ms.values())
            flops = decoder_flops(shape, b, seq)
            floor = floor_ms(flops, "fp32" if precision in FP32_PEAK else "int8", peaks["peak_gflops"])
            row = {"model": label, "precision": precision, "method": method, "in_export": made is None,
                   "passed": passed, "gate": gate, "mb": round(_bytes(path) / 1e6, 1), "batch": b, "seq": seq, "repeats": reps,
                   "ort_ms": round(ort_ms, 2), "eager_ms": round(eager_ms, 2),
                   "eager_ms_by_threads": {k: round(v, 2) for k, v in ms.items()},
                   "speedup_vs_eager": round(eager_ms / ort_ms, 2), "gflop": round(flops["total"] / 1e9, 2),
                   "floor_ms": None if floor is None else round(floor, 2),
                   "ort_vs_floor": None if not floor else round(ort_ms / floor, 2),
                   "ort_load_s": round(ort_load_s, 1)}
            out["rows"].append(row)
            print(json.dumps(row), flush=True)
        del runner
        gc.collect()
    tmp.cleanup()
    best = min((r for r in out["rows"] if r["batch"] == batches[0] and r["passed"]), key=lambda r: r["ort_ms"],
               default=None)
    out["best_at_batch_%d" % batches[0]] = best
    del eager, torch_runner, reasoner
    gc.collect()
    return out


def _best_threads(row: dict) -> str:
    """Which eager thread count gave the row's eager figure: "@2", "@1"."""
    by = row["eager_ms_by_threads"]
    return min(by, key=by.get).removeprefix("eager")


def markdown(result: dict) -> str:
    lines = [
        f"Reasoner size ladder: batch x {result['seq']} tokens, {result['threads']} threads, "
        f"{result['machine']}; PyTorch eager fp32 measured beside each precision (alternating calls), "
        f"at the faster of {', '.join(map(str, result['eager_threads']))} thread(s); ORT at {result['threads']}. "
        f"Load average (1/5/15 min) {' '.join(result.get('load_before', []))} before, "
        f"{' '.join(result.get('load_after', []))} after.",
        "",
        "| model | params | precision | method | MB | batch | ORT ms | eager ms | speed-up vs eager | FLOP floor ms "
        "| ORT / floor | gate figure | gate |",
        "|---|---:|---|---|---:|---:|---:|---:|---:|---:|---:|---|---|",
    ]
    for label, m in result["models"].items():
        for r in m["rows"]:
            floor = "-" if r["floor_ms"] is None else f"{r['floor_ms']:.3g}"
            ratio = "-" if r["ort_vs_floor"] is None else f"{r['ort_vs_floor']:.2f}x"
            g = r["gate"]
            figure = f"{g['cosine_centred']:.4f}" + (f" (needs >= {g['threshold']})" if g["threshold"] else "")
            verdict = ("passed" if r["passed"] else "FAILED") + ("" if r["in_export"] else " (cosine only; not in the export)")
            lines.append(f"| {label} | {m['params'] / 1e6:.1f} M | {r['precision']} | {r['method']} | {r['mb']:.4g} | "
                         f"{r['batch']} | {r['ort_ms']:.4g} | {r['eager_ms']:.4g} ({_best_threads(r)}) | "
                         f"{r['speedup_vs_eager']:.2f}x | {floor} | {ratio} | {figure} | {verdict} |")
    lines += ["", "Gate figure: the reasoner's latent queries on the run's held-out prompts vs PyTorch fp32, centred on "
              "the reference's mean (the export's end-to-end `cosine_centred(latent_query)`); fp32 has no cosine gate "
              "(its gate is max |diff| <= 1e-4 on the parity batches). A precision in the export passed every gate "
              "there; an int4 row made here is judged on this cosine alone.", ""]
    for label, m in result["models"].items():
        peak = m["peaks"]["peak_gflops"]
        lines.append(f"- {label}: matmul peak fp32 {peak.get('fp32')} GFLOP/s, int8 {peak.get('int8')} GFLOP/s "
                     "(measured in this run)")
    return "\n".join(lines) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--export", action="append", required=True, metavar="LABEL=EXPORT",
                    help="an export folder and its label; one per rung of the ladder, smallest first")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--batches", default="1,8")
    ap.add_argument("--seq", type=int, default=64)
    ap.add_argument("--repeats", type=int, default=10)
    ap.add_argument("--eager-threads", default=None,
                    help="PyTorch thread counts to alternate (default: --threads and 1); the faster is the reference")
    ap.add_argument("--out", type=Path)
    ap.add_argument("--markdown", type=Path)
    args = ap.parse_args()

    batches = [int(b) for b in args.batches.split(",")]
    eager_threads = ([int(n) for n in args.eager_threads.split(",")] if args.eager_threads
                     else list(dict.fromkeys([args.threads, 1])))
    result: dict = {"what": "reasoner size ladder (issue 15): every CPU precision of each export vs PyTorch eager fp32",
                    "command": " ".join(sys.argv), "threads": args.threads, "eager_threads": eager_threads, "seq": args.seq, "batches": batches,
                    "machine": f"{platform.processor() or platform.machine()}, {len(__import__('os').sched_getaffinity(0))} cores",
                    "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "models": {}}
    with open("/proc/loadavg") as f:
        result["load_before"] = f.read().split()[:3]
    for spec in args.export:
        label, _, path = spec.partition("=")
        result["models"][label] = ladder_model(label, Path(path), args.threads, batches, args.seq, args.repeats,
                                              eager_threads)
    with open("/proc/loadavg") as f:
        result["load_after"] = f.read().split()[:3]
    result["finished"] = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    text = json.dumps(result, indent=1)
    if args.out:
        args.out.write_text(text + "\n")
    md = markdown(result)
    if args.markdown:
        args.markdown.write_text(md)
    print(md)


if __name__ == "__main__":
    main()
