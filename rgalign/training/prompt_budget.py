"""The reasoner's prompt budget, derived from the data: how many tokens a prompt may take, and how
many characters each free-text field may keep so that a prompt fits it.

A prompt longer than the reasoner's ``max_len`` used to lose its *start* to the tokenizer's left
truncation: the user and context fields, the structured part, while the free text at the end
survived. Here, instead:

1. the token budget is ``HEADROOM`` x the ``PERCENTILE``-th percentile of the training prompts'
   token lengths (rounded up to a multiple of 8), at most ``cap`` (the config's ``reasoner.max_len``): short
   prompts cost no padding budget, long free text cannot blow up the cost;
2. if some training prompts exceed it, every text field gets a character cap (in proportion to
   its longest value), lowered until every training prompt, rebuilt with its text fields cut by
   `rgalign.models.prompt.cut_text` (oldest part first, at a word boundary, with a marker), fits
   the token budget. The caps live in `PromptFields.text_max_chars`, so serving builds the same
   prompts (`build_prompt`) without knowing about any of this.

`PromptBudget` is what a run records (``RUN/prompt_budget.json``, and in the stages' stage.json):
the budget, the caps, and how many prompts of each split were cut.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from collections.abc import Callable
from typing import Any

import numpy as np

from rgalign.models.prompt import PromptFields, build_prompt

PERCENTILE = 99.0  # the longest 1% of prompts set no budget alone: their free text is cut instead
HEADROOM = 1.25  # over that percentile: room for valid/test/serving prompts a little longer
STEP = 0.85  # each try shrinks the character caps by this factor
MAX_TRIES = 40


@dataclass(frozen=True)
class PromptBudget:
    max_len: int  # the reasoner's token budget (ReasonerConfig.max_len)
    text_max_chars: dict[str, int] = field(default_factory=dict)  # per capped text field
    raw_length_percentiles: dict[str, float] = field(default_factory=dict)  # p50/p95/p99/max, uncut
    cut: dict[str, int] = field(default_factory=dict)  # prompts cut, per split
    prompts: dict[str, int] = field(default_factory=dict)  # prompts, per split

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> PromptBudget:
        return cls(**{k: d[k] for k in cls.__dataclass_fields__ if k in d})


Gather = Callable[[Any], list[Any]]  # all-gather of a picklable value over the ranks, in rank order


def _one(value: Any) -> list[Any]:
    return [value]


def _lengths(tokenizer: Any, prompts: list[str]) -> np.ndarray:
    # full lengths on purpose (the budget is cut from them): verbose=False keeps transformers from
    # warning that a prompt is longer than model_max_length, which here is no indexing error
    if not prompts:
        return np.zeros(0, np.int64)
    return np.array([len(ids) for ids in tokenizer(prompts, verbose=False)["input_ids"]], dtype=np.int64)


def derive_budget(tokenizer: Any, raw: list[dict[str, Any]], fields: PromptFields, cap: int,
                  gather: Gather = _one) -> tuple[int, dict[str, int], np.ndarray]:
    """(token budget, {text field: max characters}, every training prompt's uncut length) from the
    training requests' raw features. ``gather`` (sharded data: each rank holds some of ``raw``)
    merges the ranks' lengths, longest texts and verdicts, so every rank derives what one process
    derives from all of them."""
    base = PromptFields.from_dict({**fields.to_dict(), "text_max_chars": {}})
    local = _lengths(tokenizer, [build_prompt(r, base) for r in raw])
    lengths = np.concatenate(gather(local))
    budget = int(min(cap, 8 * math.ceil(HEADROOM * np.percentile(lengths, PERCENTILE) / 8)))
    if lengths.max() <= budget:
        return budget, {}, lengths
    texts = base.user_text + base.context_text
    longest = {n: max(len(str(r.get(n) or "")) for r in raw) if raw else 0 for n in texts}
    longest = {n: max(part[n] for part in gather(longest)) for n in texts}
    caps = {n: max(1, v) for n, v in longest.items() if v > 0}
    over = np.flatnonzero(local > budget)  # only these can still be too long after a cut
    for _ in range(MAX_TRIES):
        caps = {n: max(8, int(v * STEP)) for n, v in caps.items()}
        trial = base.with_text_budget(caps)
        fits = len(over) == 0 or _lengths(tokenizer, [build_prompt(raw[i], trial) for i in over]).max() <= budget
        if all(gather(bool(fits))):
            return budget, caps, lengths
    return budget, caps, lengths  # the floor of 8 characters a field: structured fields alone overflow


def make_budget(tokenizer: Any, raw_by_split: dict[str, list[dict[str, Any]]], fields: PromptFields,
                cap: int, gather: Gather = _one) -> tuple[PromptBudget, PromptFields]:
    """The run's budget (fitted on ``raw_by_split["train"]``) and the prompt fields carrying it;
    with ``gather``, over every rank's requests (see `derive_budget`)."""
    budget, caps, raw_len = derive_budget(tokenizer, raw_by_split["train"], fields, cap, gather)
    capped = fields.with_text_budget(caps)
    base = PromptFields.from_dict({**fields.to_dict(), "text_max_chars": {}})
    cut, n = {}, {}
    for split, raw in raw_by_split.items():
        n[split] = len(raw)
        cut[split] = sum(build_prompt(r, capped) != build_prompt(r, base) for r in raw) if caps else 0
    totals = gather((cut, n))
    cut = {s: sum(part[0][s] for part in totals) for s in cut}
    n = {s: sum(part[1][s] for part in totals) for s in n}
    pct = {f"p{int(q)}": float(np.percentile(raw_len, q)) for q in (50, 95, 99)} | {"max": float(raw_len.max())}
    return PromptBudget(budget, caps, pct, cut, n), capped
