"""A training run folder: what was run, with what, and which stages have finished.

```
RUN/
  run.json              seed, config, dataset fingerprint, package versions, git commit
  encoders.json         feature encoders fitted on the training split (serving needs them)
  tokenizer/            the reasoner's tokenizer (trained offline on the dataset's text)
  stages/<i>-<name>/    one folder per finished stage: checkpoints, stage.json (metrics, losses, time)
  metrics.json          the ablation table: test metrics per model, deltas against the baseline
```

A stage folder is built under a temporary name and renamed into place when the stage finishes,
so "the folder exists" means "the stage finished": a re-run resumes after the last one.
"""

from __future__ import annotations

import hashlib
import os
import platform
import subprocess
import sys
import time
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Any

from rgalign.io import read_json, write_json_atomic

STAGE_NAMES = {0: "baseline", 1: "warmup", 2: "reward", 3: "rg-sft", 4: "dpo", 5: "rg-cl", 6: "calibrate"}

_VERSIONED = ("torch", "transformers", "tokenizers", "numpy", "pandas", "onnx", "onnxruntime")


def package_versions() -> dict[str, str]:
    """Versions of the packages a result depends on (absent ones are left out)."""
    import rgalign

    out = {"python": platform.python_version(), "rgalign": rgalign.__version__}
    for name in _VERSIONED:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            pass
    return out


def git_commit() -> str | None:
    """The commit of the rgalign source tree, with ``-dirty`` when it has local changes."""
    src = Path(__file__).resolve().parents[2]
    try:
        sha = subprocess.run(
            ["git", "-C", str(src), "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5, check=True
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "-C", str(src), "status", "--porcelain", "--untracked-files=no"],
            capture_output=True, text=True, timeout=5, check=True,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None
    return sha + ("-dirty" if dirty else "")


def fingerprint_files(paths: list[Path]) -> str:
    """sha256 over the names and bytes of ``paths`` (sorted): identifies a dataset or a run."""
    h = hashlib.sha256()
    for p in sorted(paths):
        h.update(p.name.encode())
        with open(p, "rb") as f:
            for chunk in iter(lambda: f.read(1 << 20), b""):
                h.update(chunk)
    return h.hexdigest()


@dataclass
class RunDir:
    """Paths and bookkeeping of one run folder."""

    root: Path

    def __post_init__(self) -> None:
        self.root = Path(self.root)

    @property
    def run_json(self) -> Path:
        return self.root / "run.json"

    @property
    def encoders_json(self) -> Path:
        return self.root / "encoders.json"

    @property
    def tokenizer_dir(self) -> Path:
        return self.root / "tokenizer"

    @property
    def metrics_json(self) -> Path:
        return self.root / "metrics.json"

    def stage_dir(self, index: int, round_: int = 0) -> Path:
        """Folder of stage ``index``; RGA stages of closed-loop round r > 0 get a suffix."""
        suffix = f"-r{round_}" if round_ > 0 else ""
        return self.root / "stages" / f"{index}-{STAGE_NAMES[index]}{suffix}"

    def finished(self, index: int, round_: int = 0) -> bool:
        return (self.stage_dir(index, round_) / "stage.json").is_file()

    def stage_info(self, index: int, round_: int = 0) -> dict[str, Any]:
        return read_json(self.stage_dir(index, round_) / "stage.json")

    def write_run_json(self, *, seed: int, config: dict, data_root: Path, data_fingerprint: str) -> None:
        info = {
            "seed": seed,
            "config": config,
            "data": {"path": str(Path(data_root).resolve()), "sha256": data_fingerprint},
            "versions": package_versions(),
            "git_commit": git_commit(),
            "argv": sys.argv,
            "host": {"platform": platform.platform(), "cpus": os.cpu_count()},
            "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        }
        write_json_atomic(self.run_json, info)
