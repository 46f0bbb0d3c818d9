"""``rgalign quickstart``: the whole pipeline on embedded defaults (SPEC §9), each step reused when
a previous quickstart already finished it.

    OUT/data    synthesise (6,000 requests) and check
    OUT/run     train stages 0-6 (a small configuration), evaluate -> metrics.json
    OUT/export  ONNX fp32 / fp16 / int8, each gated against PyTorch (reused while the run's
                deployable models are unchanged: the manifest records their sha256)
    OUT/repo    a Triton model repository (python backend, int8)
    (server)    a real tritonserver on free local ports, queried for a few requests
    OUT/bench   ``bench --quick`` of the export and the running ensemble
    (stop)      the server is stopped whatever happened

Returns the paths and the figures the summary table prints.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rgalign.progress import Log
from rgalign.training.config import (
    CalibrateConfig, DPOConfig, RankerStageConfig, RGCLConfig, RGSFTConfig, TrainConfig, WarmupConfig,
)

# Small enough for the 10-minute budget on 2 CPU cores (install included), large enough that the
# text signal shows: 6,000 requests (60k impressions), 1,500 warm-up examples, 400 RGA requests.
QUICKSTART_DATA = {"users": 1000, "intents": 200, "requests": 6000, "seed": 0}
QUICKSTART_TRAIN = TrainConfig(
    baseline=RankerStageConfig(epochs=6),
    warmup=WarmupConfig(max_examples=1500),
    reward=RankerStageConfig(epochs=6),
    rg_sft=RGSFTConfig(max_requests=400),
    dpo=DPOConfig(max_pairs=400),
    rg_cl=RGCLConfig(max_requests=1500),
    calibrate=CalibrateConfig(control=False, max_requests=None),
)
QUICKSTART_PRECISION = "int8"
QUICKSTART_QUERIES = 3



@dataclass
class QuickstartResult:
    out: Path
    data: Path
    run: Path
    export: Path
    repo: Path
    bench: Path
    metrics: dict[str, Any]
    export_steps: list[dict[str, Any]] = field(default_factory=list)
    queries: list[dict[str, Any]] = field(default_factory=list)
    ratios: dict[str, Any] = field(default_factory=dict)
    urls: dict[str, str] = field(default_factory=dict)
    precision: str = QUICKSTART_PRECISION  # what was deployed


def export_is_current(run: Path, export: Path) -> bool:
    """Whether ``export`` was made from the deployable models ``run`` has now (same files, same
    bytes), so the quickstart can reuse it."""
    from rgalign.artifacts.run import RunDir, final_models, sha256_file
    from rgalign.io import read_json

    manifest = export / "manifest.json"
    if not manifest.is_file():
        return False
    try:
        source = read_json(manifest)["source"]
        reasoner, ranker = final_models(RunDir(run))
    except Exception:  # noqa: BLE001 - an unreadable or foreign manifest: export again
        return False
    root = Path(run)
    if source.get("reasoner") != str(reasoner.relative_to(root)) or source.get("ranker") != str(ranker.relative_to(root)):
        return False
    files = source.get("files_sha256") or {}
    return bool(files) and all((root / f).is_file() and sha256_file(root / f) == h for f, h in files.items())


def sample_records(data: Path, n: int) -> list[dict[str, Any]]:
    """The raw feature dicts of the first ``n`` test requests (what a client sends)."""
    from rgalign.inference.records import dataset_records

    return dataset_records(data, limit=n)


def quickstart(
    out: str | Path = "quickstart",
    *,
    log: Log = print,
    quiet: bool = False,
    data_params: dict[str, Any] | None = None,
    train_config: TrainConfig | None = None,
    precision: str = QUICKSTART_PRECISION,
) -> QuickstartResult:
    """Run every step into ``out`` (defaults: the embedded ones above; tests pass smaller ones)."""
    from rgalign.data.loader import load_dataset
    from rgalign.data.synth import synthesize
    from rgalign.training.trainer import train

    out = Path(out)
    res = QuickstartResult(out, out / "data", out / "run", out / "export", out / "repo", out / "bench", {})

    if (res.data / "synth.json").is_file():
        log(f"data: reusing {res.data}")
    else:
        synthesize(res.data, **(data_params or QUICKSTART_DATA))
        log(f"data: wrote {res.data}")
    info = load_dataset(res.data).describe()  # validates: a bad dataset stops here, before training
    log(f"check: OK ({info['users']} users, {info['intents']} intents)")

    res.metrics = train(res.data, res.run, train_config or QUICKSTART_TRAIN, None, log=log, quiet=quiet)

    res.export_steps, precision = _export(res, precision, log)
    res.precision = precision
    _deploy(res, precision, log)
    _serve_query_bench(res, precision, log)
    return res


def _export(res: QuickstartResult, precision: str, log: Log) -> tuple[list[dict[str, Any]], str]:
    """Export (or reuse) and return the manifest's steps and the precision to deploy: the asked
    one, or fp16 when no int8 pair passes its gates (the export says which gate missed)."""
    from rgalign.errors import ExportError
    from rgalign.export.build import export_run
    from rgalign.io import read_json

    manifest_path = res.export / "manifest.json"
    if export_is_current(res.run, res.export):
        manifest = read_json(manifest_path)
        if precision in manifest.get("precisions", []) or "fp16" in manifest.get("precisions", []):
            log(f"export: reusing {res.export} (made from the run's current models)")
            return list(manifest.get("steps", [])), precision if precision in manifest["precisions"] else "fp16"

    def progress(step: str, status: str, message: str = "") -> None:
        if status != "START":
            log(f"export {step}: {status} {message}".rstrip())

    precisions = ["fp32", "fp16", "int8"] if precision != "fp32" else ["fp32"]
    try:
        manifest = export_run(res.run, res.export, precisions=precisions, progress=progress)
    except ExportError as e:
        if precision != "int8":
            raise
        log(f"export: int8 missed its gates ({e}); exporting fp32 and fp16, and deploying fp16")
        manifest = export_run(res.run, res.export, precisions=["fp32", "fp16"], progress=progress)
        precision = "fp16"
    log(f"export: wrote {res.export} in {manifest.get('seconds', 0):.0f} s")
    return list(manifest.get("steps", [])), precision


def _deploy(res: QuickstartResult, precision: str, log: Log) -> None:
    from rgalign.serve.repository.deploy import DeployOptions, deploy

    deploy(res.export, res.repo, DeployOptions(backend="python", precision=precision))
    log(f"deploy: wrote {res.repo} (python backend, {precision})")


def _context(record: dict[str, Any], width: int = 60) -> str:
    """A short description of a request for the summary: its order status and recent actions."""
    keys = [k for k in ("last_order_status", "days_since_last_order", "recent_actions") if k in record]
    text = ", ".join(f"{k}={record[k]}" for k in keys) or ", ".join(f"{k}={v}" for k, v in list(record.items())[:3])
    return text if len(text) <= width else text[: width - 3] + "..."


def _serve_query_bench(res: QuickstartResult, precision: str, log: Log) -> None:
    from rgalign.bench.runner import run_bench
    from rgalign.io import read_json
    from rgalign.serve.client import RgalignClient
    from rgalign.serve.server import TritonServer

    server = TritonServer(res.repo, log_file=res.out / "tritonserver.log")
    server.start(timeout=120)
    try:
        res.urls = {"http": server.http_url, "grpc": f"grpc://{server.grpc_url}"}
        log(f"serve: tritonserver ready at {server.http_url} (gRPC {server.grpc_url}) in {server.ready_seconds:.1f} s")
        records = sample_records(res.data, QUICKSTART_QUERIES)
        with RgalignClient(server.http_url) as client:
            ranked = client.rank(records, k=3)
        intents = read_json(res.export / "intents.json")
        text_of = dict(zip(intents["intent_ids"], intents["intent_texts"]))
        res.queries = [
            {"context": _context(rec), "intent_ids": list(r.intent_ids), "scores": [float(s) for s in r.scores],
             "texts": [text_of.get(i, "") for i in r.intent_ids]}
            for rec, r in zip(records, ranked)
        ]
        log(f"query: {len(ranked)} requests answered by the ensemble")
        bench = run_bench(res.export, res.bench, url=server.http_address, grpc_url=server.grpc_url, quick=True, precision=precision,
                          progress=lambda *_: None)
        res.ratios = bench.get("ratios", {})
        log(f"bench: wrote {res.bench}/bench.json, bench.md, bench.png")
    finally:
        server.stop()
        log("serve: server stopped")
