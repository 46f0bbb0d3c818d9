"""`rgalign data synth` / `rgalign data check`: summaries, and a DataError as one line with a
non-zero exit and no traceback."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from rgalign.cli import main


def _run(argv, capsys):
    with pytest.raises(SystemExit) as e:
        main(argv)
    out = capsys.readouterr()
    return e.value.code, out.out + out.err


def _ok(argv, capsys):
    main(argv)  # success: no SystemExit under standalone_mode=False
    out = capsys.readouterr()
    return out.out + out.err


@pytest.fixture
def synth_dir(tmp_path, capsys):
    out = tmp_path / "ds"
    text = _ok(["data", "synth", str(out), "--users", "50", "--intents", "30", "--requests", "300", "--seed", "1"], capsys)
    assert "3,000 impressions" in text and "CTR" in text
    return out


def test_check_prints_tables(synth_dir, capsys):
    text = _ok(["data", "check", str(synth_dir)], capsys)
    for word in ("train", "valid", "test", "requests", "impressions", "CTR", "recent_actions", "OK"):
        assert word in text


def test_check_json(synth_dir, capsys):
    import json

    info = json.loads(_ok(["data", "check", str(synth_dir), "--json"], capsys))
    assert info["splits"]["all"]["requests"] == 300 and info["intents"] == 30


def test_check_error_is_one_line(synth_dir, capsys):
    imp = pd.read_parquet(synth_dir / "impressions.parquet")
    imp.loc[17, "label"] = 2
    imp.to_parquet(synth_dir / "impressions.parquet", index=False)
    code, text = _run(["data", "check", str(synth_dir)], capsys)
    assert code != 0
    lines = [ln for ln in text.splitlines() if ln.strip()]
    assert lines == ["error: impressions.parquet: column 'label' row 17: value 2 is not 0/1"]


def test_check_missing_folder(tmp_path, capsys):
    code, text = _run(["data", "check", str(tmp_path / "nope")], capsys)
    assert code == 2 and "not a dataset folder" in text and "Traceback" not in text


def test_synth_bad_size(tmp_path, capsys):
    code, text = _run(["data", "synth", str(tmp_path / "x"), "--intents", "999"], capsys)
    assert code == 2 and text.strip() == "error: synth: --intents must be between 1 and 222 (the catalogue size), got 999"


def test_real_command_exit_code(synth_dir):
    """The installed console script, as a user runs it: one line, non-zero, no traceback."""
    (synth_dir / "users.parquet").unlink()
    exe = Path(sys.executable).with_name("rgalign")
    cmd = [str(exe)] if exe.exists() else [sys.executable, "-c", "from rgalign.cli import main; main()"]
    r = subprocess.run([*cmd, "data", "check", str(synth_dir)], capture_output=True, text=True, env={**os.environ, "COLUMNS": "300"})
    assert r.returncode == 2
    assert "Traceback" not in r.stdout + r.stderr
    assert r.stdout.strip() == f"error: {synth_dir}: missing users table: tried users.parquet, users.csv"
