"""Fixtures of the benchmark tests: a tiny export (the fake 50-intent run of tests/export, fp32 by
torch's legacy exporter, plus int8 graphs quantised here *without* the export's gates: these tests
check what `rgalign bench` writes, not what int8 scores)."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest


def _make_fake_run():
    """`make_fake_run` from tests/export/conftest.py (tests folders are not packages)."""
    path = Path(__file__).parents[1] / "export" / "conftest.py"
    spec = importlib.util.spec_from_file_location("rgalign_tests_export_conftest_bench", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.make_fake_run


@pytest.fixture(scope="session")
def bench_export(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An export folder of the fake run with fp32 and (ungated) int8 graphs; ~7 s."""
    import torch

    from rgalign.export import export_run
    from rgalign.export.precision import quantize_int8_dynamic
    from rgalign.io import read_json, write_json_atomic

    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny models on a busy machine: see tests/export/conftest.py
    try:
        base = tmp_path_factory.mktemp("bench_export")
        run = _make_fake_run()(base)
        out = base / "export"
        export_run(run, out, precisions=("fp32",), exporter="legacy", fuse=False, threads=1)
    finally:
        torch.set_num_threads(threads)
    manifest = read_json(out / "manifest.json")
    for model in ("reasoner", "ranker"):
        rel = f"{model}/int8/model.onnx"
        quantize_int8_dynamic(out / manifest["artifacts"][f"{model}/fp32"]["path"], out / rel)
        manifest["artifacts"][f"{model}/int8"] = {"path": rel, "precision": "int8", "gate": None}
    manifest["precisions"] = ["fp32", "int8"]
    write_json_atomic(out / "manifest.json", manifest)
    return out
