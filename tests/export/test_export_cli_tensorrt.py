"""`rgalign export` from the command line, and the TensorRT path: without TensorRT, one clear line
and a non-zero exit before any work; with a GPU (gpu marker), engines gated like the ONNX files."""

from __future__ import annotations

import json

import pytest

from rgalign.cli import main
from rgalign.export.tensorrt import tensorrt_missing


def _run(argv, capsys):
    with pytest.raises(SystemExit) as e:
        main(argv)
    out = capsys.readouterr()
    return e.value.code, out.out + out.err


@pytest.mark.skipif(tensorrt_missing() is None, reason="TensorRT is installed here")
def test_tensorrt_without_tensorrt_is_one_line_and_non_zero(fake_run, tmp_path, capsys, monkeypatch):
    # nothing may be loaded or exported first: the check comes before any work
    monkeypatch.setattr(
        "rgalign.export.build.load_run", lambda *a: pytest.fail("loaded the run before the TensorRT check")
    )
    code, text = _run(["export", str(fake_run), "--out", str(tmp_path / "e"), "--tensorrt"], capsys)
    assert code != 0
    lines = [line for line in text.splitlines() if line.strip()]
    assert len(lines) == 1, text
    assert "--tensorrt needs TensorRT" in lines[0] and "Traceback" not in text
    assert not (tmp_path / "e").exists()


def test_bad_precision_is_one_line(fake_run, tmp_path, capsys):
    code, text = _run(["export", str(fake_run), "--out", str(tmp_path / "e"), "--precision", "fp8"], capsys)
    assert code != 0 and "unknown precision(s) fp8" in text and len(text.strip().splitlines()) == 1


@pytest.mark.slow
def test_cli_exports_fp32(fake_run, tmp_path, capsys):
    main(["export", str(fake_run), "--out", str(tmp_path / "e"), "--precision", "fp32", "--exporter", "legacy",
          "--no-fuse", "--threads", "1"])
    text = capsys.readouterr().out
    assert "gate reasoner/fp32" in text and "exported" in text
    manifest = json.loads((tmp_path / "e" / "manifest.json").read_text())
    assert manifest["precisions"] == ["fp32"] and manifest["exporters"]["reasoner"]["exporter"] == "legacy"
    assert not (tmp_path / "e" / "reasoner" / "int8").exists()


@pytest.mark.gpu
def test_tensorrt_engines_pass_their_gates(fake_run, tmp_path):
    from rgalign.export import export_run

    manifest = export_run(fake_run, tmp_path / "e", tensorrt=True)
    for name in ("reasoner", "ranker"):
        for precision in ("fp16", "int8"):
            art = manifest["artifacts"][f"tensorrt/{name}_{precision}"]
            assert (tmp_path / "e" / art["path"]).is_file() and art["gate"]["passed"]
    assert (tmp_path / "e" / "tensorrt" / "timing.cache").is_file()
    report = json.loads((tmp_path / "e" / "report.json").read_text())
    for key, info in report["tensorrt"]["onnxruntime_gpu"].items():
        want = "TensorrtExecutionProvider" if key.startswith("tensorrt") else "CUDAExecutionProvider"
        assert info["providers"][0] == want, key
