"""What the four python-backend models share: request errors, parameters, batching of requests.

``triton_python_backend_utils`` exists only inside Triton's python-backend stub, so it is imported
when a model is initialised, never at module import: the logic here is testable without a server.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from rgalign.errors import RgalignError


class RequestError(RgalignError):
    """A request the model cannot serve (bad JSON, a missing feature, an out-of-range top_k):
    answered with ``INVALID_ARG`` for that request only (HTTP 400, gRPC INVALID_ARGUMENT)."""

    exit_code = 2


def pb_utils() -> Any:
    """The python backend's utility module (only importable inside the stub)."""
    import triton_python_backend_utils

    return triton_python_backend_utils


def model_parameters(args: Mapping[str, str]) -> dict[str, str]:
    """The ``parameters`` of the model's config (``key -> string_value``) from Triton's args."""
    config = json.loads(args["model_config"])
    return {k: v.get("string_value", "") for k, v in config.get("parameters", {}).items()}


def version_dir(args: Mapping[str, str]) -> Path:
    """``REPO/<model>/<version>/``: where deploy put the model's files."""
    return Path(args["model_repository"]) / str(args["model_version"])


def int_parameter(params: Mapping[str, str], name: str, default: int) -> int:
    value = params.get(name, "")
    return int(value) if value.strip() else default


def split_rows(array: np.ndarray, sizes: Sequence[int]) -> list[np.ndarray]:
    """Split ``array`` (sum(sizes), ...) back into per-request pieces of ``sizes`` rows."""
    return np.split(array, np.cumsum(sizes)[:-1]) if len(sizes) > 1 else [array]


def left_pad(arrays: Sequence[np.ndarray], value: int) -> np.ndarray:
    """Stack (B_i, T_i) arrays into one (sum B_i, max T_i), padding each on the left with
    ``value``: the reasoner's prompts are left padded, so the pooled last token stays last."""
    width = max(a.shape[1] for a in arrays)
    rows = []
    for a in arrays:
        pad = width - a.shape[1]
        rows.append(np.pad(a, ((0, 0), (pad, 0)), constant_values=value) if pad else a)
    return np.concatenate(rows, axis=0)


def respond_each(
    requests: Sequence[Any],
    read: Callable[[Any], Any],
    run: Callable[[list[Any]], list[dict[str, np.ndarray]]],
) -> list[Any]:
    """Answer ``requests`` in order: ``read(request)`` (may raise RequestError: that request gets
    its error), then ``run`` on every readable request at once (one batched model call),
    then one response per request carrying ``run``'s outputs for it."""
    pb = pb_utils()
    responses: list[Any] = [None] * len(requests)
    good: list[int] = []
    inputs: list[Any] = []
    for i, request in enumerate(requests):
        try:
            inputs.append(read(request))
            good.append(i)
        except RequestError as e:
            responses[i] = error_response(str(e))
    if good:
        for i, outputs in zip(good, run(inputs)):
            tensors = [pb.Tensor(name, value) for name, value in outputs.items()]
            responses[i] = pb.InferenceResponse(output_tensors=tensors)
    return responses


def error_response(message: str) -> Any:
    pb = pb_utils()
    error = pb.TritonError(message, pb.TritonError.INVALID_ARG)
    return pb.InferenceResponse(output_tensors=[], error=error)


def input_array(request: Any, name: str) -> np.ndarray | None:
    """The input ``name`` of a request as numpy, or None when the (optional) input is absent."""
    tensor = pb_utils().get_input_tensor_by_name(request, name)
    return None if tensor is None else tensor.as_numpy()
