"""Every usage error of the command line is one readable line and a non-zero exit, never a
traceback, with whatever typer/click the README's install resolves (typer >= 0.22 vendors click
as ``typer._click``, whose exceptions are not click's)."""

from __future__ import annotations

import subprocess
import sys

import pytest

USAGE_ERRORS = [
    (["nosuch"], "No such command"),
    (["train"], "Missing argument"),
    (["export", "--bogus"], "No such option"),
    (["query", "-f", "{}", "-k", "4294967299"], "-k"),
    (["query", "-f", "{}", "-k", "2147483648"], "-k"),
    (["query", "-f", "{}", "-k", "99999999999999999999"], "-k"),
    (["query", "-f", "{}", "-k", "0"], "-k"),
    (["data", "synth"], "Missing argument"),
    (["deploy", "x", "--max-batch", "zero"], "--max-batch"),
]


@pytest.mark.parametrize(("argv", "expected"), USAGE_ERRORS, ids=[" ".join(a) for a, _ in USAGE_ERRORS])
def test_usage_error_is_one_line(argv, expected):
    # a real process of the installed entry point: what a user's shell runs
    proc = subprocess.run(
        [sys.executable, "-c", "from rgalign.cli import main; main()", *argv],
        capture_output=True, text=True, timeout=120,
    )
    text = proc.stdout + proc.stderr
    assert proc.returncode == 2, text
    assert "Traceback" not in text, text
    assert expected in text
    assert "Error:" in text


def test_unreachable_server_is_one_line():
    # port 1 on loopback: nothing listens there
    proc = subprocess.run(
        [sys.executable, "-c", "from rgalign.cli import main; main()",
         "query", "--url", "http://127.0.0.1:1", "-f", "{}"],
        capture_output=True, text=True, timeout=120,
    )
    text = proc.stdout + proc.stderr
    assert proc.returncode != 0
    assert "Traceback" not in text
    assert "cannot reach the Triton server" in text


def test_unexpected_exception_is_one_line(monkeypatch, capsys):
    # a bug inside a command still prints one line (and --verbose re-raises it)
    import rgalign.cli.serve as serve_cli
    from rgalign.cli import main, state

    monkeypatch.setattr(state, "verbose", False)  # restored after the test: --verbose below sets it

    def boom(text):
        raise KeyError("surprise")

    monkeypatch.setattr(serve_cli, "_read_features", boom)
    with pytest.raises(SystemExit) as e:
        main(["query", "-f", "{}"])
    out = capsys.readouterr()
    assert e.value.code == 1
    assert "unexpected KeyError" in out.out + out.err
    with pytest.raises(KeyError):
        main(["--verbose", "query", "-f", "{}"])
