"""The fused layout of a deployment: one python-backend model ``rgalign`` running the whole
in-process `rgalign.export.Pipeline` (``rgalign deploy --layout fused``).

    REPO/rgalign/config.pbtxt
    REPO/rgalign/1/model.py           shim -> rgalign.serve.models.fused
    REPO/rgalign/1/manifest.json      the export's, so `Pipeline.from_export(rgalign/1)` loads it
    REPO/rgalign/1/<export paths>     the serving files and the chosen precision's two graphs
    REPO/rgalign/warmup/features      one valid request (batch 1), run twice before ready

Why a layout of its own (SPEC §6, issue 13): on CPU with the python backend, the ensemble costs
four stub processes and three shared-memory hops per request; the fused model costs one of each
and batches the whole pipeline with Triton's dynamic batcher. Native backends (onnxruntime,
tensorrt) run the graphs outside Python, where the ensemble is the layout that uses them.

Response cache: the model's answer depends on the request alone (features, top_k), so its config
enables Triton's response cache; it takes effect when the server runs with a cache
(``rgalign serve --cache-mb N``) and costs nothing otherwise.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from rgalign.serve.repository import config as tc
from rgalign.serve.repository.signature import ANSWER, FEATURES, TOP_K

MODEL = "rgalign"


def copy_export_subset(export: Path, manifest: Mapping[str, Any], precision: str, dst: Path) -> None:
    """Copy what `Pipeline.from_export(dst, precision)` reads, at the export's own paths: the
    manifest, the serving files, and the folders of the precision's reasoner and ranker graphs
    (whole folders: a large graph keeps its weights in external data files beside it)."""
    serving = manifest["serving"]
    dst.mkdir(parents=True, exist_ok=True)
    for key in ("encoders", "prompt_fields", "intents"):
        target = dst / serving[key]
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(export / serving[key], target)
    shutil.copytree(export / serving["tokenizer"], dst / serving["tokenizer"], dirs_exist_ok=True)
    for model in ("reasoner", "ranker"):
        folder = Path(manifest["artifacts"][f"{model}/{precision}"]["path"]).parent
        shutil.copytree(export / folder, dst / folder, dirs_exist_ok=True)
    shutil.copyfile(export / "manifest.json", dst / "manifest.json")


def fused_config(
    *,
    max_batch: int,
    batching: Any,
    groups: list[Any],
    warmup: list[Any],
    precision: str,
    threads: int,
    default_k: int,
    extra: Mapping[str, str] = {},  # noqa: B006 - read only
) -> Any:
    """The ``rgalign`` model's config: the ensemble's inputs and outputs, dynamic batching, and
    the response cache enabled (see the module doc); ``extra`` parameters (request limits,
    ``batch_invariant``) as the step models of the ensemble get them."""
    config = tc.python_model(
        MODEL,
        inputs=[FEATURES, TOP_K],
        outputs=list(ANSWER),
        max_batch_size=max_batch,
        dynamic_batching=batching,
        instance_groups=groups,
        warmup=warmup,
        parameters={"precision": precision, "threads": str(threads), "default_top_k": str(default_k), **extra},
    )
    config.response_cache.enable = True
    return config


def warmup_features(record: Mapping[str, Any]) -> np.ndarray:
    """The warm-up request's ``features`` (1, 1) BYTES."""
    return np.array([[json.dumps(dict(record)).encode("utf-8")]], dtype=object)
