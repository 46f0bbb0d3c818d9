"""The python-backend models of the deployed ensemble (``rgalign deploy``), one file per step.

    features (B,) JSON --preprocess--> input_ids, attention_mask (B, T); cat (B, Fc); num (B, Fn)
    --reasoner--> latent_query (B, d) --ranker--> scores (B, N), topk_scores / topk_idx (B, K)
    --postprocess--> intent_ids (B, k) BYTES, scores (B, k) FP32

Each module holds the step's logic as plain functions and a class over numpy arrays (unit-tested
without a server), plus a thin ``TritonPythonModel`` that reads Triton requests, calls the logic
and answers each request on its own: a bad request gets an ``INVALID_ARG`` error for itself only
and the others batched with it are served. The logic is the in-process pipeline's
(`rgalign.inference`: `Preprocessor`, `postprocess`; the same ONNX files through
`rgalign.inference.runtime.OrtRunner`), so what Triton serves is what the export gated.

The generated ``REPO/<model>/1/model.py`` files are two-line shims importing
``TritonPythonModel`` from here: the serving interpreter must have rgalign installed (it is the
venv's python when the server is started by ``rgalign serve``).
"""
