"""Stages 3-6 of SPEC §3, the Ranking-Guided Alignment loop, as resumable stage drivers.

The algorithm's pieces are pure functions in :mod:`rgalign.training.rga`; this package runs them,
one file a stage,
over a run folder, one stage at a time, each writing ``stages/<i>-<name>[-rR]/`` atomically:

    3 rg-sft     the policy (last reasoner) samples queries; with KB texts ranked by the reward
                 model they form a Best-of-N pool per training request; the reward model (the
                 last QE ranker, on latents from the reasoner it was trained with) scores each
                 candidate; SFT on the best. Writes ``candidates.jsonl`` (pools and rewards).
    4 dpo        DPO on (best, worst) pairs of those pools, reference = the RG-SFT model (under LoRA
                 the policy with its adapters off, else a frozen copy).
    5 rg-cl      InfoNCE: the prompt's latent query -> the preferred query's latent mixed with the
                 clicked intents' latents; in-batch and KB negatives.
    6 calibrate  the QE ranker re-fitted (warm start) on the aligned reasoner's latent queries,
                 with KL to the previous ranker; its stage.json names the reasoner it reads. A
                 control ranker gets the very same re-fit on the *previous* reasoner's latents:
                 the difference between the two is what alignment buys, net of the extra training.

``--rounds R`` runs 3-6 R times (closed loop): round r > 0 writes ``<i>-<name>-r<r>`` and starts
from round r - 1's reasoner and ranker. Every frozen model's parameters are checksummed before and
after the stage; a change is a `TrainError`, and ``stage.json`` records the check.

Under torchrun every rank builds the same pools (sampling is seeded per chunk, not per rank), and
the policy of stages 3-5 trains on global batches, DDP or FSDP2 (`rgalign.training.global_loop`,
as stage 1): the same losses on 1 or N processes, and with ``--checkpoint-every`` a state each
stage resumes from (``RUN/train_state/<stage>/``, removed once the stage is saved). With the log
read by shard (``--shard-data``, `rgalign.training.shard_data`) each rank builds the pools of its
own requests instead; ``candidates.jsonl`` holds every rank's, and stages 4-5 find theirs by
request id; the loop then steps on each rank's own batches (`global_loop`).
"""

from __future__ import annotations

from rgalign.training.alignment.calibrate import stage_calibrate
from rgalign.training.alignment.common import CANDIDATES
from rgalign.training.alignment.dpo import stage_dpo
from rgalign.training.alignment.rg_cl import stage_rg_cl
from rgalign.training.alignment.rg_sft import stage_rg_sft

__all__ = ["CANDIDATES", "RGA_STAGES", "stage_calibrate", "stage_dpo", "stage_rg_cl", "stage_rg_sft"]

RGA_STAGES = {3: stage_rg_sft, 4: stage_dpo, 5: stage_rg_cl, 6: stage_calibrate}
