"""An export folder's manifest (``EXPORT/manifest.json``): what was exported, from which run, with
which versions, its IO signatures, gates and step log. `rgalign.export` writes it; inference,
serve and bench read it through `read_manifest` and `artifact_path`.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from rgalign.errors import ExportError
from rgalign.io import read_json

FORMAT_VERSION = 1
MANIFEST = "manifest.json"


def read_manifest(export_dir: str | os.PathLike) -> dict[str, Any]:
    path = Path(export_dir) / MANIFEST
    if not path.is_file():
        raise ExportError(
            f"{os.fspath(export_dir)} is not an export (no manifest.json); run `rgalign export RUN --out ...`"
        )
    return read_json(path)


def artifact_key(model: str, precision: str) -> str:
    """The manifest's key of one graph: ``"reasoner/int8"``."""
    return f"{model}/{precision}"


def artifact_path(export_dir: str | os.PathLike, manifest: Mapping[str, Any], model: str, precision: str) -> Path:
    """Path of ``model``'s ``precision`` graph; `ExportError` naming what the export has instead."""
    root = Path(export_dir)
    art = manifest["artifacts"].get(artifact_key(model, precision))
    if art is None:
        have = sorted({k.split("/")[1] for k in manifest["artifacts"] if "/" in k})
        raise ExportError(
            f"{root}: no {precision} {model} in this export (it has {', '.join(have) or 'none'}); "
            f"re-run `rgalign export --precision {precision}`"
        )
    return root / art["path"]
