"""Which int8 candidates the export tries: static QDQ (slower than dynamic int8 on a CPU, every
export on record) is skipped with its reason unless ``--tensorrt`` or ``--int8-methods`` asks for
it, and comes back as the fallback of a model none of whose other candidates passes; int4 that
misses its gate ends the CLI with one line naming the figure, leaving nothing behind."""

from __future__ import annotations

import json

import pytest

from rgalign.cli import main
from rgalign.errors import ExportError
from rgalign.export import export_run
from rgalign.export.options import ExportOptions, parse_int8_methods


def _run(argv, capsys):
    with pytest.raises(SystemExit) as e:
        main(argv)
    out = capsys.readouterr()
    return e.value.code, out.out + out.err


def test_int8_methods_are_parsed_and_checked():
    assert parse_int8_methods("auto") is None and parse_int8_methods(None) is None
    assert parse_int8_methods("static, dynamic,static") == ("static", "dynamic")
    with pytest.raises(ExportError, match="unknown int8 method 'qdq'"):
        parse_int8_methods("dynamic,qdq")
    with pytest.raises(ExportError, match="leave the ranker without an int8 candidate"):
        ExportOptions(int8_methods="weight-only")


def test_bad_int8_methods_is_one_line(fake_run, tmp_path, capsys):
    code, text = _run(["export", str(fake_run), "--out", str(tmp_path / "e"), "--int8-methods", "fast"], capsys)
    assert code != 0 and "unknown int8 method 'fast'" in text and len(text.strip().splitlines()) == 1
    assert not (tmp_path / "e").exists()


@pytest.mark.slow
def test_asked_for_static_is_tried_for_both_models(fake_run, tmp_path, capsys):
    out = tmp_path / "e"
    main(["export", str(fake_run), "--out", str(out), "--precision", "int8", "--int8-methods", "dynamic,static",
          "--exporter", "legacy", "--no-fuse", "--threads", "1"])
    report = json.loads((out / "report.json").read_text())
    for model in ("reasoner", "ranker"):
        assert [c["method"] for c in report["int8_candidates"][model]][:2] == ["dynamic", "static-minmax"]
    assert "int8_skipped" not in report
    steps = {s["name"]: s["status"] for s in json.loads((out / "manifest.json").read_text())["steps"]}
    assert steps["calibration feeds"] == "OK"  # up front, from PyTorch, as before


@pytest.mark.slow
def test_static_is_the_fallback_when_nothing_else_passes(fake_run, tmp_path, monkeypatch):
    """Every dynamic int8 graph fails to quantise (a failed candidate, not an aborted export): each
    model's static candidate runs then, calibrated on demand from the fp32 graph, and is kept."""

    def broken(*args, **kwargs):
        raise ExportError("int8 dynamic quantisation failed: injected")

    monkeypatch.setattr("rgalign.export.int8.quantize_int8_dynamic", broken)
    manifest = export_run(fake_run, tmp_path / "e", precisions="int8", exporter="legacy", fuse=False, threads=1)
    assert manifest["gates_passed"]
    report = json.loads((tmp_path / "e" / "report.json").read_text())
    for model in ("reasoner", "ranker"):
        cands = {c["method"]: c for c in report["int8_candidates"][model]}
        assert cands["dynamic"]["error"].endswith("injected") and cands["static-minmax"]["passed"]
        assert report["artifacts"][f"{model}/int8"]["method"] == "static-minmax"
    steps = {s["name"]: s for s in manifest["steps"]}
    assert steps["calibration feeds"]["status"] == "SKIPPED"
    assert "from the fp32 graph" in steps["calibration feeds (for the static fallback)"]["message"]
    assert "int8_skipped" not in report


@pytest.mark.slow
def test_int4_gate_miss_is_one_line_naming_the_figure(fake_run, tmp_path, capsys):
    """``rgalign export RUN --precision int4`` on a reasoner whose int4 error exceeds the
    differences between its prompts (the tiny fake one, as the 0.6B one): one line with the
    missed figure, a non-zero exit, and no export or work folder left behind."""
    code, text = _run(["export", str(fake_run), "--out", str(tmp_path / "e"), "--precision", "int4",
                       "--external-data-mb", "0.000001", "--no-fuse", "--threads", "1"], capsys)
    assert code != 0 and "Traceback" not in text
    errors = [line for line in text.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, text
    assert "int4" in errors[0] and "cosine_centred(latent_query) = " in errors[0] and "MISSED" in errors[0]
    assert sorted(p.name for p in tmp_path.iterdir()) == []
