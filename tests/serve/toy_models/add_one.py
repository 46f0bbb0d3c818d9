"""Toy python-backend model for the server tests: OUTPUT0 = INPUT0 + 1 (FP32, batched).

A request holding a negative value gets an INVALID_ARG error for that request only (HTTP 400,
gRPC INVALID_ARGUMENT); other requests batched with it still succeed. The tests copy this file to
``<repo>/add_one/1/model.py``.
"""

import numpy as np
import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    def initialize(self, args):
        pass

    def execute(self, requests):
        responses = []
        for request in requests:
            x = pb_utils.get_input_tensor_by_name(request, "INPUT0").as_numpy()
            if (x < 0).any():
                error = pb_utils.TritonError(
                    f"add_one: INPUT0 must be >= 0, got {float(x.min())}",
                    pb_utils.TritonError.INVALID_ARG,
                )
                responses.append(pb_utils.InferenceResponse(output_tensors=[], error=error))
                continue
            out = pb_utils.Tensor("OUTPUT0", (x + 1).astype(np.float32))
            responses.append(pb_utils.InferenceResponse(output_tensors=[out]))
        return responses
