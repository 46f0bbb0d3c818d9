"""Sharded-data training: each rank of ``rgalign train`` holds only its shard of the impressions.

``--shard-data auto|on|off`` (`use_sharded_data`): ``auto`` turns it on from `shards.STREAM_ROWS`
impressions (read from the parquet metadata); ``on`` in one process is one shard, the whole log,
and gives what ``off`` gives (tests/e2e/test_sharded_train.py). In this mode (`DistInfo.data_sharded`):

* the encoders are fitted by a streamed pass merged across ranks and each rank reads its own
  requests, each in the split the whole log gives it (`rgalign.data.shards`): a rank's peak memory
  is that of its shard, not of the log. A shard may hold no valid or test request (a ts-ordered
  log's first shard is all training): its split is empty (`empty_requests`), and the rank still
  joins every collective;
* the loops take every local row and agree on the number of steps (the largest rank's; smaller
  ranks repeat batches, a rank with none steps on a blank stand-in at weight 0), so DDP's
  all-reduces line up (`distributed.steps_per_epoch`);
* what the run reports stays global: valid GAUC for early stopping (the same on every rank, so
  every rank stops and restores alike), test and valid metrics, the popularity reference, the
  intent prior, the seen/cold cohorts (`rgalign.training.evaluate`, merged in one place,
  `metrics_from_scores`), the prompt budget (`prompt_budget.make_budget` with the ranks' lengths
  gathered) and the data fingerprint (of the files, as ``off`` computes it);
* what is per shard: the tokenizer is trained once, by rank 0 on *its* training prompts, and loaded
  by the others, so it depends on rank 0's shard (with 1 process, on the whole log); the requests
  stage 1 warms up on, stage 2's and 6's latent queries, the candidate pools of stages 3-5 and the
  pairs of stage 4 are each rank's own (their sizes, ``max_examples`` / ``max_requests`` /
  ``max_pairs``, are shared out in proportion), and a stage's stage.json counts rank 0's.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from rgalign.artifacts.run import fingerprint_files
from rgalign.data.encoders import FeatureEncoders
from rgalign.data.loader import TABLES, Dataset, _find_table
from rgalign.data.requests import RequestArrays, build_requests
from rgalign.data.shards import fit_encoders_streamed, impressions_source, load_shard, should_stream
from rgalign.errors import ConfigError, DataError, TrainError
from rgalign.training.distributed import DistInfo, all_gather_object, all_reduce_array, all_reduce_sum

MODES = ("auto", "on", "off")


def use_sharded_data(mode: str, data: str | Path) -> bool:
    """Whether ``rgalign train --shard-data MODE`` reads the log by shard."""
    if mode not in MODES:
        raise ConfigError(f"--shard-data {mode!r}: choose one of {', '.join(MODES)}")
    if mode != "auto":
        return mode == "on"
    try:
        return should_stream(data)
    except DataError:  # a CSV log, or none: the loader reports what is wrong with it
        return False


def load_sharded(data: str | Path, dist: DistInfo) -> tuple[Dataset, FeatureEncoders]:
    """This rank's requests (a validated `Dataset`) and the encoders of the whole log. Collective."""
    fit = fit_encoders_streamed(data, dist.rank, dist.world_size, gather=lambda obj: all_gather_object(obj, dist))
    return load_shard(data, fit), fit.encoders


def empty_requests(encoders: FeatureEncoders) -> RequestArrays:
    """A split with no request: what a shard without valid (or test) requests holds."""
    return RequestArrays(
        request_ids=np.zeros(0, object), user_ids=np.zeros(0, object), ts=np.zeros(0, np.int64),
        cat=np.zeros((0, len(encoders.categorical_fields)), np.int64),
        num=np.zeros((0, len(encoders.numeric_fields)), np.float32), raw=[],
        shown=np.zeros((0, 1), np.int64), labels=np.zeros((0, 1), np.float32), mask=np.zeros((0, 1), bool),
        groups=np.zeros(0, object),
    )


def shard_splits(dataset: Dataset, encoders: FeatureEncoders, dist: DistInfo) -> dict[str, RequestArrays]:
    """train/valid/test `RequestArrays` of this rank's shard; a split must have requests on some rank."""
    out = {}
    for split in ("train", "valid", "test"):
        local = len(dataset.split_impressions(split))
        if all_reduce_sum(float(local), dist) == 0:
            raise DataError(f"split '{split}' has no requests")
        out[split] = build_requests(dataset, encoders, split) if local else empty_requests(encoders)
    return out


def data_fingerprint(root: str | Path) -> str:
    """The files `load_dataset` reads, hashed as ``--shard-data off`` hashes them (a run trained
    by shard is evaluated, and resumed, on the same fingerprint). Streams the files."""
    root = Path(root)
    files = []
    for table in TABLES:
        if table == "impressions" and (root / "impressions").is_dir():
            files += sorted(p for p in impressions_source(root).glob("*.parquet") if p.is_file())
        else:
            files.append(_find_table(root, table))
    return fingerprint_files(files + [root / "dataset.yaml"])


def share(limit: int, local: int, dist: DistInfo) -> int:
    """This rank's part of a per-run ``limit`` (examples, requests, pairs) in proportion to its
    ``local`` candidates: the ranks' parts add up to ~``limit``, as one process would take."""
    if not dist.data_sharded or not dist.enabled:
        return limit
    total = all_reduce_sum(float(local), dist)
    return int(np.ceil(limit * local / total)) if total else 0


def counts_sum(values: np.ndarray, dist: DistInfo) -> np.ndarray:
    """Element-wise sum over the ranks when the data is sharded (counts of this rank's rows)."""
    return all_reduce_array(values, dist) if dist.data_sharded else values


def shard_record(splits: dict[str, RequestArrays], dist: DistInfo) -> dict[str, object]:
    """How the run's data was held, for metrics.json: sharded or not, and each rank's requests
    per split (collective when sharded)."""
    if not dist.data_sharded:
        return {"sharded": False}
    sizes = all_gather_object({s: len(a) for s, a in splits.items()}, dist)
    return {"sharded": True, "ranks": dist.world_size,
            "requests_per_rank": {s: [part[s] for part in sizes] for s in splits}}


def require_everywhere(n_local: int, what: str, dist: DistInfo) -> None:
    """Raise, on every rank alike (no rank left waiting in a collective), where some rank has no
    ``what``: a stage that cannot run on an empty shard."""
    if not dist.data_sharded or not dist.enabled:
        return
    counts = all_gather_object(int(n_local), dist)
    if min(counts) == 0:
        empty = [r for r, n in enumerate(counts) if n == 0]
        raise TrainError(f"{what}: rank(s) {empty} have none in their shard of the log ({counts} per rank); "
                         "train with fewer processes or --shard-data off")
