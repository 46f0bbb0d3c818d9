"""``rgalign quickstart``: the whole pipeline on embedded defaults, each step reused when a
previous quickstart already finished it.

Today: synthesise -> check -> train stages 0-2 (a small configuration) -> evaluate. Export,
deploy, serve, query and bench join as they land (SPEC §9).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rgalign.training.config import RankerStageConfig, TrainConfig, WarmupConfig

# Small enough for the 10-minute budget on 2 CPU cores, large enough that the text signal shows:
# 6,000 requests (60k impressions) and 1,500 warm-up examples.
QUICKSTART_DATA = {"users": 1000, "intents": 200, "requests": 6000, "seed": 0}
QUICKSTART_TRAIN = TrainConfig(
    baseline=RankerStageConfig(epochs=6),
    warmup=WarmupConfig(max_examples=1500),
    reward=RankerStageConfig(epochs=6),
)


@dataclass(frozen=True)
class QuickstartResult:
    data: Path
    run: Path
    metrics: dict[str, Any]


def quickstart(out: str | Path = "quickstart", *, log: Callable[[str], None] = print, quiet: bool = False) -> QuickstartResult:
    from rgalign.data.loader import load_dataset
    from rgalign.data.synth import synthesize
    from rgalign.training.trainer import train

    out = Path(out)
    data = out / "data"
    if (data / "synth.json").is_file():
        log(f"data: reusing {data}")
    else:
        synthesize(data, **QUICKSTART_DATA)
        log(f"data: wrote {data}")
    info = load_dataset(data).describe()  # validates: a bad dataset stops here, before training
    log(f"check: OK ({info['users']} users, {info['intents']} intents)")
    metrics = train(data, out / "run", QUICKSTART_TRAIN, [0, 1, 2], log=log, quiet=quiet)
    return QuickstartResult(data, out / "run", metrics)
