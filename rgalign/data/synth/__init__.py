"""A synthetic Shopee-like chatbot dataset in the SPEC §1 format, with a documented click model.

``synthesize(OUT)`` writes ``dataset.yaml``, ``users.parquet``, ``intents.parquet``,
``impressions.parquet`` and ``synth.json`` (the parameters and summary figures). Everything is
drawn from one ``numpy.random.default_rng(seed)`` in a fixed order: the same arguments give the
same bytes. It is vectorised (no Python loop over impressions; the only per-request loop joins
the ``recent_actions`` sentence), so a million impressions take a few seconds.

The world
---------
- **KB**: up to 222 help intents in 6 topics (logistics, returns_refunds, payments, account,
  promotions, seller_chat): 62 hand-written ones ("Where is my parcel?", "My payment failed")
  and 160 product-specific ones from 10 templates x 16 products ("How do I return a damaged
  phone?", "When will my air fryer arrive?"). ``--intents N`` keeps N of them, round-robin over
  topics. Each intent has a *profile*: the order statuses it arises in (or any status), a window
  of days since the last order, and 2-3 *cue* phrases a user with that need tends to do
  ("checked the tracking page twice", "searched 'phone cracked screen'").
- **Users**: ``gender`` (no effect: a nuisance feature), ``tier`` (classic/silver/gold/platinum),
  ``region`` (ID/VN/TH/PH/MY/SG), ``age``, ``orders_90d`` (Poisson, by tier).
- **Requests**: a user (busy users open the chat more), a time (60 days, a daily profile
  peaking in the evening), ``last_order_status`` and ``days_since_last_order`` (its range
  depends on the status; users without orders are mostly ``none``), ``hour``.

The click model (per request)
-----------------------------
1. **Latent need** ``n*``, one KB intent, drawn from a softmax over intents of::

       log_pop[k] + compat(status, days, k) + tier_topic[tier, topic_k] + region_topic[region, topic_k]
       + (0.4 account if age > 50) + (0.3 promotions if age < 25) + (0.6 promotions at sale hours)

   ``log_pop[k]`` = 0.7 for hand-written intents (they are the common questions) + a topic
   prior (logistics and refunds dominate chatbot traffic) + N(0, 0.5), fixed per seed.
   ``compat`` is +3 when the status is in the intent's profile and the days fall in its window,
   +1 for the right status outside the window, +1 for intents that arise in any status, -2.5
   otherwise. So ``shipped`` + 6 days makes "My parcel is delayed", "When will my phone
   arrive?", ... likely; (status, days) narrows the need to a few dozen intents, not one.
   With probability 0.3 the user also has a **secondary need**: a related intent (same family for
   hand-written intents, e.g. "Where is my parcel?" / "My parcel is delayed"; same product and
   topic for product intents).
2. **What the user did** (observed): ``recent_actions``, 2-4 actions joined by "; ", made of
   0/1/2 cue phrases of ``n*`` (probabilities 0.2/0.6/0.2), with probability 0.3 one cue of a
   *distractor* intent (drawn by popularity), and neutral filler actions ("checked
   notifications"), shuffled. ``entry_page`` is drawn from a per-topic distribution over
   home/order_details/product_page/me_tab/wallet/promo_banner/chat_list. The text therefore
   carries what no categorical does: the *specific* intent (which product, which of the
   tracking questions), most of the time; the categoricals carry the topic and the (status,
   days) family.
3. **Slate**: ``slate_size`` distinct intents picked by a production-like scorer that does not
   read text (Gumbel top-k of ``log_pop + 0.5 compat + 1.2 same-topic-as-need + 2.0
   related-to-need``); ``n*`` is forced in with probability 0.8 and kept out otherwise. Slots
   are then ordered by the scorer plus fresh noise, so ``n*`` is not always first.
4. **Clicks**: each shown intent is clicked independently with ``sigmoid(rel + tier_click[tier]
   + 0.3 (log_pop - mean) - 0.1 position + N(0, 0.3))``, ``rel`` = +1.6 for ``n*``, +0.5 for
   the secondary need, -1.5 related to ``n*``, -2.6 compatible with (status, days), -3.0 same
   topic as ``n*``, -4.2 otherwise; ``tier_click`` = -0.2/0/0.1/0.25 (classic..platinum).
   With the default sizes: CTR about 11%, about 75% of requests have a click, ``n*`` is
   shown in 80% and its cue is in the text in 80% (``synth.json`` records these per dataset).

So a ranker that only sees categorical ids can learn the topic and the status/days family, but
only a model that reads ``recent_actions`` can tell "return a damaged phone" from "return a
damaged laptop" -- the gap RGAlign-Rec's reasoner is meant to close. Measured once on 1M
impressions (seed 0, test split): a hashed logistic regression on intent x categorical crosses
gets AUC 0.63 / GAUC 0.62 / error_rate 0.78; adding intent x words of ``recent_actions`` gets
AUC 0.77 / GAUC 0.78 / error_rate 0.37.
"""

from __future__ import annotations

from rgalign.data.synth.catalogue import MAX_INTENTS, Intent, select_kb
from rgalign.data.synth.dataset import GENERATOR, SCHEMA, TINY, synth_frames, synthesize, tiny_dataset
from rgalign.data.synth.draw import SynthParams, SynthTables, generate
from rgalign.data.synth.world import TOPICS

__all__ = [
    "GENERATOR", "MAX_INTENTS", "SCHEMA", "TINY", "TOPICS", "Intent", "SynthParams", "SynthTables", "generate",
    "select_kb", "synth_frames", "synthesize", "tiny_dataset",
]
