"""The SPEC §4 metrics (`rgalign.metrics.core`: AUC, GAUC, logloss, error rate,
Recall/NDCG/HitRate@K, deltas) and the references and cohorts models are compared on
(`rgalign.metrics.reference`: item popularity, GAUC per cold/seen cohort)."""

from rgalign.metrics.core import *  # noqa: F403 - the package's public names are core's and reference's
from rgalign.metrics.core import __all__ as _core_all
from rgalign.metrics.reference import POPULARITY_PRIOR, cohort_gauc, like_rate_from_counts, smoothed_like_rate

__all__ = [*_core_all, "POPULARITY_PRIOR", "cohort_gauc", "like_rate_from_counts", "smoothed_like_rate"]
