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


def package_versions(names: tuple[str, ...] = _VERSIONED) -> dict[str, str]:
    """Versions of the packages a result depends on (absent ones are left out)."""
    import rgalign

    out = {"python": platform.python_version(), "rgalign": rgalign.__version__}
    for name in names:
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


def _hash_file(h: Any, path: Path) -> None:
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)


def sha256_file(path: Path) -> str:
    """sha256 of one file's bytes (the manifest's record of each artifact and source file)."""
    h = hashlib.sha256()
    _hash_file(h, path)
    return h.hexdigest()


def fingerprint_files(paths: list[Path]) -> str:
    """sha256 over the names and bytes of ``paths`` (sorted): identifies a dataset or a run."""
    h = hashlib.sha256()
    for p in sorted(paths):
        h.update(p.name.encode())
        _hash_file(h, p)
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


# Stages that leave a reasoner (``<stage>/reasoner/``) and a QE ranker (``<stage>/ranker/``).
REASONER_STAGES = (1, 3, 4, 5)
QE_RANKER_STAGES = (2, 6)


def _finished_stage_dirs(run: RunDir, indices: tuple[int, ...], sub: str) -> list[Path]:
    """Finished stage folders holding ``sub``, in training order (round, then stage)."""
    found = []
    for d in (run.root / "stages").glob("*"):
        if not (d / "stage.json").is_file() or not (d / sub).is_dir():
            continue
        head, _, rest = d.name.partition("-")
        if not head.isdigit() or int(head) not in indices:
            continue
        round_ = int(rest.rsplit("-r", 1)[1]) if "-r" in rest and rest.rsplit("-r", 1)[1].isdigit() else 0
        found.append((round_, int(head), d / sub))
    return [p for _, _, p in sorted(found)]


def latest_reasoner_dir(run: RunDir) -> Path | None:
    """The reasoner of the last finished stage that trained one (what export and serving use)."""
    dirs = _finished_stage_dirs(run, REASONER_STAGES, "reasoner")
    return dirs[-1] if dirs else None


def latest_qe_ranker_dir(run: RunDir) -> Path | None:
    """The QE ranker of the last finished reward/calibrate stage."""
    dirs = _finished_stage_dirs(run, QE_RANKER_STAGES, "ranker")
    return dirs[-1] if dirs else None


def final_models(run: RunDir) -> tuple[Path, Path]:
    """(reasoner_dir, qe_ranker_dir) of the deployable pair: the last QE ranker and the reasoner
    it was trained on (its stage.json records it), so the two always match."""
    from rgalign.errors import TrainError

    ranker = latest_qe_ranker_dir(run)
    if ranker is None:
        raise TrainError(f"{run.root}: no finished QE ranker stage (2 or 6); run `rgalign train` with stages 0-2 first")
    info = read_json(ranker.parent / "stage.json")
    reasoner = run.root / info["reasoner"]
    if not reasoner.is_dir():
        raise TrainError(f"{run.root}: the reasoner {info['reasoner']} recorded by {ranker.parent.name} is missing")
    return reasoner, ranker


def run_dataset_path(run_json: dict[str, Any]) -> Path | None:
    """The dataset folder recorded in a run's ``run.json``, if it still exists."""
    path = (run_json.get("data") or {}).get("path")
    return Path(path) if path and os.path.isdir(path) else None
