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

import json
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from rgalign.data.schema import DatasetSchema, SplitSpec, atomic_write
from rgalign.errors import DataError

GENERATOR = "rgalign.data.synth/1"
BASE_TS = 1_735_689_600  # 2025-01-01T00:00:00Z
DAYS = 60  # log span: long enough for a temporal split with a 20% test tail

TOPICS = ("logistics", "returns_refunds", "payments", "account", "promotions", "seller_chat")
# Chatbot traffic is dominated by "where is my order" and refunds.
TOPIC_PRIOR = np.array([0.3, 0.2, 0.1, 0.0, 0.0, -0.1])

STATUSES = ("none", "unpaid", "to_ship", "shipped", "delivered", "completed", "cancelled", "return_requested")
STATUS_P = np.array([0.0, 0.08, 0.14, 0.26, 0.16, 0.21, 0.07, 0.08])  # users with recent orders
STATUS_DAYS = {  # (lo, hi) days since the last order, by status
    "none": (60, 365), "unpaid": (0, 2), "to_ship": (0, 5), "shipped": (1, 14), "delivered": (3, 20),
    "completed": (5, 90), "cancelled": (0, 30), "return_requested": (5, 40),
}

GENDERS, GENDER_P = ("F", "M", "U"), np.array([0.55, 0.42, 0.03])
TIERS, TIER_P = ("classic", "silver", "gold", "platinum"), np.array([0.50, 0.28, 0.15, 0.07])
TIER_ORDERS = np.array([1.5, 3.0, 6.0, 12.0])  # Poisson mean of orders_90d
TIER_CLICK = np.array([-0.2, 0.0, 0.1, 0.25])  # loyal users engage more with the chatbot
# tier x topic: classic users hunt vouchers; platinum users return more and care about perks.
TIER_TOPIC = np.array([
    [0.0, 0.0, 0.2, 0.0, 0.4, 0.0],
    [0.0, 0.0, 0.0, 0.0, 0.2, 0.0],
    [0.0, 0.1, 0.0, 0.0, 0.0, 0.1],
    [0.0, 0.3, -0.2, 0.3, -0.2, 0.2],
])
REGIONS, REGION_P = ("ID", "VN", "TH", "PH", "MY", "SG"), np.array([0.30, 0.20, 0.15, 0.15, 0.12, 0.08])
# region x topic: bank transfers / COD in ID and PH, slow last mile in VN and PH, SG rarely waits.
REGION_TOPIC = np.array([
    [0.2, 0.0, 0.4, 0.0, 0.0, 0.0],
    [0.4, 0.0, 0.1, 0.0, 0.0, 0.0],
    [0.0, 0.0, 0.0, 0.0, 0.3, 0.0],
    [0.3, 0.0, 0.3, 0.0, 0.0, 0.0],
    [0.0, 0.2, 0.0, 0.0, 0.0, 0.2],
    [-0.3, 0.3, -0.3, 0.2, 0.0, 0.3],
])
SALE_HOURS = (0, 12, 20, 21, 22)  # flash sales start at midnight, noon and in the evening
HOUR_W = np.array([0.6, 0.4, 0.3, 0.2, 0.2, 0.3, 0.6, 1.0, 1.4, 1.6, 1.7, 1.8,
                   2.2, 2.0, 1.7, 1.6, 1.6, 1.7, 1.9, 2.2, 2.5, 2.6, 2.2, 1.2])

ENTRY_PAGES = ("home", "order_details", "product_page", "me_tab", "wallet", "promo_banner", "chat_list")
ENTRY_P = np.array([  # topic x entry page
    [0.15, 0.55, 0.05, 0.10, 0.02, 0.03, 0.10],
    [0.15, 0.50, 0.05, 0.15, 0.03, 0.02, 0.10],
    [0.15, 0.15, 0.10, 0.10, 0.40, 0.05, 0.05],
    [0.30, 0.05, 0.05, 0.50, 0.05, 0.02, 0.03],
    [0.30, 0.05, 0.15, 0.05, 0.05, 0.35, 0.05],
    [0.15, 0.15, 0.30, 0.05, 0.02, 0.03, 0.30],
])

# Click model constants (see the module docstring).
C_IN, C_OUT, C_ANY, C_MISMATCH = 3.0, 1.0, 1.0, -2.5
P_SECONDARY = 0.3
P_NEED_CUES = np.array([0.2, 0.6, 0.2])  # 0, 1, 2 cues of the true need in recent_actions
P_DISTRACTOR = 0.3
P_N_ACTIONS = np.array([0.35, 0.40, 0.25])  # 2, 3, 4 actions
P_NEED_SHOWN = 0.8
REL_NEED, REL_SECONDARY, REL_RELATED, REL_COMPAT, REL_TOPIC, REL_OTHER = 1.6, 0.5, -1.5, -2.6, -3.0, -4.2

FILLERS = (
    "browsed the home feed", "viewed Daily Discover", "added an item to the cart", "checked notifications",
    "watched a Shopee Live stream", "opened the Me tab", "liked a product", "followed a shop",
    "scrolled through recommendations", "viewed a product video", "checked Shopee Feed", "played a Shopee game",
)

# ------------------------------------------------------------------ the KB catalogue
# (topic, family, text, statuses ("" = any status), days window or None, cue phrases)
_BASE: tuple[tuple[str, str, str, str, tuple[int, int] | None, tuple[str, ...]], ...] = (
    ("logistics", "tracking", "Where is my parcel?", "shipped", (1, 5),
     ("checked the tracking page twice", "opened order tracking", "viewed shipping status")),
    ("logistics", "tracking", "My parcel is delayed", "shipped", (6, 30),
     ("searched 'parcel late'", "checked the estimated delivery date", "saw the delivery date had passed")),
    ("logistics", "tracking", "My order is stuck in transit", "shipped", (8, 30),
     ("saw tracking not updated for days", "searched 'stuck in transit'")),
    ("logistics", "tracking", "Which courier is delivering my order?", "to_ship shipped", (1, 10),
     ("searched 'courier name'", "viewed logistics partner info")),
    ("logistics", "delivery", "My parcel shows delivered but I did not receive it", "delivered", (3, 20),
     ("searched 'parcel not received'", "checked the proof of delivery photo")),
    ("logistics", "delivery", "The courier failed to deliver my parcel", "shipped", (3, 20),
     ("saw a failed delivery attempt", "searched 'delivery attempt failed'")),
    ("logistics", "delivery", "Can I reschedule my delivery?", "shipped", (2, 14),
     ("searched 'reschedule delivery'", "viewed delivery time slots")),
    ("logistics", "delivery", "How do I contact the courier?", "shipped delivered", (2, 20),
     ("searched 'courier phone number'", "viewed driver contact details")),
    ("logistics", "shipping", "How do I change my delivery address?", "unpaid to_ship", (0, 3),
     ("edited the address book", "searched 'change address'")),
    ("logistics", "shipping", "Why has my order not been shipped yet?", "to_ship", (2, 5),
     ("checked the 'to ship' tab", "searched 'seller not shipping'")),
    ("logistics", "shipping", "How much is the shipping fee?", "none unpaid", None,
     ("viewed the shipping fee at checkout", "searched 'shipping cost'")),
    ("logistics", "shipping", "Can I collect my parcel at a pickup point?", "unpaid to_ship", None,
     ("viewed the pickup point map", "searched 'self collection'")),
    ("logistics", "shipping", "How long does international shipping take?", "to_ship shipped", None,
     ("viewed an overseas seller's item", "searched 'international shipping time'")),
    ("returns_refunds", "return", "How do I return an item?", "delivered completed", (3, 30),
     ("viewed the return policy", "searched 'how to return'")),
    ("returns_refunds", "return", "Can I exchange an item instead of a refund?", "delivered completed", (3, 30),
     ("searched 'exchange size'", "viewed the exchange policy")),
    ("returns_refunds", "return", "What is the return window?", "completed", (7, 90),
     ("checked the return deadline", "searched 'return period'")),
    ("returns_refunds", "return", "How do I send my return parcel back?", "return_requested", (5, 20),
     ("searched 'return drop-off point'", "printed the return label")),
    ("returns_refunds", "refund", "How long does a refund take?", "return_requested", None,
     ("checked the refund timeline", "searched 'refund days'")),
    ("returns_refunds", "refund", "My return request was rejected", "return_requested", (10, 40),
     ("saw the return request rejected", "searched 'return rejected'")),
    ("returns_refunds", "refund", "Should my refund go to ShopeePay or my bank?", "return_requested cancelled", None,
     ("viewed refund method options", "searched 'refund to bank'")),
    ("returns_refunds", "cancel", "How do I cancel my order?", "unpaid to_ship", (0, 3),
     ("tapped cancel order", "searched 'cancel order'")),
    ("returns_refunds", "cancel", "Where is the refund for my cancelled order?", "cancelled", (3, 30),
     ("viewed the cancelled order", "searched 'refund after cancel'")),
    ("returns_refunds", "cancel", "Why was my order cancelled automatically?", "cancelled", (0, 5),
     ("saw the order auto-cancelled", "searched 'order cancelled by system'")),
    ("payments", "pay_fail", "My payment failed", "unpaid", (0, 1),
     ("saw a payment failed message", "retried card payment")),
    ("payments", "pay_fail", "Why was my card declined?", "unpaid", (0, 2),
     ("saw card declined", "re-entered card details")),
    ("payments", "pay_fail", "I paid but my order still shows unpaid", "unpaid", (0, 2),
     ("checked the bank app deduction", "searched 'paid but unpaid'")),
    ("payments", "pay_fail", "My bank transfer has not been confirmed", "unpaid", (1, 2),
     ("uploaded a transfer receipt", "searched 'bank transfer pending'")),
    ("payments", "methods", "How do I pay with cash on delivery?", "none unpaid", None,
     ("searched 'cash on delivery'", "viewed COD eligibility")),
    ("payments", "methods", "How do I pay in instalments?", "none unpaid", None,
     ("viewed instalment plans", "searched 'pay later'")),
    ("payments", "methods", "Which payment methods are accepted?", "none unpaid", None,
     ("viewed payment options", "searched 'payment methods'")),
    ("payments", "methods", "How do I use Shopee Coins to pay?", "unpaid", None,
     ("viewed the Shopee Coins balance", "searched 'use coins at checkout'")),
    ("payments", "wallet", "How do I top up ShopeePay?", "", None,
     ("opened the ShopeePay wallet", "searched 'top up wallet'")),
    ("payments", "wallet", "How do I get an invoice for my order?", "delivered completed", None,
     ("searched 'tax invoice'", "viewed the order receipt")),
    ("account", "login", "I cannot log in to my account", "", None,
     ("failed to log in twice", "searched 'cannot log in'")),
    ("account", "login", "How do I reset my password?", "", None,
     ("tapped forgot password", "searched 'reset password'")),
    ("account", "login", "I did not receive the OTP code", "", None,
     ("requested the OTP again", "searched 'OTP not received'")),
    ("account", "security", "Someone else used my account", "", None,
     ("saw a login from a new device", "searched 'account hacked'")),
    ("account", "security", "My account was suspended", "", None,
     ("saw an account restricted notice", "searched 'account suspended'")),
    ("account", "security", "How do I verify my identity?", "", None,
     ("saw a verification request", "searched 'verify ID'")),
    ("account", "profile", "How do I change my phone number?", "", None,
     ("opened account settings", "searched 'change phone number'")),
    ("account", "profile", "How do I change my email address?", "", None,
     ("edited the profile email", "searched 'change email'")),
    ("account", "profile", "How do I add a bank account?", "", None,
     ("opened the bank accounts page", "searched 'link bank account'")),
    ("account", "profile", "How do I delete my account?", "", None,
     ("searched 'delete account'", "viewed privacy settings")),
    ("account", "profile", "How do I upgrade my membership tier?", "", None,
     ("viewed membership benefits", "searched 'tier upgrade'")),
    ("promotions", "voucher", "How do I use a voucher?", "none unpaid", None,
     ("viewed the voucher wallet", "searched 'how to use voucher'")),
    ("promotions", "voucher", "Why is my voucher not working?", "unpaid", (0, 2),
     ("tried a voucher at checkout", "searched 'voucher invalid'")),
    ("promotions", "voucher", "My free shipping voucher did not apply", "unpaid", (0, 2),
     ("saw a shipping fee at checkout", "searched 'free shipping voucher'")),
    ("promotions", "voucher", "Why did the price go up after I added it to my cart?", "none unpaid", None,
     ("compared the cart price", "searched 'price changed'")),
    ("promotions", "campaign", "When is the next big sale?", "none completed", None,
     ("viewed the campaign countdown", "searched 'next sale date'")),
    ("promotions", "campaign", "How do I join the flash sale?", "none", None,
     ("set a flash sale reminder", "viewed the flash sale page")),
    ("promotions", "rewards", "How do I earn Shopee Coins?", "", None,
     ("checked coins history", "searched 'earn coins'")),
    ("promotions", "rewards", "My cashback has not arrived", "delivered completed", (5, 40),
     ("checked cashback status", "searched 'cashback missing'")),
    ("promotions", "rewards", "How do I claim daily check-in rewards?", "", None,
     ("opened daily check-in", "searched 'check-in rewards'")),
    ("promotions", "rewards", "How do referral rewards work?", "", None,
     ("viewed the invite friends page", "searched 'referral code'")),
    ("seller_chat", "contact", "How do I chat with the seller?", "", None,
     ("opened the seller profile", "searched 'contact seller'")),
    ("seller_chat", "contact", "The seller is not replying", "to_ship shipped", (1, 14),
     ("sent the seller messages with no reply", "searched 'seller not responding'")),
    ("seller_chat", "contact", "Can I ask the seller to change the variation?", "unpaid to_ship", (0, 3),
     ("viewed the order variation", "searched 'change colour after order'")),
    ("seller_chat", "trust", "How do I report a seller?", "", None,
     ("viewed the report seller form", "searched 'report seller'")),
    ("seller_chat", "trust", "Is this seller trustworthy?", "none unpaid", None,
     ("read seller reviews", "checked the seller rating")),
    ("seller_chat", "trust", "The seller asked me to pay outside the app", "", None,
     ("received a suspicious seller message", "searched 'seller asked for payment'")),
    ("seller_chat", "review", "How do I leave a review for the seller?", "delivered completed", (3, 30),
     ("opened the rate product page", "searched 'leave review'")),
    ("seller_chat", "review", "How do I request a bulk order from a seller?", "none", None,
     ("viewed wholesale prices", "searched 'bulk discount'")),
)

# Product templates: {p} = product, {d} = a typical defect of it.
_PRODUCT_TEMPLATES: tuple[tuple[str, str, str, str, tuple[int, int] | None, tuple[str, ...]], ...] = (
    ("returns_refunds", "return_damaged", "How do I return a damaged {p}?", "delivered completed", (3, 30),
     ("searched '{p} {d}'", "uploaded photos of the damaged {p}", "opened a return request for the {p}")),
    ("returns_refunds", "wrong_item", "I received the wrong {p}", "delivered", (3, 20),
     ("compared the {p} with the listing photos", "searched 'wrong {p} received'")),
    ("returns_refunds", "refund_item", "Where is my refund for the {p}?", "return_requested", None,
     ("checked the refund status of the {p} order", "viewed return tracking for the {p}")),
    ("logistics", "missing_item", "My {p} is missing from the parcel", "delivered", (3, 20),
     ("searched 'missing {p}'", "checked the package contents of the {p} order")),
    ("logistics", "arrival", "When will my {p} arrive?", "to_ship shipped", (1, 14),
     ("checked tracking for the {p} order", "viewed the {p} order details")),
    ("payments", "double_charge", "I was charged twice for my {p} order", "to_ship shipped", (0, 7),
     ("viewed the bank statement for the {p} purchase", "searched 'charged twice {p}'")),
    ("promotions", "voucher_item", "Why didn't my voucher apply to the {p}?", "unpaid", (0, 2),
     ("tried a voucher on the {p} at checkout", "searched '{p} voucher'")),
    ("promotions", "sale_item", "Is the {p} on sale soon?", "none completed", None,
     ("browsed {p} deals", "searched '{p} discount'")),
    ("seller_chat", "warranty", "Ask the seller about the {p} warranty", "none delivered completed", None,
     ("read the {p} warranty terms", "searched '{p} warranty'")),
    ("seller_chat", "stock", "Ask the seller if the {p} is back in stock", "none unpaid", None,
     ("viewed an out-of-stock {p}", "searched '{p} restock'")),
)

PRODUCTS = (
    ("phone", "cracked screen"), ("laptop", "won't turn on"), ("headset", "no sound"),
    ("smartwatch", "strap snapped"), ("power bank", "not charging"), ("jacket", "torn seam"),
    ("dress", "wrong size"), ("handbag", "broken zipper"), ("skincare set", "leaking bottle"),
    ("perfume", "smells different"), ("rice cooker", "dented lid"), ("air fryer", "burning smell"),
    ("vacuum cleaner", "weak suction"), ("desk chair", "wobbly base"), ("toy set", "missing pieces"),
    ("baby stroller", "bent wheel"),
)

MAX_INTENTS = len(_BASE) + len(_PRODUCT_TEMPLATES) * len(PRODUCTS)

SCHEMA = DatasetSchema(
    name="synthetic-shopee-chatbot",
    user_categorical=("gender", "tier", "region"),
    user_numeric=("age", "orders_90d"),
    context_categorical=("entry_page", "last_order_status"),
    context_numeric=("hour", "days_since_last_order"),
    context_text=("recent_actions",),
    group_key="user_id",
    split=SplitSpec(by="ts", test_fraction=0.2, valid_fraction=0.1),
)


@dataclass(frozen=True)
class _Intent:
    topic: int
    family: str
    text: str
    statuses: tuple[int, ...]  # empty: arises in any status
    days: tuple[int, int]
    cues: tuple[str, ...]
    product: int  # -1 for hand-written intents
    base: bool


def _catalogue() -> list[list[_Intent]]:
    """All intents, grouped by topic; within a topic hand-written first, then product variants."""
    by_topic: list[list[_Intent]] = [[] for _ in TOPICS]

    def make(spec: tuple, product: int) -> _Intent:
        topic, family, text, statuses, days, cues = spec
        p, d = PRODUCTS[product] if product >= 0 else ("", "")
        return _Intent(
            topic=TOPICS.index(topic),
            family=family,
            text=text.format(p=p, d=d),
            statuses=tuple(STATUSES.index(s) for s in statuses.split()),
            days=days if days is not None else (0, 10**6),
            cues=tuple(c.format(p=p, d=d) for c in cues),
            product=product,
            base=product < 0,
        )

    for spec in _BASE:
        it = make(spec, -1)
        by_topic[it.topic].append(it)
    for p in range(len(PRODUCTS)):
        for spec in _PRODUCT_TEMPLATES:
            it = make(spec, p)
            by_topic[it.topic].append(it)
    return by_topic


def select_kb(n: int) -> list[_Intent]:
    """``n`` intents taken round-robin over topics (so a small KB still covers every topic),
    returned in KB order: grouped by topic, catalogue order within a topic."""
    if not 1 <= n <= MAX_INTENTS:
        raise DataError(f"synth: --intents must be between 1 and {MAX_INTENTS} (the catalogue size), got {n}")
    by_topic = _catalogue()
    take = [0] * len(TOPICS)
    left = n
    while left:
        for t in range(len(TOPICS)):
            if left and take[t] < len(by_topic[t]):
                take[t] += 1
                left -= 1
    return [it for t in range(len(TOPICS)) for it in by_topic[t][: take[t]]]


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


def generate(
    users: int = 2000, intents: int = 200, requests: int = 20000, seed: int = 0, slate_size: int = 10
) -> SynthTables:
    """Draw a dataset (see the module docstring). Arrays only; :func:`synthesize` writes them.

    Returned columns: users ``(U,)``, intents ``(K,)``, impressions ``(R * slate_size,)``, rows
    grouped by request, requests in time order.
    """
    for name, v, lo in (("users", users, 1), ("requests", requests, 3), ("slate_size", slate_size, 1)):
        if not isinstance(v, (int, np.integer)) or v < lo:
            raise DataError(f"synth: --{name.replace('_', '-')} must be an integer >= {lo}, got {v!r}")
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


def _arrow(cols: dict[str, np.ndarray]):
    from rgalign.data.loader import require_pyarrow

    pa = require_pyarrow("writing parquet")

    return pa.table({k: pa.array(v, type=pa.string()) if v.dtype == object else pa.array(v) for k, v in cols.items()})


def synth_frames(
    users: int = 2000, intents: int = 200, requests: int = 20000, seed: int = 0, slate_size: int = 10
):
    """``(schema, users, intents, impressions)`` DataFrames, in memory (same draws as :func:`synthesize`)."""
    import pandas as pd

    t = generate(users=users, intents=intents, requests=requests, seed=seed, slate_size=slate_size)
    frames = [pd.DataFrame(t.users), pd.DataFrame(t.intents), pd.DataFrame(t.impressions)]
    for f in frames:  # object columns of str -> the string dtype load_dataset gives
        for c in f.columns:
            if f[c].dtype == object:
                f[c] = f[c].astype(str)
    return (SCHEMA, *frames)


def tiny_dataset(seed: int = 0, users: int = 60, intents: int = 50, requests: int = 400, slate_size: int = 8):
    """A small validated :class:`~rgalign.data.loader.Dataset`, built in memory in ~0.1 s: the shared
    fixture for tests of models, training and export (a 50-intent KB)."""
    from rgalign.data.loader import Dataset

    schema, u, i, m = synth_frames(users=users, intents=intents, requests=requests, seed=seed, slate_size=slate_size)
    return Dataset.from_frames(schema, u, i, m)


def synthesize(
    out_dir: str | Path, users: int = 2000, intents: int = 200, requests: int = 20000, seed: int = 0, slate_size: int = 10
) -> Path:
    """Write a synthetic dataset folder (SPEC §1) and return its path.

    ``out_dir`` must be empty, missing, or a previous synthetic dataset (it holds ``synth.json``):
    the generator never overwrites someone's real data. Each file is written atomically.
    """
    from rgalign.data.loader import require_pyarrow

    pq = require_pyarrow("rgalign data synth (it writes parquet)").parquet
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise DataError(f"{out}: exists and is not a folder")
    if out.is_dir() and any(out.iterdir()) and not (out / "synth.json").is_file():
        raise DataError(f"{out}: folder is not empty and holds no synthetic dataset (no synth.json); choose an empty folder")
    out.mkdir(parents=True, exist_ok=True)
    t = generate(users=users, intents=intents, requests=requests, seed=seed, slate_size=slate_size)
    for name, cols in (("users", t.users), ("intents", t.intents), ("impressions", t.impressions)):
        path = out / f"{name}.parquet"
        fd, tmp = tempfile.mkstemp(dir=out, prefix=f".{name}.", suffix=".tmp")
        os.close(fd)
        try:
            # zstd: ~2x smaller than snappy on these repetitive columns, and as fast to read.
            pq.write_table(_arrow(cols), tmp, compression="zstd")
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
    SCHEMA.to_yaml(out / "dataset.yaml")
    meta = {
        "generator": GENERATOR,
        "params": {"users": users, "intents": intents, "requests": requests, "seed": seed, "slate_size": slate_size},
        "summary": t.summary,
    }
    atomic_write(out / "synth.json", (json.dumps(meta, indent=1) + "\n").encode("utf-8"))
    return out
