"""`run_bench`: the whole of ``rgalign bench`` as one library call.

    machine -> matmul peaks -> in-process engines -> FLOP floor -> served (--url) -> ratios
            -> DIR/bench.json, bench.md, bench.png

Example:
    >>> result = run_bench("export", "bench", quick=True)          # doctest: +SKIP
    >>> result["ratios"]["reasoner_int8_vs_torch_eager"]
    6.1
"""

from __future__ import annotations

import os
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from rgalign.artifacts.registry import ENSEMBLE
from rgalign.bench.flops import DecoderShape, decoder_flops, default_threads, floor_ms, measure_peaks, torch_flops
from rgalign.bench.inprocess import OK, InProcessBench, Shapes, find_row
from rgalign.bench.machine import describe_machine
from rgalign.bench.ratios import HEADLINE_BATCH, compute_ratios, headline_seq, targets
from rgalign.bench.target import Target, resolve_target
from rgalign.bench.timing import Budget
from rgalign.errors import ConfigError
from rgalign.progress import Progress, step_announcer

FORMAT_VERSION = 1
LARGE_GEMM = (1024, 1024, 1024)  # big enough to reach the BLAS kernels' steady state on a CPU


def _peak_shapes(t: Target) -> dict[str, tuple[int, int, int]]:
    shapes = {"large": LARGE_GEMM}
    cfg = t.decoder_config
    if cfg:
        # the reasoner's MLP matmul at the headline shape: 64 token rows, hidden x intermediate
        shapes = {"reasoner_mlp": (64, int(cfg["hidden_size"]), int(cfg["intermediate_size"])), **shapes}
    return shapes


def _floor(t: Target, rows: list[dict[str, Any]], peaks: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """FLOP counts of every measured shape, the floor per precision, the fraction reached.

    ``peaks``: `measure_peaks` per thread count; a measured row is compared with the floor at
    its own thread count (the fastest row of each case, as the ratios take).
    """
    models: dict[str, Any] = {}
    if t.decoder_config is None or t.d_query is None:
        models["reasoner"] = {"reason": t.torch_missing or "the reasoner's backbone config is not available"}
    else:
        shape = DecoderShape.from_hf_config(t.decoder_config, t.d_query)
        cases = []
        done = set()
        for r in rows:
            if r["model"] != "reasoner" or r["status"] != OK or (r["batch"], r["seq"]) in done:
                continue
            done.add((r["batch"], r["seq"]))
            cases.append(_case(rows, "reasoner", r["batch"], r["seq"], decoder_flops(shape, r["batch"], r["seq"]),
                               peaks))
        cases.sort(key=lambda c: (c["seq"], c["batch"]))
        if t.src is not None and cases:
            import torch

            # a check on the formula: PyTorch's FlopCounterMode on one case (it counts the weight
            # matmuls; SDPA on the CPU path is not counted, so it matches flops["weights"])
            c0 = cases[0]
            ids = torch.full((c0["batch"], c0["seq"]), 5, dtype=torch.long)
            c0["torch_counted_flops"] = torch_flops(t.src.reasoner, ids, torch.ones_like(ids))
        models["reasoner"] = {"shape": shape.to_dict(), "counted_by": "analytic (rgalign.bench.flops.decoder_flops)",
                              "cases": cases}
    if t.src is None:
        models["ranker"] = {"reason": t.torch_missing or "no PyTorch ranker to count"}
    else:
        import torch

        from rgalign.bench.inputs import ranker_feeds

        cases = []
        for b in sorted({r["batch"] for r in rows if r["model"] == "ranker" and r["status"] == OK}):
            feeds = ranker_feeds(t.pre, t.records, b, t.d_query)
            flops = torch_flops(t.src.ranker.score_all, *(torch.from_numpy(feeds[k]) for k in ("cat", "num", "query")))
            cases.append(_case(rows, "ranker", b, None, {"total": flops}, peaks))
        models["ranker"] = {"counted_by": "torch FlopCounterMode (QERanker.score_all)", "cases": cases}
    return {"peaks": peaks, "models": models}


def _case(rows: list[dict[str, Any]], model: str, batch: int, seq: int | None, flops: dict[str, int],
          peaks: dict[str, dict[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {"batch": batch, "seq": seq, "flops": flops, "threads": {}, "floor_ms": {},
                           "measured_ms": {}, "fraction": {}}
    for precision in ("fp32", "int8"):
        row = find_row(rows, model, f"onnxruntime-{precision}", "cpu", batch, seq)
        if row is None or str(row["threads"]) not in peaks:
            continue
        fl = floor_ms(flops, precision, peaks[str(row["threads"])]["peak_gflops"])
        if fl is None:
            continue
        out["threads"][precision] = row["threads"]
        out["floor_ms"][precision] = round(fl, 4)
        out["measured_ms"][precision] = row["p50_ms"]
        out["fraction"][precision] = round(fl / row["p50_ms"], 4)
    return out


def run_bench(
    target: str | os.PathLike | None,
    out_dir: str | os.PathLike,
    url: str | None = None,
    grpc_url: str | None = None,
    quick: bool = False,
    precision: str = "int8",
    threads: int | None = None,
    compile: bool | None = None,
    records_file: str | os.PathLike | None = None,
    batches: Sequence[int] | None = None,
    seqs: Sequence[int] | None = None,
    concurrencies: Sequence[int] | None = None,
    budget: Budget | None = None,
    model: str = ENSEMBLE,
    command: str | None = None,
    progress: Progress | None = None,
) -> dict[str, Any]:
    """Benchmark ``target`` (an EXPORT or RUN folder; None with ``url`` alone) and the server at
    ``url``; writes ``out_dir``/bench.{json,md,png} and returns the JSON object.

    Args:
        precision: the deployed precision: the in-process pipeline the Triton overhead is taken
            against.
        threads: CPU threads for every engine; default: every usable core and 1 (the faster
            counts), 1 with ``quick``.
        compile: also measure ``torch.compile``; default: in a full run, not with ``quick``
            (inductor compiles each shape and thread count anew: about a minute each on 2 cores).
        batches, seqs, concurrencies, budget: override the defaults (full or ``quick``).
    """
    from rgalign.bench import perf_analyzer
    from rgalign.bench import served as served_mod
    from rgalign.serve.client import grpc_url_for, host_port

    if target is None and url is None:
        raise ConfigError("nothing to benchmark: pass an EXPORT or RUN folder, or --url of a running server")
    say = step_announcer(progress)
    t_start = time.perf_counter()
    cores = default_threads()
    if threads:
        thread_counts: tuple[int, ...] = (int(threads),)
    elif quick:
        thread_counts = (1,)  # quick: one setting that cannot stall (see rgalign.bench.inprocess)
    else:
        thread_counts = tuple(sorted({cores, 1}, reverse=True))
    budget = budget or (Budget.quick() if quick else Budget())
    base = Shapes.quick() if quick else Shapes()
    shapes = Shapes(batches=tuple(batches or base.batches), seqs=tuple(seqs or base.seqs))
    concurrencies = tuple(concurrencies or (served_mod.QUICK_CONCURRENCIES if quick else served_mod.CONCURRENCIES))

    say("opening the target")
    t = resolve_target(target, records_file)
    if t.manifest is not None and precision not in t.precisions:
        raise ConfigError(f"--precision {precision}: this export has {', '.join(t.precisions)}")
    machine = describe_machine(list(thread_counts))

    rows: list[dict[str, Any]] = []
    floor = None
    if t.pre is not None:
        say("measuring the matmul peak")
        # keyed by str(threads): the same keys after a JSON round trip
        peaks = {str(th): measure_peaks(_peak_shapes(t), th, budget) for th in thread_counts}
        if compile is None:
            compile = not quick
        rows = InProcessBench(t, shapes, budget, thread_counts, compile=compile, progress=progress).run()
        say("counting FLOPs")
        floor = _floor(t, rows, peaks)

    served = None
    if url is not None:
        # NVIDIA's perf_analyzer measures the served figures wherever it runs; rgalign's own async
        # client only where it cannot (each figure says its "source").
        say(f"perf_analyzer on the server at {url}")
        served = perf_analyzer.bench("%s:%d" % host_port(url), grpc_url or grpc_url_for(url),
                                     # quick: the two levels the ratios read (~4 s each)
                                     t.records, (1, 16) if quick else concurrencies, quick, model)
        if served["status"] != "OK":
            say(f"benchmarking the server at {url} with rgalign's own client")
            fallback = served_mod.bench_served(url, t.records, budget if quick else Budget(
                warmup=budget.warmup, min_reps=budget.min_reps, max_reps=100_000, seconds=max(budget.seconds, 5.0)),
                concurrencies, grpc_url, model)
            served = {**fallback, "source": "rgalign client", "perf_analyzer": served}

    ratios, notes = compute_ratios(rows, floor, served, precision)
    result = {
        "format_version": FORMAT_VERSION,
        "command": command or f"run_bench({os.fspath(target) if target else None!r}, quick={quick})",
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "quick": quick,
        "machine": machine,
        "budget": budget.to_dict(),
        "shapes": {"batches": list(shapes.batches), "seqs": list(shapes.seqs), "concurrencies": list(concurrencies)},
        "precision": precision,
        "target": t.describe(),
        "headline": {"batch": HEADLINE_BATCH, "seq": headline_seq(rows)},
        "ratios": ratios,
        "ratio_notes": notes,
        "targets": targets(ratios),
        "inprocess": rows,
        "flop_floor": floor,
        "served": served,
        "seconds": 0.0,
    }
    result["seconds"] = round(time.perf_counter() - t_start, 2)
    from rgalign.bench.report import write_report

    say("writing the report")
    write_report(Path(out_dir), result)
    return result
