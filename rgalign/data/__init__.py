"""Datasets (SPEC §1): schema, loading and validation, splits, feature encoders, request arrays,
and a synthetic Shopee-like chatbot dataset.

- :mod:`rgalign.data.schema`   -- ``DatasetSchema`` / ``SplitSpec`` (``dataset.yaml``)
- :mod:`rgalign.data.loader`   -- ``load_dataset(path) -> Dataset``, every check, one-line errors
- :mod:`rgalign.data.splits`   -- ``assign_splits``: train/valid/test per request
- :mod:`rgalign.data.encoders` -- ``FeatureEncoders``: vocabularies + numeric stats, fit on train
- :mod:`rgalign.data.requests` -- ``build_requests``: padded per-request arrays for the models
- :mod:`rgalign.data.synth`    -- ``synthesize``: the synthetic dataset and its click model
"""

from rgalign.data.encoders import FeatureEncoders
from rgalign.data.loader import Dataset, load_dataset
from rgalign.data.requests import RequestArrays, build_requests
from rgalign.data.schema import SPLITS, DatasetSchema, SplitSpec
from rgalign.data.splits import assign_splits
from rgalign.data.synth import synthesize, tiny_dataset

__all__ = [
    "SPLITS",
    "Dataset",
    "DatasetSchema",
    "FeatureEncoders",
    "RequestArrays",
    "SplitSpec",
    "assign_splits",
    "build_requests",
    "load_dataset",
    "synthesize",
    "tiny_dataset",
]
