"""The draw: `generate` turns `SynthParams` into the users, intents and impressions columns (and the
hidden latent needs), following the click model of the package docstring, vectorised."""

from __future__ import annotations

from dataclasses import astuple, dataclass
from typing import Any

import numpy as np

from rgalign.config import to_dict
from rgalign.data.synth.catalogue import select_kb
from rgalign.data.synth.world import (
    BASE_TS, C_ANY, C_IN, C_MISMATCH, C_OUT, DAYS, ENTRY_P, ENTRY_PAGES, FILLERS, GENDER_P, GENDERS, HOUR_W,
    P_DISTRACTOR, P_N_ACTIONS, P_NEED_CUES, P_NEED_SHOWN, P_SECONDARY, REGION_P, REGION_TOPIC, REGIONS, REL_COMPAT,
    REL_NEED, REL_OTHER, REL_RELATED, REL_SECONDARY, REL_TOPIC, SALE_HOURS, STATUS_DAYS, STATUS_P, STATUSES, TIER_CLICK,
    TIER_ORDERS, TIER_P, TIER_TOPIC, TIERS, TOPIC_PRIOR, TOPICS,
)
from rgalign.errors import DataError


@dataclass(frozen=True)
class SynthParams:
    """What a synthetic dataset is drawn from, and all it is drawn from: the same params give the
    same bytes (``synth.json`` records them). `generate`, `synthesize`, `synth_frames` and
    `tiny_dataset` take these fields as keyword arguments.

    The defaults: 20,000 requests x a slate of 10 = 200,000 impressions, about 100 requests per
    user, and 200 of the catalogue's 222 intents (`MAX_INTENTS`), round-robin over topics.
    """

    users: int = 2000
    intents: int = 200
    requests: int = 20000  # chatbot openings; >= 3, so the time split has train, valid and test
    seed: int = 0
    slate_size: int = 10  # intents shown per request, at most the KB's size

    def __post_init__(self) -> None:
        for name, lo in (("users", 1), ("requests", 3), ("slate_size", 1)):
            v = getattr(self, name)
            if not isinstance(v, (int, np.integer)) or v < lo:
                raise DataError(f"synth: --{name.replace('_', '-')} must be an integer >= {lo}, got {v!r}")

    def to_dict(self) -> dict[str, int]:
        return to_dict(self)


@dataclass
class SynthTables:
    """Generated columns (numpy arrays), plus what is hidden from the dataset: the latent needs."""

    users: dict[str, np.ndarray]
    intents: dict[str, np.ndarray]
    impressions: dict[str, np.ndarray]
    need: np.ndarray  # (R,) KB index of each request's latent need, in request order
    secondary: np.ndarray  # (R,) KB index of the secondary need, -1 where none
    summary: dict[str, Any]


def _pick(rng: np.random.Generator, p_rows: np.ndarray, rows: np.ndarray) -> np.ndarray:
    """One categorical draw per element of ``rows``, from the distribution ``p_rows[rows]``.

    Inverse CDF on the rows' CDFs laid end to end (row r shifted to (r, r+1]): one searchsorted,
    O(N log(rows x cols)) time and O(N) memory, however many categories there are.
    """
    p_rows = np.atleast_2d(np.asarray(p_rows, dtype=np.float64))
    n_rows, n_cols = p_rows.shape
    cdf = np.cumsum(p_rows, axis=1)
    cdf /= cdf[:, -1:]
    cdf[:, -1] = 1.0
    flat = (cdf + np.arange(n_rows)[:, None]).ravel()
    rows = np.asarray(rows, dtype=np.int64)
    idx = np.searchsorted(flat, rows + rng.random(len(rows)), side="right") - rows * n_cols
    return np.minimum(idx, n_cols - 1)


def _gumbel(rng: np.random.Generator, shape: tuple[int, ...]) -> np.ndarray:
    return -np.log(-np.log(rng.random(shape) + 1e-12) + 1e-12)


def generate(**params: int) -> SynthTables:
    """Draw a dataset (see the package docstring) from `SynthParams` ``params``. Arrays only;
    :func:`~rgalign.data.synth.synthesize` writes them.

    Returned columns: users ``(U,)``, intents ``(K,)``, impressions ``(R * slate_size,)``, rows
    grouped by request, requests in time order.
    """
    users, intents, requests, seed, slate_size = astuple(SynthParams(**params))
    kb = select_kb(intents)
    n_kb = len(kb)
    if slate_size > n_kb:
        raise DataError(f"synth: slate_size {slate_size} is larger than the KB ({n_kb} intents)")
    rng = np.random.default_rng(seed)

    # --- KB arrays
    topic = np.array([it.topic for it in kb])
    any_status = np.array([not it.statuses for it in kb])
    status_ok = np.zeros((n_kb, len(STATUSES)), dtype=bool)
    for k, it in enumerate(kb):
        status_ok[k, list(it.statuses)] = True
    lo = np.array([it.days[0] for it in kb])
    hi = np.array([it.days[1] for it in kb])
    fam = np.array([it.family for it in kb])
    prod = np.array([it.product for it in kb])
    base = np.array([it.base for it in kb])
    # Related: same family (hand-written) or same product and topic (product variants).
    related = np.where(
        base[:, None] & base[None, :], fam[:, None] == fam[None, :],
        (prod[:, None] == prod[None, :]) & (topic[:, None] == topic[None, :]) & ~base[:, None] & ~base[None, :],
    )
    np.fill_diagonal(related, False)
    log_pop = 0.7 * base + TOPIC_PRIOR[topic] + rng.normal(0.0, 0.5, n_kb)

    # --- users
    gender = rng.choice(len(GENDERS), users, p=GENDER_P)
    tier = rng.choice(len(TIERS), users, p=TIER_P)
    region = rng.choice(len(REGIONS), users, p=REGION_P)
    age = np.clip(np.rint(rng.normal(32.0, 10.0, users)), 18, 75).astype(np.int64)
    orders = rng.poisson(TIER_ORDERS[tier]).astype(np.int64)
    activity = rng.lognormal(0.0, 0.8, users) * (1.0 + 0.1 * orders)

    # --- requests, in time order
    n_req = requests
    r_user = rng.choice(users, n_req, p=activity / activity.sum())
    hour = rng.choice(24, n_req, p=HOUR_W / HOUR_W.sum())
    ts = BASE_TS + rng.integers(0, DAYS, n_req) * 86400 + hour * 3600 + rng.integers(0, 3600, n_req)
    order = np.argsort(ts, kind="stable")
    r_user, hour, ts = r_user[order], hour[order], ts[order]
    r_tier, r_region, r_age = tier[r_user], region[r_user], age[r_user]

    has_orders = orders[r_user] > 0
    status_with = _pick(rng, STATUS_P, np.zeros(n_req, dtype=np.int64))
    # Users without orders in 90 days: mostly no order at all, else an old completed/cancelled one.
    status_without = np.where(
        rng.random(n_req) < 0.85, STATUSES.index("none"),
        np.where(rng.random(n_req) < 0.7, STATUSES.index("completed"), STATUSES.index("cancelled")),
    )
    status = np.where(has_orders, status_with, status_without)
    d_lo = np.array([STATUS_DAYS[s][0] for s in STATUSES])[status]
    d_hi = np.array([STATUS_DAYS[s][1] for s in STATUSES])[status]
    days = (d_lo + np.floor(rng.random(n_req) * (d_hi - d_lo + 1))).astype(np.int64)

    topic_bonus = TIER_TOPIC[r_tier] + REGION_TOPIC[r_region]
    topic_bonus[:, TOPICS.index("account")] += 0.4 * (r_age > 50)
    topic_bonus[:, TOPICS.index("promotions")] += 0.3 * (r_age < 25) + 0.6 * np.isin(hour, SALE_HOURS)

    def compat(rows: slice, cols: np.ndarray | None = None) -> np.ndarray:
        """compat(status, days, k) for requests ``rows`` x all intents (or their ``cols`` (n, S))."""
        st, d = status[rows], days[rows]
        if cols is None:
            match = status_ok[:, st].T
            inwin = (d[:, None] >= lo[None, :]) & (d[:, None] <= hi[None, :])
            anys = np.broadcast_to(any_status[None, :], match.shape)
        else:
            match = status_ok[cols, st[:, None]]
            inwin = (d[:, None] >= lo[cols]) & (d[:, None] <= hi[cols])
            anys = any_status[cols]
        return np.where(anys, C_ANY, np.where(match & inwin, C_IN, np.where(match, C_OUT, C_MISMATCH)))

    # --- 1. latent need, and 3. slate: chunked so memory stays O(chunk x K)
    need = np.empty(n_req, dtype=np.int64)
    shown = np.empty((n_req, slate_size), dtype=np.int64)
    need_forced = rng.random(n_req) < P_NEED_SHOWN
    chunk = 16384
    for r0 in range(0, n_req, chunk):
        rows = slice(r0, min(r0 + chunk, n_req))
        n = rows.stop - rows.start
        c = compat(rows)
        logit = log_pop[None, :] + c + topic_bonus[rows][:, topic]
        nd = np.argmax(logit + _gumbel(rng, (n, n_kb)), axis=1)
        need[rows] = nd
        score = (log_pop[None, :] + 0.5 * c + 1.2 * (topic[None, :] == topic[nd][:, None])
                 + 2.0 * related[nd] + _gumbel(rng, (n, n_kb)))
        forced = score.copy()
        forced[np.arange(n), nd] = np.where(need_forced[rows], np.inf, -np.inf)
        pick = np.argpartition(-forced, slate_size - 1, axis=1)[:, :slate_size]
        # Slot order: the scorer with fresh noise, not the forcing (n* is not always first).
        order_score = np.take_along_axis(score, pick, axis=1) + _gumbel(rng, pick.shape)
        shown[rows] = np.take_along_axis(pick, np.argsort(-order_score, axis=1, kind="stable"), axis=1)

    # Secondary need: a random related intent, for P_SECONDARY of the requests that have one.
    n_rel = related.sum(axis=1)
    rel_list = np.full((n_kb, max(int(n_rel.max()), 1)), -1, dtype=np.int64)
    for k in range(n_kb):  # K <= 222: a loop over the KB, not over requests
        idx = np.flatnonzero(related[k])
        rel_list[k, : len(idx)] = idx
    j = np.floor(rng.random(n_req) * np.maximum(n_rel[need], 1)).astype(np.int64)
    secondary = np.where((rng.random(n_req) < P_SECONDARY) & (n_rel[need] > 0), rel_list[need, j], -1)

    # --- 2. what the user did: entry page and recent_actions
    entry = _pick(rng, ENTRY_P, topic[need])
    cue_text = [c for it in kb for c in it.cues]
    n_cues = np.array([len(it.cues) for it in kb])
    cue_start = np.cumsum(n_cues) - n_cues
    fill_base = len(cue_text)
    all_text = cue_text + list(FILLERS)  # a list: indexing it per action is cheaper than numpy's

    k_need = np.minimum(rng.choice(3, n_req, p=P_NEED_CUES), n_cues[need])
    c1 = cue_start[need] + np.floor(rng.random(n_req) * n_cues[need]).astype(np.int64)
    # A second cue of the need, different from the first one.
    c2 = cue_start[need] + (c1 - cue_start[need] + 1 + np.floor(rng.random(n_req) * (n_cues[need] - 1)).astype(np.int64)) % n_cues[need]
    pop_p = np.exp(log_pop) / np.exp(log_pop).sum()
    distractor = _pick(rng, pop_p, np.zeros(n_req, dtype=np.int64))
    has_dis = (rng.random(n_req) < P_DISTRACTOR) & (distractor != need)
    cd = cue_start[distractor] + np.floor(rng.random(n_req) * n_cues[distractor]).astype(np.int64)
    n_actions = rng.choice(3, n_req, p=P_N_ACTIONS) + 2
    n_fill = np.maximum(n_actions - k_need - has_dis, 0)
    fill_perm = np.argsort(rng.random((n_req, len(FILLERS))), axis=1)[:, :4] + fill_base
    parts = np.full((n_req, 4), -1, dtype=np.int64)
    parts[:, 0] = np.where(k_need >= 1, c1, -1)
    parts[:, 1] = np.where(k_need >= 2, c2, -1)
    parts[:, 2] = np.where(has_dis, cd, -1)
    # Fillers go to the free slots: (slot 3, then slots left empty by the need/distractor).
    free = parts < 0
    fill_rank = np.cumsum(free, axis=1) - 1  # 0-based rank of each free slot
    fill_idx = np.take_along_axis(fill_perm, np.clip(fill_rank, 0, 3), axis=1)
    parts = np.where(free & (fill_rank < n_fill[:, None]), fill_idx, parts)
    keys = np.where(parts >= 0, rng.random(parts.shape), 2.0)  # shuffle, empty slots last
    parts = np.take_along_axis(parts, np.argsort(keys, axis=1), axis=1)
    actions = ["; ".join(all_text[p] for p in row if p >= 0) for row in parts.tolist()]

    # --- 4. clicks
    pos = np.arange(slate_size)[None, :]
    sl = slice(0, n_req)
    rel = np.select(
        [
            shown == need[:, None],
            shown == secondary[:, None],
            related[need[:, None], shown],
            compat(sl, shown) == C_IN,
            topic[shown] == topic[need][:, None],
        ],
        [REL_NEED, REL_SECONDARY, REL_RELATED, REL_COMPAT, REL_TOPIC],
        default=REL_OTHER,
    )
    logit = (rel + TIER_CLICK[r_tier][:, None] + 0.3 * (log_pop[shown] - log_pop.mean()) - 0.1 * pos
             + rng.normal(0.0, 0.3, shown.shape))
    clicks = (rng.random(shown.shape) < 1.0 / (1.0 + np.exp(-logit))).astype(np.int8)

    # --- columns
    user_ids = np.array([f"u{i:06d}" for i in range(users)], dtype=object)
    intent_ids = np.array([f"i{k:04d}" for k in range(n_kb)], dtype=object)
    request_ids = np.array([f"r{i:07d}" for i in range(n_req)], dtype=object)
    rep = np.repeat(np.arange(n_req), slate_size)  # request of each impression
    imp = {
        "request_id": request_ids[rep],
        "user_id": user_ids[r_user][rep],
        "intent_id": intent_ids[shown.ravel()],
        "label": clicks.ravel(),
        "ts": ts.astype(np.int64)[rep],
        "entry_page": np.array(ENTRY_PAGES, dtype=object)[entry][rep],
        "last_order_status": np.array(STATUSES, dtype=object)[status][rep],
        "hour": hour.astype(np.int64)[rep],
        "days_since_last_order": days[rep],
        "recent_actions": np.array(actions, dtype=object)[rep],
    }
    summary = {
        "impressions": int(clicks.size),
        "ctr": round(float(clicks.mean()), 4),
        "requests_with_click": round(float((clicks.sum(1) > 0).mean()), 4),
        "need_shown": round(float((shown == need[:, None]).any(1).mean()), 4),
        "need_cue_in_text": round(float((k_need > 0).mean()), 4),
        "need_topics": {TOPICS[t]: round(float(x), 4) for t, x in enumerate(np.bincount(topic[need], minlength=len(TOPICS)) / n_req)},
    }
    return SynthTables(
        users={
            "user_id": user_ids,
            "gender": np.array(GENDERS, dtype=object)[gender],
            "tier": np.array(TIERS, dtype=object)[tier],
            "region": np.array(REGIONS, dtype=object)[region],
            "age": age,
            "orders_90d": orders,
        },
        intents={
            "intent_id": intent_ids,
            "text": np.array([it.text for it in kb], dtype=object),
            "category": np.array([TOPICS[it.topic] for it in kb], dtype=object),
        },
        impressions=imp,
        need=need,
        secondary=secondary,
        summary=summary,
    )
