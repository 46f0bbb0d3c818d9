"""Run by tests/e2e/test_sharded_train.py under torchrun (2 processes, gloo):

    python -m torch.distributed.run --nproc-per-node 2 tests/e2e/sharded_worker.py train DATA OUT
    python -m torch.distributed.run --nproc-per-node 2 tests/e2e/sharded_worker.py empty-rank DATA OUT.json

``train``: `rgalign train DATA --out OUT --shard-data on` (stages 0-6, the tiny budget).
``empty-rank``: the baseline's ranker loop with the data sharded where rank 1 holds no training
request at all; each rank writes what it ended with to OUT.json.RANK.
"""

from __future__ import annotations

import hashlib
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # tests/, for fakes.py

from fakes import TINY_TRAIN  # noqa: E402

from rgalign.training.config import TrainConfig  # noqa: E402


def train(data: str, out: str) -> None:
    from rgalign.training import trainer

    trainer.train(data, out, TrainConfig.from_dict(TINY_TRAIN), None, log=lambda m: None, quiet=True, shard_data="on")


def empty_rank(data: str, out: str) -> None:
    from dataclasses import replace

    import numpy as np

    from rgalign.data.encoders import FeatureEncoders
    from rgalign.data.loader import load_dataset
    from rgalign.data.requests import build_requests
    from rgalign.models.baseline import AutoIntMoE, BaselineConfig
    from rgalign.training import loops
    from rgalign.training.distributed import init_distributed
    from rgalign.training.evaluate import baseline_forward

    dist = replace(init_distributed(), data_sharded=True)
    ds = load_dataset(data)
    enc = FeatureEncoders.fit(ds)
    train, valid = build_requests(ds, enc, "train"), build_requests(ds, enc, "valid")
    half = len(valid) // 2
    if dist.rank == 1:  # no training request; half the valid ones
        train, valid = train.subset(np.zeros(0, np.int64)), valid.subset(np.arange(half, len(valid)))
    else:
        valid = valid.subset(np.arange(half))
    model = AutoIntMoE(BaselineConfig(cardinalities=tuple(enc.cardinalities), n_numeric=len(enc.numeric_fields),
                                      n_intents=enc.num_intents, field_dim=8, dim=16, expert_hidden=32, n_experts=2))
    res = loops.train_ranker(model, baseline_forward, train, valid, epochs=2, batch_size=64, lr=2e-3, weight_decay=0.0,
                             alpha_bce=0.5, seed=0, dist=dist, quiet=True, min_check_steps=2)
    digest = hashlib.sha256(b"".join(t.detach().numpy().tobytes() for t in model.state_dict().values())).hexdigest()
    Path(f"{out}.{dist.rank}").write_text(json.dumps({"steps": res.steps, "checks": res.checks,
                                                     "best_valid_gauc": res.best_valid_gauc, "weights": digest}))


if __name__ == "__main__":
    {"train": train, "empty-rank": empty_rank}[sys.argv[1]](sys.argv[2], sys.argv[3])
