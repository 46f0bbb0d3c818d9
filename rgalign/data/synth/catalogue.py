"""The KB catalogue: 62 hand-written help intents and 10 product templates x 16 products, each
with the order statuses and day window it arises in and the cue phrases a user with that need
does; `select_kb` keeps ``n`` of them round-robin over topics."""

from __future__ import annotations

from dataclasses import dataclass

from rgalign.data.synth.world import STATUSES, TOPICS
from rgalign.errors import DataError

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


@dataclass(frozen=True)
class Intent:
    topic: int
    family: str
    text: str
    statuses: tuple[int, ...]  # empty: arises in any status
    days: tuple[int, int]
    cues: tuple[str, ...]
    product: int  # -1 for hand-written intents
    base: bool


def _catalogue() -> list[list[Intent]]:
    """All intents, grouped by topic; within a topic hand-written first, then product variants."""
    by_topic: list[list[Intent]] = [[] for _ in TOPICS]

    def make(spec: tuple, product: int) -> Intent:
        topic, family, text, statuses, days, cues = spec
        p, d = PRODUCTS[product] if product >= 0 else ("", "")
        return Intent(
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


def select_kb(n: int) -> list[Intent]:
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
