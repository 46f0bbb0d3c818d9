"""Data that does not fit one process: time and peak RSS per rank of reading the impressions and
fitting the encoders, by shard (1 vs 2 ranks) and in memory, on a 5-million-impression log.

    python benchmarks/sharded_data.py make OUT/data --impressions 5000000     # the synthetic log
    python benchmarks/sharded_data.py measure OUT/data --mode memory --label memory_1
    torchrun --nproc_per_node 1 benchmarks/sharded_data.py measure OUT/data --mode stream --label stream_1
    torchrun --nproc_per_node 2 benchmarks/sharded_data.py measure OUT/data --mode stream --label stream_2

Each ``measure`` adds its row (per rank) to ``--json`` (default
``benchmarks/results/sharded_data.json``).

The log: `rgalign.data.synth.generate` called in chunks of 50,000 requests x 10 impressions with
seeds 0, 1, ...; chunk ``k``'s request ids are prefixed ``c{k}-`` and its times shifted by ``k``
x 61 days, so the log stays grouped by request and in time order; users and intents are chunk
0's (every chunk draws the same user ids). Written with one ``ParquetWriter``, row groups of
100,000 rows (zstd), as a request log would be.

Phases per rank (wall time, and the process's peak RSS after each, ``ru_maxrss``):
- ``fit``: ``memory``: `load_dataset` (every row, validated) + `FeatureEncoders.fit`;
  ``stream``: `rgalign.data.shards.fit_encoders_streamed` (this rank's row groups, batches of
  65,536 rows, merged across ranks);
- ``load``: ``memory``: nothing more; ``stream``: `load_shard` (this rank's requests as a
  validated Dataset, split as the whole log) -- then, both: `build_requests` of the train split;
- ``steps`` (``--steps N``): N steps of the baseline ranker (AutoInt+MoE, batch 256 requests) on
  this rank's training requests, DDP across ranks.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import time
from pathlib import Path

CHUNK_REQUESTS = 50_000
SLATE = 10
USERS = 20_000
ROW_GROUP = 100_000
SHIFT_S = 61 * 86_400  # the synthetic log spans 60 days: chunk k starts after chunk k-1 ends


def rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0  # Linux: KiB


def make(out: Path, impressions: int, seed: int) -> None:
    import numpy as np
    import pyarrow as pa
    import pyarrow.parquet as pq

    from rgalign.data.synth import SCHEMA, generate  # public names, before and after synth's split

    def _arrow(cols):
        return pa.table({k: pa.array(v, type=pa.string()) if v.dtype == object else pa.array(v) for k, v in cols.items()})

    out.mkdir(parents=True, exist_ok=True)
    chunks = -(-impressions // (CHUNK_REQUESTS * SLATE))
    t0 = time.perf_counter()
    writer = None
    rows = 0
    for k in range(chunks):
        t = generate(users=USERS, intents=200, requests=CHUNK_REQUESTS, seed=seed + k, slate_size=SLATE)
        imp = dict(t.impressions)
        imp["request_id"] = np.array([f"c{k}-{r}" for r in imp["request_id"]], dtype=object)
        imp["ts"] = imp["ts"] + k * SHIFT_S
        table = _arrow(imp)
        if k == 0:
            pq.write_table(_arrow(t.users), out / "users.parquet", compression="zstd")
            pq.write_table(_arrow(t.intents), out / "intents.parquet", compression="zstd")
            SCHEMA.to_yaml(out / "dataset.yaml")
            writer = pq.ParquetWriter(out / "impressions.parquet", table.schema, compression="zstd")
        writer.write_table(table, row_group_size=ROW_GROUP)
        rows += table.num_rows
        print(f"chunk {k + 1}/{chunks}: {rows:,} impressions, {time.perf_counter() - t0:.0f} s", flush=True)
    writer.close()
    size = (out / "impressions.parquet").stat().st_size
    print(f"wrote {out}: {rows:,} impressions, {size / 2**20:.0f} MiB, {time.perf_counter() - t0:.0f} s")


def measure(data: Path, mode: str, label: str, steps: int, out_json: Path) -> None:
    import torch

    from rgalign.training.distributed import init_distributed

    torch.set_num_threads(1)
    dist = init_distributed()
    gather = None
    if dist.enabled:
        def gather(obj):
            got = [None] * dist.world_size
            torch.distributed.all_gather_object(got, obj)
            return got
    row: dict = {"rank": dist.rank, "world_size": dist.world_size, "rss_after_imports_mb": rss_mb()}

    from rgalign.data.encoders import FeatureEncoders
    from rgalign.data.loader import load_dataset
    from rgalign.data.requests import build_requests

    t0 = time.perf_counter()
    if mode == "memory":
        ds = load_dataset(data)
        enc = FeatureEncoders.fit(ds)
        row["fit_s"], row["rss_after_fit_mb"] = time.perf_counter() - t0, rss_mb()
        t1 = time.perf_counter()
    else:
        from rgalign.data.shards import fit_encoders_streamed, load_shard

        fit = fit_encoders_streamed(data, dist.rank, dist.world_size, gather=gather)
        enc = fit.encoders
        row["fit_s"], row["rss_after_fit_mb"] = time.perf_counter() - t0, rss_mb()
        row["shard_rows"] = fit.shard.rows
        t1 = time.perf_counter()
        ds = load_shard(data, fit)
    row["impressions"] = len(ds.impressions)
    train = build_requests(ds, enc, "train")
    del ds
    row["train_requests"] = len(train)
    row["load_s"], row["rss_after_load_mb"] = time.perf_counter() - t1, rss_mb()
    # vocabularies exactly (a digest), numeric statistics as values: streamed merges sum in
    # another order than numpy's one pass, so they may differ in the last bits
    row["vocab_sha"] = _digest({f: enc.vocabs[f] for f in enc.categorical_fields})
    row["means"], row["stds"] = enc.means, enc.stds
    if steps:
        row.update(_steps(train, enc, dist, steps))
    rows = [row]
    if dist.enabled:
        rows = [None] * dist.world_size
        torch.distributed.all_gather_object(rows, row)
    if dist.is_main:
        results = json.loads(out_json.read_text()) if out_json.is_file() else {}
        results.setdefault("machine", {"cpus": os.cpu_count(), "python": platform.python_version(),
                                       "torch": torch.__version__, "platform": platform.platform()})
        results[label] = {"mode": mode, "data": str(data), "steps": steps, "ranks": rows,
                          "peak_rss_mb_max_rank": max(r["rss_after_load_mb"] if not steps else r["rss_after_steps_mb"]
                                                      for r in rows),
                          "wall_s_max_rank": max(r["fit_s"] + r["load_s"] + r.get("steps_s", 0.0) for r in rows)}
        out_json.parent.mkdir(parents=True, exist_ok=True)
        out_json.write_text(json.dumps(results, indent=1) + "\n")
        print(json.dumps(results[label], indent=1))
    if dist.enabled:
        torch.distributed.destroy_process_group()


def _digest(obj) -> str:
    import hashlib

    return hashlib.sha256(json.dumps(obj, sort_keys=True).encode()).hexdigest()[:16]


def _steps(train, enc, dist, steps: int) -> dict:
    import numpy as np
    import torch

    from rgalign.models.baseline import AutoIntMoE, BaselineConfig
    from rgalign.models.losses import ranker_loss
    from rgalign.training.loops import slate_batch

    model = AutoIntMoE(BaselineConfig(cardinalities=tuple(enc.cardinalities), n_numeric=len(enc.numeric_fields),
                                      n_intents=enc.num_intents))
    ddp = torch.nn.parallel.DistributedDataParallel(model) if dist.enabled else model
    opt = torch.optim.AdamW(model.parameters(), lr=2e-3)
    rng = np.random.default_rng(dist.rank)
    t0 = time.perf_counter()
    losses = []
    for _ in range(steps):
        b = slate_batch(train, rng.choice(len(train), 256, replace=False))
        loss, _ = ranker_loss(ddp(b["cat"], b["num"], b["shown"]), b["labels"], b["mask"], None, alpha_bce=0.5, beta_kl=0.0)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(float(loss.detach()))
    return {"steps_s": time.perf_counter() - t0, "rss_after_steps_mb": rss_mb(), "last_loss": losses[-1]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    m = sub.add_parser("make")
    m.add_argument("out", type=Path)
    m.add_argument("--impressions", type=int, default=5_000_000)
    m.add_argument("--seed", type=int, default=0)
    r = sub.add_parser("measure")
    r.add_argument("data", type=Path)
    r.add_argument("--mode", choices=("memory", "stream"), required=True)
    r.add_argument("--label", required=True)
    r.add_argument("--steps", type=int, default=0)
    r.add_argument("--json", type=Path, default=Path(__file__).parent / "results" / "sharded_data.json")
    args = ap.parse_args()
    if args.cmd == "make":
        make(args.out, args.impressions, args.seed)
    else:
        measure(args.data, args.mode, args.label, args.steps, args.json)


if __name__ == "__main__":
    main()
