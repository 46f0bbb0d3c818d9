"""What the four python-backend models share: request errors, parameters, batching of requests.

``triton_python_backend_utils`` exists only inside Triton's python-backend stub, so it is imported
when a model is initialised, never at module import: the logic here is testable without a server.

Error isolation (`respond_each`, `answer_each`): whatever exception a request's content raises
while it is read, that request alone gets an ``INVALID_ARG`` error with a one-line reason (never a
traceback, never a server path); when the batched model call itself fails, each request is run
alone, so a request that breaks the model takes no batch mate with it. Raising out of
``execute`` would fail every request of the batch with a 500 (SPEC §6): nothing here lets an
exception out.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from rgalign.errors import RequestError
from rgalign.inference.limits import one_line

__all__ = ["RequestError", "answer_each", "respond_each", "error_response", "one_line"]

# What `answer_each` returns for a request that failed: (triton error code name, message).
Failure = tuple[str, str]


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


def answer_each(
    requests: Sequence[Any],
    read: Callable[[Any], Any],
    run: Callable[[list[Any]], list[dict[str, np.ndarray]]],
    model: str = "model",
) -> list[dict[str, np.ndarray] | Failure]:
    """The logic of `respond_each` without Triton: per request, its outputs or a `Failure`.

    ``read(request)`` may raise anything: RequestError gives its own message, any other exception
    ``"<model>: cannot read this request (Type: message)"``, both ``INVALID_ARG``. Then ``run``
    on every readable request at once; if that call raises, each request is run alone and only
    those that still fail get an error (``INVALID_ARG`` for a RequestError, else ``INTERNAL``
    with one line)."""
    answers: list[dict[str, np.ndarray] | Failure | None] = [None] * len(requests)
    good: list[int] = []
    inputs: list[Any] = []
    for i, request in enumerate(requests):
        try:
            inputs.append(read(request))
            good.append(i)
        except RequestError as e:
            answers[i] = ("INVALID_ARG", one_line_message(e))
        except Exception as e:  # noqa: BLE001 - whatever a request's content raises is its own 400
            answers[i] = ("INVALID_ARG", f"{model}: cannot read this request ({one_line(e)})")
    if good:
        for i, out in zip(good, _run_isolated(run, inputs, model)):
            answers[i] = out
    return answers  # type: ignore[return-value]


def _run_isolated(
    run: Callable[[list[Any]], list[dict[str, np.ndarray]]], inputs: list[Any], model: str
) -> list[dict[str, np.ndarray] | Failure]:
    try:
        outputs = run(inputs)
        if len(outputs) != len(inputs):
            raise RuntimeError(f"{len(outputs)} outputs for {len(inputs)} requests")
        return list(outputs)
    except Exception as e:  # noqa: BLE001 - isolate: retry each request alone below
        if len(inputs) == 1:
            return [_run_failure(model, e)]
    results: list[dict[str, np.ndarray] | Failure] = []
    for item in inputs:
        try:
            results.append(run([item])[0])
        except Exception as e:  # noqa: BLE001 - this request alone fails
            results.append(_run_failure(model, e))
    return results


def _run_failure(model: str, error: Exception) -> Failure:
    if isinstance(error, RequestError):
        return ("INVALID_ARG", one_line_message(error))
    return ("INTERNAL", f"{model}: cannot run this request ({one_line(error)})")


def one_line_message(error: BaseException, limit: int = 300) -> str:
    """A RequestError's own message, on one line, bounded."""
    text = " ".join(str(error).split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


def respond_each(
    requests: Sequence[Any],
    read: Callable[[Any], Any],
    run: Callable[[list[Any]], list[dict[str, np.ndarray]]],
    model: str = "model",
) -> list[Any]:
    """Answer ``requests`` in order (see `answer_each`): one Triton response per request, its
    outputs or its own error; never raises for a request's sake."""
    pb = pb_utils()
    responses = []
    for answer in answer_each(requests, read, run, model):
        if isinstance(answer, tuple):
            responses.append(error_response(answer[1], answer[0]))
        else:
            tensors = [pb.Tensor(name, value) for name, value in answer.items()]
            responses.append(pb.InferenceResponse(output_tensors=tensors))
    return responses


def error_response(message: str, code: str = "INVALID_ARG") -> Any:
    pb = pb_utils()
    error = pb.TritonError(message, getattr(pb.TritonError, code))
    return pb.InferenceResponse(output_tensors=[], error=error)


def input_array(request: Any, name: str) -> np.ndarray | None:
    """The input ``name`` of a request as numpy, or None when the (optional) input is absent."""
    tensor = pb_utils().get_input_tensor_by_name(request, name)
    return None if tensor is None else tensor.as_numpy()
