"""Fixtures of the benchmark tests: a tiny export (the fake 50-intent run of tests/export, fp32 by
torch's legacy exporter, plus int8 graphs quantised here *without* the export's gates: these tests
check what `rgalign bench` writes, not what int8 scores)."""

from __future__ import annotations

from pathlib import Path

import pytest


@pytest.fixture(scope="session")
def bench_export(tiny_fp32_export: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A copy of the shared tiny fp32 export with (ungated) int8 graphs added."""
    import shutil

    from rgalign.export.precision import quantize_int8_dynamic
    from rgalign.io import read_json, write_json_atomic

    out = tmp_path_factory.mktemp("bench_export") / "export"
    shutil.copytree(tiny_fp32_export, out)
    manifest = read_json(out / "manifest.json")
    for model in ("reasoner", "ranker"):
        rel = f"{model}/int8/model.onnx"
        quantize_int8_dynamic(out / manifest["artifacts"][f"{model}/fp32"]["path"], out / rel)
        manifest["artifacts"][f"{model}/int8"] = {"path": rel, "precision": "int8", "gate": None}
    manifest["precisions"] = ["fp32", "int8"]
    write_json_atomic(out / "manifest.json", manifest)
    return out
