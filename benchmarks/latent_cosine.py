"""Is there anything in the aligned reasoner's latent query for the ranker to read? On a finished
run, the cosine between each request's latent query and each shown intent's latent (the
bilinear affinity's input, what RG-CL aligns), for the warm-up (stage 1) and the aligned
(stage 5) reasoner: its GAUC alone, and the GAUC of the stage-2 QE ranker's logits plus
``alpha`` x that cosine, on the valid and the test split.

    .venv/bin/python benchmarks/latent_cosine.py DATA RUN [--json OUT.json]
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from rgalign import metrics  # noqa: E402
from rgalign.models.qe_ranker import QERanker  # noqa: E402
from rgalign.models.reasoner import Reasoner  # noqa: E402
from rgalign.training import loops, trainer  # noqa: E402
from rgalign.training.config import TrainConfig  # noqa: E402
from rgalign.training.distributed import DistInfo  # noqa: E402
from rgalign.training.evaluate import qe_forward  # noqa: E402

ALPHAS = (0.0, 0.5, 1.0, 2.0, 4.0, 8.0, 16.0)
REASONERS = {"warmup": "stages/1-warmup/reasoner", "aligned": "stages/5-rg-cl/reasoner"}


def _gauc(arrays, scores: np.ndarray) -> float:
    m = arrays.mask
    return round(metrics.gauc(arrays.labels[m], scores[m], np.broadcast_to(arrays.groups[:, None], m.shape)[m]), 4)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("data", type=Path)
    ap.add_argument("run", type=Path)
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()
    torch.set_num_threads(1)
    cfg = TrainConfig.from_dict(json.loads((args.run / "run.json").read_text())["config"])
    ctx = trainer.prepare(args.data, args.run, cfg, DistInfo(), log=lambda m: None, quiet=True)
    kb = list(ctx.encoders.intent_texts)
    warmup = Reasoner.load(args.run / REASONERS["warmup"])
    qe = QERanker.load(args.run / "stages/2-reward/ranker")
    out: dict = {"run": str(args.run), "alphas": list(ALPHAS)}
    for name, sub in REASONERS.items():
        reasoner = warmup if name == "warmup" else Reasoner.load(args.run / sub)
        z = reasoner.encode_prompts(kb, batch_size=cfg.infer_batch)
        row: dict = {}
        for split in ("valid", "test"):
            a, prompts = ctx.splits[split], ctx.prompts(split)
            base = loops.slate_logits(qe, qe_forward, a, warmup.encode_prompts(prompts, batch_size=cfg.infer_batch))
            cos = (reasoner.encode_prompts(prompts, batch_size=cfg.infer_batch) @ z.T).numpy()
            cos = np.take_along_axis(cos, np.maximum(a.shown, 0), axis=1)
            row[split] = {"cosine_alone": _gauc(a, cos), "qe_plus_alpha_cosine": [_gauc(a, base + x * cos) for x in ALPHAS]}
        out[name] = row
        print(name, json.dumps(row), flush=True)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(out, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
