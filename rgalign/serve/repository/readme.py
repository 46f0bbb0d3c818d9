"""The README.md that `rgalign deploy` writes into a model repository (the git-tracked
``triton_repo/README.md`` holds the same text, so deploying to the default folder leaves git clean).
Kept as a Python string so that it ships with the package without package-data settings."""

README_TEXT = """\
# Triton model repository (written by `rgalign deploy`)

A Triton Inference Server model repository serving the model `rgalign`, in one of two layouts
(`deploy.json` says which). Generated: do not edit by hand, re-run `rgalign deploy EXPORT --out
REPO` (the folder is replaced atomically). `deploy.json` records the options, the source export
and the sha256 of the configs and graphs; `manifest.json` is the export's manifest.

Layout `fused` (`--layout fused`, the default for `--backend python`): one python-backend model
running the whole in-process pipeline, one process and no shared-memory hop per request.

```
REPO/
  rgalign/config.pbtxt         python backend, dynamic batching, response cache enabled
  rgalign/1/model.py           shim importing rgalign.serve.models.fused
  rgalign/1/...                the export's files at their export paths: manifest.json,
                               encoders.json, prompt_fields.json, intents.json,
                               reasoner/tokenizer/, reasoner/<precision>/, ranker/<precision>/
  rgalign/warmup/features      the warm-up request (Triton's raw layout)
  README.md  deploy.json  manifest.json
```

Layout `ensemble` (`--layout ensemble`, the default for the onnxruntime and tensorrt backends):

```
REPO/
  rgalign/config.pbtxt         the ensemble: preprocess -> reasoner -> ranker -> postprocess,
                               response cache enabled
  rgalign/1/                   (an ensemble's version folder is empty)
  preprocess/config.pbtxt      python backend: raw JSON features -> tokens + encoded features
  preprocess/1/model.py        shim importing rgalign.serve.models.preprocess
  preprocess/1/...             the export's serving files: manifest.json, encoders.json,
                               prompt_fields.json, intents.json, reasoner/tokenizer/
  reasoner/config.pbtxt        latent query; backend python (ONNX Runtime in the python backend,
                               1/model.onnx + 1/model.py), onnxruntime (1/model.onnx) or
                               tensorrt (1/model.plan)
  ranker/config.pbtxt          scores over the whole KB + top-K; same backends as the reasoner
  postprocess/config.pbtxt     python backend: top-K indices -> intent ids (1/intents.json)
  */warmup/                    the inputs of each model's warm-up request (Triton's raw layout)
  README.md  deploy.json  manifest.json
```

Request to `rgalign` (both layouts): `features` BYTES [B, 1], one JSON object of raw user and
context features per batch item; optional `top_k` INT32 [B, 1] (one value for the whole request;
default in `deploy.json`). Response: `intent_ids` BYTES [B, k] and `scores` FP32 [B, k], best
first. The fused model and the ensemble's step models batch dynamically; the ensemble itself
cannot carry dynamic batching. The response cache takes effect when the server has one
(`rgalign serve REPO --cache-mb 64`).

Serve it with `rgalign serve REPO` (the embedded CPU `tritonserver` of nvidia-pytriton, or
`--tritonserver PATH`) and query it with `rgalign query --url 127.0.0.1:8000 --features '{...}'`.
The python-backend models import rgalign: the server's Python must have it installed (`rgalign
serve` runs the stubs with the interpreter it runs on). The `onnxruntime` and `tensorrt` backends
need a server that has them (an NGC Triton container; TensorRT needs a GPU).
"""
