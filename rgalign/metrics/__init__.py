"""The SPEC §4 metrics (`rgalign.metrics.core`: AUC, GAUC, logloss, error rate,
Recall/NDCG/HitRate@K), how two models compare (`rgalign.metrics.compare`: deltas, the paired GAUC
difference) and the references and cohorts models are compared on (`rgalign.metrics.reference`:
item popularity, GAUC per cold/seen cohort)."""

from rgalign.metrics.compare import __all__ as _compare_all
from rgalign.metrics.compare import abs_deltas, gauc_difference, relative_deltas
from rgalign.metrics.core import *  # noqa: F403 - the package's public names are core's, compare's and reference's
from rgalign.metrics.core import __all__ as _core_all
from rgalign.metrics.reference import POPULARITY_PRIOR, cohort_gauc, like_rate_from_counts, smoothed_like_rate

__all__ = [*_core_all, *_compare_all, "POPULARITY_PRIOR", "cohort_gauc", "like_rate_from_counts",
           "smoothed_like_rate"]
