"""What deploy reads from an export: the graphs' tensor specs (from the manifest's IO signatures,
without the batch dimension) and the files of the chosen backend and precision, each checked
against the sha256 the manifest records."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rgalign.artifacts.registry import MODELS
from rgalign.artifacts.run import sha256_file
from rgalign.errors import ExportError
from rgalign.serve.repository import config as tc


# The served model's contract (`ENSEMBLE`, whichever layout serves it): one JSON object of raw
# features per item and an optional k in, the top-k intent ids and scores out. In the ensemble,
# preprocess reads FEATURES, and postprocess reads TOP_K and writes ANSWER.
FEATURES = tc.TensorSpec("features", "BYTES", (1,))
TOP_K = tc.TensorSpec("top_k", "INT32", (1,), optional=True)
ANSWER = (tc.TensorSpec("intent_ids", "BYTES", (-1,)), tc.TensorSpec("scores", "FP32", (-1,)))


# ------------------------------------------------------------------------------------------------
# Tensor specs from the export's IO signatures


def _specs(signature: list[dict[str, Any]], known: Mapping[str, tuple[int, ...]]) -> list[tc.TensorSpec]:
    """ONNX IO signature entries (batch first) -> TensorSpecs without the batch dimension.

    A graph may leave a fixed dimension symbolic (torch's legacy exporter names output dims);
    ``known`` gives the sizes the manifest states (``d_query``, ``n_intents``, ``topk``), and a
    concrete dimension of the graph must agree with them."""
    specs = []
    for entry in signature:
        shape = entry["shape"]
        if not shape or isinstance(shape[0], int):
            raise ExportError(
                f"the exported input/output {entry['name']!r} has no dynamic batch dimension "
                f"(shape {shape}); Triton batching needs one: re-export the run"
            )
        dims = tuple(d if isinstance(d, int) else -1 for d in shape[1:])
        want = known.get(entry["name"])
        if want is not None:
            if len(want) != len(dims) or any(d not in (-1, w) for d, w in zip(dims, want)):
                raise ExportError(
                    f"the exported {entry['name']!r} has shape {shape}, but the manifest says "
                    f"(batch, {', '.join(map(str, want))}); re-export the run"
                )
            dims = want
        specs.append(tc.TensorSpec(entry["name"], entry["dtype"], dims))
    return specs


@dataclass(frozen=True)
class Signature:
    reasoner_inputs: list[tc.TensorSpec]
    reasoner_outputs: list[tc.TensorSpec]
    ranker_inputs: list[tc.TensorSpec]
    ranker_outputs: list[tc.TensorSpec]

    def spec(self, name: str) -> tc.TensorSpec:
        for s in self.reasoner_inputs + self.reasoner_outputs + self.ranker_inputs + self.ranker_outputs:
            if s.name == name:
                return s
        raise ExportError(f"the exported graphs have no tensor {name!r}; re-export the run")


def signature(manifest: Mapping[str, Any], precision: str) -> Signature:
    arts = manifest["artifacts"]
    r, k = arts[f"reasoner/{precision}"], arts[f"ranker/{precision}"]
    serving = manifest["serving"]
    d, n, top = int(serving["d_query"]), int(serving["n_intents"]), int(serving["topk"])
    known = {
        "latent_query": (d,), "query": (d,), "scores": (n,), "topk_scores": (top,), "topk_idx": (top,),
    }  # fmt: skip
    sig = Signature(*(_specs(a[key], known) for a in (r, k) for key in ("inputs", "outputs")))
    expected = {
        "reasoner": ({"input_ids", "attention_mask"}, {"latent_query"}),
        "ranker": ({"cat", "num", "query"}, {"scores", "topk_scores", "topk_idx"}),
    }
    got = {
        "reasoner": ({s.name for s in sig.reasoner_inputs}, {s.name for s in sig.reasoner_outputs}),
        "ranker": ({s.name for s in sig.ranker_inputs}, {s.name for s in sig.ranker_outputs}),
    }
    for model, want in expected.items():
        if got[model] != want:
            raise ExportError(
                f"the exported {model} has inputs/outputs {got[model]}, expected {want}; "
                "re-export the run with this version of rgalign"
            )
    return sig


# ------------------------------------------------------------------------------------------------
# Sources in the export


def _checked_file(export: Path, manifest: Mapping[str, Any], key: str, hint: str) -> Path:
    art = manifest["artifacts"].get(key)
    if art is None or "path" not in art:
        have = sorted(k for k, v in manifest["artifacts"].items() if "path" in v)
        raise ExportError(
            f"{export}: the export has no {key} (it has {', '.join(have) or 'nothing'}); {hint}"
        )
    path = export / art["path"]
    if not path.is_file():
        raise ExportError(f"{export}: {art['path']} is listed in the manifest but missing; re-export")
    if art.get("sha256") and sha256_file(path) != art["sha256"]:
        raise ExportError(
            f"{path} does not match the sha256 in {export}/manifest.json (changed since export?); "
            "re-export the run"
        )
    return path


def external_data(export: Path, manifest: Mapping[str, Any], precision: str) -> dict[str, list[Path]]:
    """The weight files (ONNX external data) beside each model's graph, each checked against its
    sha256 in the manifest: deploy copies them beside ``model.onnx``, where its references point."""
    out: dict[str, list[Path]] = {}
    for m in MODELS:
        files = []
        for d in (manifest["artifacts"].get(f"{m}/{precision}") or {}).get("external_data", []):
            path = export / d["path"]
            if not path.is_file():
                raise ExportError(f"{export}: {d['path']} (the weights of {m}/{precision}) is missing; re-export")
            if sha256_file(path) != d["sha256"]:
                raise ExportError(f"{path} does not match the sha256 in {export}/manifest.json; re-export the run")
            files.append(path)
        out[m] = files
    return out


def model_files(export: Path, manifest: Mapping[str, Any], backend: str, precision: str) -> dict[str, Path]:
    """``{"reasoner": file, "ranker": file}`` for the chosen backend and precision."""
    p = precision
    if backend == "tensorrt":
        hint = (
            "TensorRT plans are built by `rgalign export --tensorrt` on a GPU machine with TensorRT; "
            "or deploy with --backend python / onnxruntime"
        )
        return {m: _checked_file(export, manifest, f"tensorrt/{m}_{p}", hint) for m in MODELS}
    hint = f"re-run `rgalign export --precision {p}`"
    return {m: _checked_file(export, manifest, f"{m}/{p}", hint) for m in MODELS}
