"""The synthetic world's fixed facts: topics, order statuses and their day windows, user tiers and
regions and how they tilt the topics, the daily traffic profile, entry pages, filler actions, and
the click model's constants (what each number does: the package docstring)."""

from __future__ import annotations

import numpy as np

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
