"""`deploy(EXPORT, REPO)`: an export -> a Triton model repository serving ``rgalign``.

Layouts (`LAYOUT_REGISTRY`): ``fused`` (`rgalign.serve.repository.fused`), or the ensemble:

    REPO/
      README.md  deploy.json  manifest.json   layout, how it was built, the export's manifest
      preprocess/  config.pbtxt  1/model.py  1/manifest.json encoders.json prompt_fields.json
                                             1/reasoner/tokenizer/      warmup/features
      reasoner/    config.pbtxt  1/model.onnx (+ 1/model.py, python backend) | 1/model.plan
                                 warmup/input_ids  warmup/attention_mask
      ranker/      config.pbtxt  1/model.onnx (+ 1/model.py) | 1/model.plan
      postprocess/ config.pbtxt  1/model.py  1/intents.json
      rgalign/     config.pbtxt  1/            the ensemble chaining the four

Request of ``rgalign``: ``features`` BYTES (B, 1), one JSON object of raw features per item, and
optional ``top_k`` INT32 (B, 1); response ``intent_ids`` BYTES (B, k), ``scores`` FP32 (B, k),
best first. Backends of ``reasoner`` and ``ranker``:

- ``python``: ONNX Runtime inside Triton's python backend, through the same code as the
  in-process `rgalign.inference.Pipeline` (runs with the embedded CPU server of nvidia-pytriton);
- ``onnxruntime``: Triton's own ONNX Runtime backend (optionally its TensorRT accelerator, GPU):
  a server with that backend (an NGC container) is needed, the nvidia-pytriton wheel has none;
- ``tensorrt``: the export's TensorRT plans (``rgalign export --tensorrt``), GPU only.

Configs are `rgalign.serve.repository.config` protobuf messages. The four step models batch (dynamic
batching, preferred sizes, a short queue delay); the ensemble cannot (see `ensemble_model`).
Everything is written in a temporary folder beside REPO and swapped in at the end
(`rgalign.io.atomic_dir`): a failed deploy leaves an existing REPO untouched.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

import rgalign
from rgalign.artifacts.manifest import read_manifest
from rgalign.artifacts.registry import ENSEMBLE, check_backend, check_layout, default_layout
from rgalign.artifacts.run import sha256_file
from rgalign.errors import ConfigError, ServeError
from rgalign.inference.limits import RequestLimits
from rgalign.inference.preprocess import Preprocessor
from rgalign.io import atomic_dir, read_json, write_json_atomic, write_text_atomic
from rgalign.progress import Progress, step_announcer
from rgalign.serve.repository import config as tc
from rgalign.serve.repository import fused
from rgalign.serve.repository.ensemble import ensemble_config
from rgalign.serve.repository.readme import README_TEXT
from rgalign.serve.repository.signature import (
    ANSWER, FEATURES, TOP_K, Signature, external_data, model_files, signature,
)
from rgalign.serve.repository.warmup import sample_record, warmup_files
from rgalign.serve.server.live import carry_runtime_files, refuse_unless_forced, request_reload

STEP_MODELS = ("preprocess", "reasoner", "ranker", "postprocess")


@dataclass(frozen=True)
class DeployOptions:
    """How to deploy. Each default has its reason:

    - ``max_batch=16``: dynamic batching merges up to 16 concurrent requests into one ONNX
      Runtime call (SPEC §8 measures throughput at concurrency 16); the TensorRT profiles of the
      export go up to 64.
    - ``queue_delay_us=0``: no request waits for company. A busy instance still batches
      whatever queued while it ran, so batching under load is unchanged, and a lone request
      skips the scheduler's wait (measured with perf_analyzer on the fused int8 layout, 2 cores:
      p50 at c=1 2.99 ms with 0 against 3.23 ms with 100 µs, req/s at c=16 397 against 403, one
      `rgalign tune` run). Raise it with ``--queue-delay-us`` where requests arrive in bursts
      too sparse to overlap a model call (`rgalign tune` sweeps it).
    - ``instances=1``: one instance per step model; on a 2-core machine more instances only
      compete for the cores (ONNX Runtime already uses them all).
    - ``threads=0``: ONNX Runtime's default intra-op threads (one per core), python backend only.
    - ``default_top_k=None``: the export's ``serving.topk`` (the K of the ranker graph).
    - ``max_item_bytes``, ``max_text_chars``: request limits checked before parsing and
      tokenization (`rgalign.inference.limits.RequestLimits`, where the defaults are explained).
    - ``batch_invariant=True``: a dynamically quantized (int8) graph runs row by row, so an
      answer never depends on batch mates (`rgalign.inference.batch_invariance`); False trades
      that for the batching gain (measured in benchmarks/reliability.py).
    - ``layout="auto"``: ``fused`` for the python backend (one process and no shared-memory hop
      per request), ``ensemble`` for native backends; see `LAYOUTS`.
    """

    backend: str = "python"
    precision: str = "fp32"
    instances: int = 1
    max_batch: int = 16
    queue_delay_us: int = 0
    threads: int = 0
    default_top_k: int | None = None
    tensorrt_accelerator: bool = False
    max_item_bytes: int = RequestLimits.max_item_bytes
    max_text_chars: int = RequestLimits.max_text_chars
    batch_invariant: bool = True
    layout: str = "auto"

    def __post_init__(self) -> None:
        if self.layout == "auto":
            object.__setattr__(self, "layout", default_layout(self.backend))
        check_layout(self.layout, self.backend)
        check_backend(self.backend, self.precision)
        if self.instances < 1:
            raise ConfigError(f"--instances must be >= 1, got {self.instances}")
        if self.max_batch < 1:
            raise ConfigError(f"--max-batch must be >= 1, got {self.max_batch}")
        if self.queue_delay_us < 0 or self.threads < 0:
            raise ConfigError("queue delay and threads must be >= 0")
        if self.tensorrt_accelerator and self.backend != "onnxruntime":
            raise ConfigError("the TensorRT accelerator applies to --backend onnxruntime only")
        if self.backend == "tensorrt" and self.precision == "fp32":
            raise ConfigError("TensorRT plans are exported in fp16 or int8; pass --precision fp16 or int8")
        self.limits()  # raises ConfigError for bad limits

    def limits(self) -> RequestLimits:
        return RequestLimits(max_item_bytes=self.max_item_bytes, max_text_chars=self.max_text_chars)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> DeployOptions:
        return cls(**{k: d[k] for k in cls.__dataclass_fields__ if k in d})

    def preferred_batch_sizes(self) -> tuple[int, ...]:
        """Powers of two from 4 up to ``max_batch``, and ``max_batch`` itself: sizes the batcher
        aims for (a batch of 2 is not worth waiting for)."""
        sizes = [b for b in (4, 8, 16, 32, 64, 128) if b < self.max_batch]
        return tuple(sizes + [self.max_batch])


# ------------------------------------------------------------------------------------------------
# Writing the repository

_SHIM = '''"""Generated by `rgalign deploy`: Triton's python-backend entry point for the {model} step.

The model is the tested module rgalign.serve.models.{model}; the server's Python (the one
`rgalign serve` runs the stub with) must have rgalign {version} installed.
"""

from rgalign.serve.models.{model} import TritonPythonModel  # noqa: F401
'''


def _write_shim(model_dir: Path, model: str) -> None:
    text = _SHIM.format(model=model, version=rgalign.__version__)
    write_text_atomic(tc.version_dir(model_dir) / "model.py", text)


def _batching(options: DeployOptions) -> Any:
    return tc.dynamic_batching(options.preferred_batch_sizes(), options.queue_delay_us)


def _groups(options: DeployOptions, kind: str = "cpu") -> list[Any]:
    return [tc.instance_group(options.instances, kind)]


def _write_preprocess(
    repo: Path, export: Path, manifest: Mapping[str, Any], sig: Signature, options: DeployOptions
) -> dict[str, np.ndarray]:
    """preprocess/: config, shim, the export's serving files. Returns the warm-up sample's
    preprocessed tensors (the other steps warm up on them) and the tokenizer's pad id."""
    model_dir = repo / "preprocess"
    files = tc.version_dir(model_dir)
    serving = manifest["serving"]
    for key in ("encoders", "prompt_fields", "intents"):
        dst = files / serving[key]
        dst.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(export / serving[key], dst)
    shutil.copytree(export / serving["tokenizer"], files / serving["tokenizer"])
    shutil.copyfile(export / "manifest.json", files / "manifest.json")
    _write_shim(model_dir, "preprocess")

    pre = Preprocessor.from_export(files)  # what the served model loads: check it loads
    record = sample_record(pre.encoders)
    features = np.array([[json.dumps(record).encode("utf-8")]], dtype=object)
    batch = pre([record])
    outputs = [
        tc.TensorSpec("input_ids", "INT64", (-1,)),
        tc.TensorSpec("attention_mask", "INT64", (-1,)),
        sig.spec("cat"),
        sig.spec("num"),
    ]
    config = tc.python_model(
        "preprocess",
        inputs=[FEATURES],
        outputs=outputs,
        max_batch_size=options.max_batch,
        dynamic_batching=_batching(options),
        instance_groups=_groups(options),
        warmup=warmup_files(model_dir, {"features": features}),
        parameters={k: str(v) for k, v in options.limits().to_dict().items()},
    )
    tc.write_config(model_dir, config)
    return {
        "vocab_size": np.array(len(pre.tokenizer), dtype=np.int64),
        "max_len": np.array(pre.max_len, dtype=np.int64),
        "cardinalities": np.array(list(pre.encoders.cardinalities), dtype=np.int64),
        "input_ids": batch.input_ids, "attention_mask": batch.attention_mask,
        "cat": batch.cat, "num": batch.num,
        "pad_token_id": np.array(pre.tokenizer.pad_token_id, dtype=np.int64),
    }  # fmt: skip


def _write_graph_model(
    repo: Path,
    name: str,
    source: Path,
    inputs: list[tc.TensorSpec],
    outputs: list[tc.TensorSpec],
    warmup_arrays: Mapping[str, np.ndarray],
    options: DeployOptions,
    parameters: Mapping[str, str],
    data: Sequence[Path] = (),
) -> None:
    """reasoner/ or ranker/ for the chosen backend; ``data``: the graph's external-data files,
    copied beside ``model.onnx`` under the names its references use."""
    model_dir = repo / name
    files = tc.version_dir(model_dir)
    warmup = warmup_files(model_dir, warmup_arrays)
    common = dict(
        max_batch_size=options.max_batch,
        dynamic_batching=_batching(options),
        warmup=warmup,
    )
    for f in data:
        shutil.copyfile(f, files / f.name)
    if options.backend == "python":
        shutil.copyfile(source, files / "model.onnx")
        _write_shim(model_dir, name)
        config = tc.python_model(
            name, inputs, outputs, instance_groups=_groups(options), parameters=parameters, **common
        )
    elif options.backend == "onnxruntime":
        shutil.copyfile(source, files / "model.onnx")
        accelerator = None
        if options.tensorrt_accelerator:
            accelerator = tc.TensorRTAccelerator(precision_mode=options.precision.upper())
        kind = "gpu" if accelerator is not None else "cpu"
        config = tc.onnxruntime_model(
            name, inputs, outputs, instance_groups=_groups(options, kind), tensorrt=accelerator,
            **common,
        )  # fmt: skip
    else:
        shutil.copyfile(source, files / "model.plan")
        config = tc.tensorrt_model(name, inputs, outputs, instance_groups=_groups(options, "gpu"), **common)
    tc.write_config(model_dir, config)


def _write_postprocess(repo: Path, export: Path, manifest: Mapping[str, Any], sig: Signature,
                       options: DeployOptions, default_k: int) -> None:
    model_dir = repo / "postprocess"
    files = tc.version_dir(model_dir)
    shutil.copyfile(export / manifest["serving"]["intents"], files / "intents.json")
    _write_shim(model_dir, "postprocess")
    topk_scores, topk_idx, scores = (sig.spec(n) for n in ("topk_scores", "topk_idx", "scores"))
    inputs = [
        topk_scores,
        topk_idx,
        tc.TensorSpec("all_scores", scores.dtype, scores.dims),
        TOP_K,
    ]
    k = topk_idx.dims[0]
    warm = {
        "topk_scores": np.zeros((1, k), np.float32),
        "topk_idx": np.arange(k, dtype=np.int64)[None, :],
        "all_scores": np.zeros((1, scores.dims[0]), np.float32),
    }
    config = tc.python_model(
        "postprocess",
        inputs=inputs,
        outputs=list(ANSWER),
        max_batch_size=options.max_batch,
        dynamic_batching=_batching(options),
        instance_groups=_groups(options),
        warmup=warmup_files(model_dir, warm),
        parameters={"default_top_k": str(default_k)},
    )
    tc.write_config(model_dir, config)


def _write_ensemble(
    tmp: Path, export: Path, manifest: Mapping[str, Any], sig: Signature, sources: Mapping[str, Path],
    data: Mapping[str, Sequence[Path]], options: DeployOptions, default_k: int, say: Callable[[str], None],
) -> None:
    """The ensemble layout: the four step models and the ensemble ``rgalign`` chaining them;
    ``data``: each graph's external-data files (`signature.external_data`)."""
    say("preprocess")
    warm = _write_preprocess(tmp, export, manifest, sig, options)
    say(f"reasoner ({options.backend}, {options.precision})")
    params = {"threads": str(options.threads), "batch_invariant": "1" if options.batch_invariant else "0"}
    _write_graph_model(
        tmp, "reasoner", sources["reasoner"], sig.reasoner_inputs, sig.reasoner_outputs,
        {"input_ids": warm["input_ids"], "attention_mask": warm["attention_mask"]}, options,
        {**params, "pad_token_id": str(int(warm["pad_token_id"])),
         "vocab_size": str(int(warm["vocab_size"])), "max_len": str(int(warm["max_len"]))},
        data["reasoner"],
    )  # fmt: skip
    say(f"ranker ({options.backend}, {options.precision})")
    d_query = sig.spec("query").dims[0]
    _write_graph_model(
        tmp, "ranker", sources["ranker"], sig.ranker_inputs, sig.ranker_outputs,
        {"cat": warm["cat"], "num": warm["num"], "query": np.zeros((1, d_query), np.float32)},
        options, {**params, "d_query": str(d_query),
                  "cardinalities": json.dumps([int(c) for c in warm["cardinalities"]])},
        data["ranker"],
    )  # fmt: skip
    say("postprocess")
    _write_postprocess(tmp, export, manifest, sig, options, default_k)
    say("ensemble")
    tc.write_config(tmp / ENSEMBLE, ensemble_config(options.max_batch))
    tc.version_dir(tmp / ENSEMBLE)


def _write_fused(
    tmp: Path, export: Path, manifest: Mapping[str, Any], options: DeployOptions, default_k: int
) -> None:
    """The fused layout (`rgalign.serve.repository.fused`): one python model running the Pipeline."""
    model_dir = tmp / ENSEMBLE
    files = tc.version_dir(model_dir)
    fused.copy_export_subset(export, manifest, options.precision, files)
    _write_shim(model_dir, "fused")
    pre = Preprocessor.from_export(files)  # what the served model loads: check it loads
    config = fused.fused_config(
        max_batch=options.max_batch, batching=_batching(options), groups=_groups(options),
        warmup=warmup_files(model_dir, {"features": fused.warmup_features(sample_record(pre.encoders))}),
        precision=options.precision, threads=options.threads, default_k=default_k,
        extra={**{k: str(v) for k, v in options.limits().to_dict().items()},
               "batch_invariant": "1" if options.batch_invariant else "0"},
    )  # fmt: skip
    tc.write_config(model_dir, config)


def deploy(
    export_dir: str | os.PathLike,
    out: str | os.PathLike,
    options: DeployOptions | None = None,
    progress: Progress | None = None,
    force: bool = False,
) -> dict[str, Any]:
    """Write the Triton model repository ``out`` for the export ``export_dir``; returns what
    ``out/deploy.json`` records (options, source export, models, files with their sha256).

    Raises ExportError when the export lacks what the options need (a precision, TensorRT
    plans), ConfigError for bad options. ``out`` is replaced only when everything was written.
    A running server of ``out`` is a ServeError unless ``force``: then the new repository
    replaces it and the server reloads from it (`rgalign.serve.server.live`; summary["reload"]).
    """
    live = refuse_unless_forced(out, force)
    options = options or DeployOptions()
    say = step_announcer(progress)
    export = Path(export_dir)
    manifest = read_manifest(export)
    sources = model_files(export, manifest, options.backend, options.precision)  # raises when the export lacks them
    data = {m: [] for m in sources} if options.backend == "tensorrt" else external_data(export, manifest, options.precision)
    sig_precision = options.precision
    if options.backend == "tensorrt" and f"reasoner/{sig_precision}" not in manifest["artifacts"]:
        sig_precision = "fp32"  # the plans' tensors are the ONNX graphs' (names, dtypes, dims)
    sig = signature(manifest, sig_precision)
    serving = manifest["serving"]
    n_intents = int(serving["n_intents"])
    default_k = options.default_top_k if options.default_top_k is not None else int(serving["topk"])
    if not 1 <= default_k <= n_intents:
        raise ConfigError(f"default top_k {default_k} is not in 1..{n_intents} (the KB's intents)")

    t0 = time.perf_counter()
    out = Path(out)
    with atomic_dir(out) as tmp:
        if options.layout == "fused":
            say(f"fused model ({options.precision})")
            _write_fused(tmp, export, manifest, options, default_k)
            models = [ENSEMBLE]
        else:
            _write_ensemble(tmp, export, manifest, sig, sources, data, options, default_k, say)
            models = list(STEP_MODELS) + [ENSEMBLE]

        shutil.copyfile(export / "manifest.json", tmp / "manifest.json")
        write_text_atomic(tmp / "README.md", README_TEXT)
        files = {
            os.fspath(p.relative_to(tmp)): sha256_file(p)
            for p in sorted(tmp.rglob("*"))
            if p.is_file() and p.suffix in (".onnx", ".data", ".plan", ".pbtxt")
        }
        summary = {
            "format": "rgalign.deploy/1",
            "rgalign_version": rgalign.__version__,
            "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "export": {
                "path": os.fspath(export.resolve()),
                "manifest_sha256": sha256_file(export / "manifest.json"),
                "source_run": manifest.get("source", {}).get("run"),
            },
            "options": options.to_dict(),
            "ensemble": ENSEMBLE,
            "layout": options.layout,
            "models": models,
            "default_top_k": default_k,
            "n_intents": n_intents,
            "graph_topk": int(serving["topk"]),
            "files_sha256": files,
            "seconds": round(time.perf_counter() - t0, 2),
        }
        write_json_atomic(tmp / "deploy.json", summary)
        if live:
            carry_runtime_files(out, tmp)  # the running serve's log, key and state survive
    if live:
        say("reloading the running server")
        summary["reload"] = request_reload(out, live)
    return summary


def read_deployment(repo: str | os.PathLike) -> dict[str, Any] | None:
    """``REPO/deploy.json`` (what deploy recorded), or None for a repository deploy did not write."""
    path = Path(repo) / "deploy.json"
    return read_json(path) if path.is_file() else None


def check_servable(repo: str | os.PathLike, wheel_server: bool) -> None:
    """ServeError, before starting anything, when the embedded (wheel) server cannot serve the
    repository's backend: it has the python backend only (SPEC §6)."""
    record = read_deployment(repo)
    backend = (record or {}).get("options", {}).get("backend", "python")
    if wheel_server and backend != "python":
        raise ServeError(
            f"{os.fspath(repo)} uses the {backend} backend, which the nvidia-pytriton wheel's "
            "tritonserver does not have (it has the python backend only); pass --tritonserver PATH "
            "to a server that has it (an NGC Triton container), or deploy with --backend python"
        )
