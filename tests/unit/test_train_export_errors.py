"""Every failure of `rgalign train` and `rgalign export` is one line and a non-zero exit, never a
traceback: a folder that cannot be written, stages out of range or backwards, a bad config value,
an error of torch inside a stage (named with its stage, the run left resumable), an OS error."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from fakes import E2E_DATA, TINY_TRAIN
from rgalign.cli import main, state
from rgalign.data.synth import synthesize
from rgalign.training import trainer


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    return synthesize(tmp_path_factory.mktemp("data") / "d", **E2E_DATA)


def _one_line_error(argv: list[str], capsys, monkeypatch) -> str:
    monkeypatch.setattr(state, "verbose", False)
    with pytest.raises(SystemExit) as e:
        main(argv)
    out = capsys.readouterr()
    text = out.out + out.err
    assert e.value.code != 0, text
    assert "Traceback" not in text, text
    errors = [line for line in text.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, text
    return errors[0]


def _config(tmp_path: Path, **overrides) -> str:
    path = tmp_path / "cfg.json"
    cfg = {**TINY_TRAIN, **{k: {**TINY_TRAIN.get(k, {}), **v} for k, v in overrides.items()}}
    path.write_text(json.dumps(cfg))
    return str(path)


@pytest.mark.parametrize(("stages", "says"), [("2-1", "runs backwards"), ("0-9", "no stage 7"), ("-1", "expected a range")])
def test_bad_stages_are_one_line_before_any_work(data, tmp_path, capsys, monkeypatch, stages, says):
    line = _one_line_error(["train", str(data), "--out", str(tmp_path / "run"), "--stages", stages, "-q"],
                           capsys, monkeypatch)
    assert says in line
    assert not (tmp_path / "run").exists()


def test_an_unwritable_run_folder_is_one_line(data, tmp_path, capsys, monkeypatch):
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    line = _one_line_error(["train", str(data), "--out", str(blocker / "run"), "--config", _config(tmp_path),
                            "--stages", "0", "-q"], capsys, monkeypatch)
    assert "cannot create the run folder" in line


@pytest.mark.parametrize(("section", "key", "value"), [("warmup", "lr", -1.0), ("warmup", "batch_size", 0),
                                                       ("dpo", "epochs", 0), ("finetune", "lora", "yes")])
def test_a_config_value_that_torch_would_choke_on_is_one_line_naming_it(data, tmp_path, capsys, monkeypatch,
                                                                         section, key, value):
    line = _one_line_error(["train", str(data), "--out", str(tmp_path / "run"),
                            "--config", _config(tmp_path, **{section: {key: value}}), "--stages", "1", "-q"],
                           capsys, monkeypatch)
    assert f"{section}" in line and key in line


def test_a_torch_error_inside_a_stage_is_one_line_naming_the_stage(data, tmp_path, capsys, monkeypatch):
    def oom(ctx):
        raise RuntimeError("[enforce fail at alloc_cpu.cpp:121] data. DefaultCPUAllocator: not enough memory:\n"
                           "you tried to allocate 9437184000 bytes.")

    monkeypatch.setitem(trainer.STAGES, 0, oom)
    line = _one_line_error(["train", str(data), "--out", str(tmp_path / "run"), "--config", _config(tmp_path),
                            "--stages", "0", "-q"], capsys, monkeypatch)
    assert "stage 0 baseline failed: RuntimeError" in line and "not enough memory" in line and "resume" in line
    # --verbose: the original traceback, chained under the one line's error
    monkeypatch.setattr(state, "verbose", True)
    with pytest.raises(SystemExit):
        main(["--verbose", "train", str(data), "--out", str(tmp_path / "run"), "--config", _config(tmp_path),
              "--stages", "0", "-q"])
    assert "alloc_cpu" in capsys.readouterr().out


def test_an_os_error_anywhere_is_one_line_without_asking_for_a_bug_report(data, tmp_path, capsys, monkeypatch):
    def full(*args, **kwargs):
        raise OSError(28, "No space left on device", str(tmp_path / "run" / "x"))

    monkeypatch.setattr(trainer, "prepare", full)
    line = _one_line_error(["train", str(data), "--out", str(tmp_path / "run"), "-q"], capsys, monkeypatch)
    assert "No space left on device" in line and "report" not in line


def test_an_unwritable_export_folder_is_one_line_before_any_work(tmp_path, capsys, monkeypatch):
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    line = _one_line_error(["export", str(tmp_path / "no-run"), "--out", str(blocker / "export"),
                            "--precision", "fp32"], capsys, monkeypatch)
    assert "cannot write the export" in line


def test_exporting_a_folder_that_is_no_run_is_one_line(tmp_path, capsys, monkeypatch):
    line = _one_line_error(["export", str(tmp_path), "--out", str(tmp_path / "e"), "--precision", "fp32"],
                           capsys, monkeypatch)
    assert "not a training run" in line
