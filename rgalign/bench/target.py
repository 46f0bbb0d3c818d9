"""What `rgalign bench` measures: an EXPORT, a training RUN, or nothing local (``--url`` alone).

    EXPORT  -> ONNX Runtime artifacts of every precision it has, and the PyTorch models of the
               run it was exported from (manifest ``source.run``) when that run is still here and
               its files are unchanged (sha256 as recorded at export); else PyTorch is skipped.
    RUN     -> the PyTorch models only (eager, compiled), with a note to export for the rest.
    None    -> served figures only; the requests come from ``--records``.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rgalign.errors import ConfigError, RgalignError
from rgalign.io import read_json


@dataclass
class Target:
    """Everything the in-process benchmarks need, resolved once."""

    kind: str  # "export" | "run" | "url"
    path: Path | None
    export_dir: Path | None = None
    manifest: dict[str, Any] | None = None
    src: Any = None  # rgalign.export.source.RunSource: the PyTorch models, or None
    pre: Any = None  # rgalign.inference.preprocess.Preprocessor, or None
    records: list[dict[str, Any]] = field(default_factory=list)
    records_source: str = ""
    decoder_config: dict[str, Any] | None = None  # the backbone's HF config.json
    d_query: int | None = None
    notes: list[str] = field(default_factory=list)
    torch_missing: str | None = None  # why there are no PyTorch figures

    @property
    def precisions(self) -> list[str]:
        return list(self.manifest["precisions"]) if self.manifest else []

    def onnx_path(self, model: str, precision: str) -> Path | None:
        if self.manifest is None or self.export_dir is None:
            return None
        art = self.manifest["artifacts"].get(f"{model}/{precision}")
        return self.export_dir / art["path"] if art and "path" in art else None

    def tensorrt_plans(self) -> dict[str, Path]:
        """``"reasoner_fp16"`` -> plan path, for the engines this export has."""
        if self.export_dir is None:
            return {}
        return {p.stem: p for p in sorted((self.export_dir / "tensorrt").glob("*.plan"))}

    def describe(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "path": os.fspath(self.path) if self.path else None,
            "precisions": self.precisions,
            "source_run": os.fspath(self.src.root) if self.src is not None else None,
            "pytorch": "loaded" if self.src is not None else self.torch_missing,
            "records": self.records_source,
            "n_records": len(self.records),
            "notes": self.notes,
        }


def _load_source(run_dir: Path) -> Any:
    from rgalign.export.source import load_run

    return load_run(run_dir)


def _decoder_config(src: Any) -> dict[str, Any] | None:
    path = Path(src.reasoner_dir) / "backbone" / "config.json"
    return read_json(path) if path.is_file() else None


def resolve_target(path: str | os.PathLike | None, records_file: str | os.PathLike | None = None) -> Target:
    """Open ``path`` (an export or a run folder; None for ``--url`` alone) and pick the requests."""
    from rgalign.inference.records import read_records, records_for

    if path is None:
        if records_file is None:
            raise ConfigError(
                "bench --url without an EXPORT or RUN needs --records FILE (JSON list or JSON Lines of raw "
                "feature objects) to send; or pass the EXPORT the server was deployed from"
            )
        return Target(kind="url", path=None, records=read_records(records_file),
                      records_source=f"file {os.fspath(records_file)}")

    root = Path(path)
    if (root / "manifest.json").is_file():
        return _export_target(root, records_file, records_for)
    if (root / "run.json").is_file():
        src = _load_source(root)
        from rgalign.inference.preprocess import Preprocessor

        pre = Preprocessor(src.reasoner.tokenizer, src.fields, src.encoders, src.reasoner.config.max_len)
        records, where = records_for(src.encoders, src.data_path, records_file)
        return Target(
            kind="run", path=root, src=src, pre=pre, records=records, records_source=where,
            decoder_config=_decoder_config(src), d_query=int(src.reasoner.config.d_query),
            notes=[f"a training run: PyTorch figures only; `rgalign export {os.fspath(root)} --out EXPORT` and "
                   "bench the EXPORT for ONNX Runtime and the ratios"],
        )
    raise ConfigError(
        f"{os.fspath(root)} is neither an export (manifest.json) nor a training run (run.json); "
        "pass the folder `rgalign export` or `rgalign train` wrote"
    )


def _export_target(root: Path, records_file: Any, records_for: Any) -> Target:
    from rgalign.data.encoders import FeatureEncoders
    from rgalign.artifacts.manifest import read_manifest
    from rgalign.inference.preprocess import Preprocessor

    manifest = read_manifest(root)
    pre = Preprocessor.from_export(root)
    t = Target(kind="export", path=root, export_dir=root, manifest=manifest, pre=pre,
               d_query=int(manifest["serving"]["d_query"]))
    source = manifest.get("source") or {}
    run_dir = Path(source["run"]) if source.get("run") else None
    if run_dir is None or not (run_dir / "run.json").is_file():
        t.torch_missing = (f"the source run {source.get('run')} is not on this machine: no PyTorch figures "
                           "(bench the run's folder where it exists)")
    else:
        try:
            src = _load_source(run_dir)
            changed = sorted(k for k, v in src.model_files().items()
                             if source.get("files_sha256", {}).get(k) not in (None, v))
            if changed:
                t.torch_missing = (f"the source run {run_dir} changed since export ({', '.join(changed[:3])}): "
                                   "PyTorch figures would not be of the exported models; re-export")
            else:
                t.src = src
                t.decoder_config = _decoder_config(src)
        except RgalignError as e:
            t.torch_missing = f"cannot load the source run {run_dir}: {e}"
    if t.torch_missing:
        t.notes.append(t.torch_missing)
    data = (source.get("data") or {}).get("path")
    if t.src is not None and t.src.data_path is not None:
        data = t.src.data_path
    t.records, t.records_source = records_for(FeatureEncoders.from_json(root / manifest["serving"]["encoders"]),
                                              data, records_file)
    return t
