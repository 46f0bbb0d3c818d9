"""Run by tests/unit/test_training_parallel.py and test_alignment_parallel.py under torchrun (and
in-process for one process), one job after another in one process group:

- an SFT job: global-batch SFT of the tiny reasoner, its per-step losses written as JSON by rank 0;
  {"strategy", "losses" (output path), "checkpoint" (or null), "stop_after" (or null)};
- a stages job: RGA stages of a run folder (stages 1-2 done), as `rgalign train` runs them;
  {"kind": "stages", "strategy", "data", "run", "config" (TrainConfig dict), "stages",
  "checkpoint_every"}: each stage writes its losses.csv.

    python -m torch.distributed.run ... tests/unit/parallel_worker.py JOBS.json
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # tests/, for tiny.py

from tiny import TINY_FIELDS, tiny_kb, tiny_reasoner, tiny_requests, tiny_tokenizer  # noqa: E402

from rgalign.models.prompt import build_prompt  # noqa: E402
from rgalign.training.distributed import DistInfo, init_distributed  # noqa: E402
from rgalign.training.global_sft import train_sft_global  # noqa: E402

# 36 examples in global batches of 8: 5 steps an epoch, the last one 4 rows (2 per rank at world 2)
N_EXAMPLES, BATCH, EPOCHS = 36, 8, 2


def examples() -> tuple[list[str], list[str]]:
    _, texts = tiny_kb(50, 0)
    prompts = [build_prompt(r, TINY_FIELDS) for r in tiny_requests(N_EXAMPLES, 0)]
    return prompts, [" " + texts[(7 * i) % len(texts)] for i in range(N_EXAMPLES)]


def run_job(job: dict, dist: DistInfo) -> list[float]:
    prompts, targets = examples()
    res = train_sft_global(
        tiny_reasoner(), tiny_tokenizer(), prompts, targets, epochs=EPOCHS, batch_size=BATCH, lr=2e-3, max_len=96,
        seed=0, dist=DistInfo(dist.rank, dist.world_size, job["strategy"]), quiet=True,
        checkpoint_dir=job.get("checkpoint"), stop_after=job.get("stop_after"),
    )
    losses = [row["lm_loss"] for row in res.log.rows]
    if dist.is_main and job.get("losses"):
        Path(job["losses"]).write_text(json.dumps(losses))
    return losses


def run_stages(job: dict, dist: DistInfo) -> None:
    from rgalign.training import trainer
    from rgalign.training.alignment import RGA_STAGES
    from rgalign.training.config import TrainConfig

    dist = DistInfo(dist.rank, dist.world_size, job["strategy"], job.get("checkpoint_every", 0))
    ctx = trainer.prepare(job["data"], job["run"], TrainConfig.from_dict(job["config"]), dist, lambda m: None, True)
    for index in job["stages"]:
        torch.manual_seed(ctx.config.seed * 1000 + index)  # as trainer.train seeds a stage of round 0
        RGA_STAGES[index](ctx, 0)


def main(jobs_file: str) -> None:
    torch.set_num_threads(1)
    dist = init_distributed()
    for job in json.loads(Path(jobs_file).read_text()):
        run_stages(job, dist) if job.get("kind") == "stages" else run_job(job, dist)
    if dist.enabled:
        torch.distributed.destroy_process_group()


if __name__ == "__main__":
    main(sys.argv[1])
