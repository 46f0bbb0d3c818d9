"""In-process inference on an export, without torch: raw feature dicts -> top-k KB intents.

- preprocess.py: `Preprocessor` (prompt, tokens, encoded features) -> `Batch`.
- runtime.py: `OrtRunner` (ONNX Runtime session, providers checked), `median_latency_ms`.
- pipeline.py: `Pipeline.from_export(EXPORT, precision)`: preprocess -> reasoner -> ranker -> top-k.
- postprocess.py: `postprocess` -> `Ranked` (intent ids and scores, best first).
- records.py: raw requests (what a client sends) from a file, a dataset's test split or encoders.
- limits.py: `RequestLimits`, checked on raw request items before parsing and tokenization.
- batch_invariance.py: `load_runner`: dynamically quantized graphs run row by row, so an answer
  never depends on its batch mates.

Serving (`rgalign.serve.models`), the benchmarks and the export gates all run these pieces, so
what is served is what was gated. Importing this package never imports torch (a test checks).
"""

from rgalign.inference.pipeline import CHUNK, Pipeline
from rgalign.inference.postprocess import Ranked, postprocess
from rgalign.inference.preprocess import Batch, Preprocessor
from rgalign.inference.runtime import OrtRunner, Runner, check_providers, median_latency_ms

__all__ = [
    "CHUNK",
    "Batch",
    "OrtRunner",
    "Pipeline",
    "Preprocessor",
    "Ranked",
    "Runner",
    "check_providers",
    "median_latency_ms",
    "postprocess",
]
