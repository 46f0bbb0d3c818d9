"""Triton model configurations, built as protobuf messages and written with ``text_format``.

Every ``config.pbtxt`` rgalign writes comes from a ``model_config_pb2.ModelConfig`` built here,
never from a template or an f-string: protobuf checks field names and types when the message is
built, and ``text_format`` escapes strings. Tests read the files back with ``text_format.Parse``.

A model repository looks like this (Triton's layout; ``1/`` is the only version we ship)::

    REPO/
      preprocess/config.pbtxt   preprocess/1/model.py
      ranker/config.pbtxt       ranker/1/model.onnx
      rgalign/config.pbtxt      rgalign/1/              (ensemble: an empty version folder)

Example::

    from rgalign.serve.repository import config as tc

    cfg = tc.python_model(
        "add_one",
        inputs=[tc.TensorSpec("INPUT0", "FP32", (-1,))],
        outputs=[tc.TensorSpec("OUTPUT0", "FP32", (-1,))],
        max_batch_size=8,
        dynamic_batching=tc.dynamic_batching(preferred_batch_sizes=(4, 8)),
    )
    tc.write_config(repo / "add_one", cfg)
    tc.version_dir(repo / "add_one")  # repo/add_one/1/

``dims`` never include the batch dimension when ``max_batch_size > 0`` (Triton adds it); ``-1``
marks a variable dimension.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, TypedDict

from google.protobuf import text_format

from rgalign.errors import ConfigError, ServeError
from rgalign.io import write_text_atomic

if TYPE_CHECKING:
    from typing_extensions import Unpack

try:
    # model_config_pb2 ships with tritonclient's grpc extra (the `serve` extra of rgalign).
    from tritonclient.grpc import model_config_pb2 as mc
except ImportError as e:  # pragma: no cover - depends on the installed extras
    raise ServeError(
        f"cannot import tritonclient.grpc.model_config_pb2 ({e}); run `pip install -e .[serve]`"
    ) from e

ModelConfig = mc.ModelConfig

CONFIG_FILENAME = "config.pbtxt"

# Triton's data type names (as in tritonclient / perf_analyzer) -> the config enum.
# "BYTES" is what clients call Triton's TYPE_STRING (variable-length byte strings).
_DTYPES: dict[str, int] = {
    "BOOL": mc.TYPE_BOOL,
    "UINT8": mc.TYPE_UINT8,
    "UINT16": mc.TYPE_UINT16,
    "UINT32": mc.TYPE_UINT32,
    "UINT64": mc.TYPE_UINT64,
    "INT8": mc.TYPE_INT8,
    "INT16": mc.TYPE_INT16,
    "INT32": mc.TYPE_INT32,
    "INT64": mc.TYPE_INT64,
    "FP16": mc.TYPE_FP16,
    "FP32": mc.TYPE_FP32,
    "FP64": mc.TYPE_FP64,
    "BF16": mc.TYPE_BF16,
    "BYTES": mc.TYPE_STRING,
    "STRING": mc.TYPE_STRING,
}
# numpy spellings, so an export spec can hand over `str(array.dtype)` directly.
_NUMPY_DTYPES = {
    "bool": "BOOL", "uint8": "UINT8", "uint16": "UINT16", "uint32": "UINT32", "uint64": "UINT64",
    "int8": "INT8", "int16": "INT16", "int32": "INT32", "int64": "INT64", "float16": "FP16",
    "float32": "FP32", "float64": "FP64", "bfloat16": "BF16", "object": "BYTES", "bytes": "BYTES",
}  # fmt: skip

_KINDS = {
    "cpu": mc.ModelInstanceGroup.KIND_CPU,
    "gpu": mc.ModelInstanceGroup.KIND_GPU,
    "auto": mc.ModelInstanceGroup.KIND_AUTO,
}


def data_type(dtype: str) -> int:
    """``"FP32"``, ``"TYPE_FP32"``, ``"float32"`` or ``"BYTES"`` -> ``model_config_pb2.TYPE_*``."""
    key = str(dtype).strip()
    if key.upper().startswith("TYPE_"):
        key = key[5:]
    key = _NUMPY_DTYPES.get(key.lower(), key.upper())
    if key not in _DTYPES:
        raise ConfigError(
            f"unknown tensor data type {dtype!r}; use one of {', '.join(sorted(_DTYPES))}"
        )
    return _DTYPES[key]


@dataclass(frozen=True)
class TensorSpec:
    """One input or output tensor: ``dims`` exclude the batch dimension; ``-1`` is variable.

    ``optional`` applies to inputs only: a request may omit the tensor (a python model then reads
    it as ``None``).
    """

    name: str
    dtype: str
    dims: tuple[int, ...]
    optional: bool = False

    def __post_init__(self) -> None:
        if not self.name:
            raise ConfigError("a tensor needs a name")
        data_type(self.dtype)  # validates
        dims = tuple(int(d) for d in self.dims)
        if any(d < -1 or d == 0 for d in dims):
            raise ConfigError(f"tensor {self.name!r}: dims {dims} must be positive or -1")
        object.__setattr__(self, "dims", dims)


def model_input(spec: TensorSpec) -> mc.ModelInput:
    return mc.ModelInput(
        name=spec.name, data_type=data_type(spec.dtype), dims=list(spec.dims),
        optional=spec.optional,
    )  # fmt: skip


def model_output(spec: TensorSpec) -> mc.ModelOutput:
    if spec.optional:
        raise ConfigError(f"output {spec.name!r}: only inputs can be optional")
    return mc.ModelOutput(name=spec.name, data_type=data_type(spec.dtype), dims=list(spec.dims))


def dynamic_batching(
    preferred_batch_sizes: Sequence[int] = (),
    max_queue_delay_microseconds: int = 0,
    preserve_ordering: bool = False,
) -> mc.ModelDynamicBatching:
    """Triton's dynamic batcher. The default delay, 0, sends a lone request on at once; a busy
    instance still batches whatever queued meanwhile (see `DeployOptions` for the measurement).
    Raise it where requests arrive too sparsely to overlap a model call."""
    if max_queue_delay_microseconds < 0:
        raise ConfigError("max_queue_delay_microseconds must be >= 0")
    return mc.ModelDynamicBatching(
        preferred_batch_size=[int(b) for b in preferred_batch_sizes],
        max_queue_delay_microseconds=int(max_queue_delay_microseconds),
        preserve_ordering=preserve_ordering,
    )


def instance_group(
    count: int = 1, kind: str = "cpu", gpus: Sequence[int] = ()
) -> mc.ModelInstanceGroup:
    """``count`` instances of the model on the CPU (``kind="cpu"``) or on each GPU in ``gpus``
    (``kind="gpu"``; empty ``gpus`` means every visible GPU)."""
    if count < 1:
        raise ConfigError(f"instance count must be >= 1, got {count}")
    if kind.lower() not in _KINDS:
        raise ConfigError(f"unknown instance kind {kind!r}; use one of {', '.join(_KINDS)}")
    if gpus and kind.lower() != "gpu":
        raise ConfigError("gpus can only be given with kind='gpu'")
    return mc.ModelInstanceGroup(count=count, kind=_KINDS[kind.lower()], gpus=list(gpus))


@dataclass(frozen=True)
class WarmupInput:
    """The data one warm-up request sends for one input: ``"zero"``, ``"random"`` or a file name
    (raw bytes, looked up in the model's ``warmup/`` folder, as Triton does)."""

    dtype: str
    dims: tuple[int, ...]
    data: str = "zero"

    def to_proto(self) -> mc.ModelWarmup.Input:
        message = mc.ModelWarmup.Input(data_type=data_type(self.dtype), dims=list(self.dims))
        if any(int(d) < 1 for d in self.dims):
            raise ConfigError(f"warm-up dims {tuple(self.dims)} must be concrete (>= 1)")
        if self.data == "zero":
            message.zero_data = True
        elif self.data == "random":
            message.random_data = True
        elif self.data:
            message.input_data_file = self.data
        else:
            raise ConfigError("warm-up data must be 'zero', 'random' or a file name")
        return message


def model_warmup(
    name: str, inputs: Mapping[str, WarmupInput], batch_size: int = 1, count: int = 1
) -> mc.ModelWarmup:
    """One warm-up sample Triton runs ``count`` times before the model is marked ready."""
    if batch_size < 1 or count < 1:
        raise ConfigError("warm-up batch_size and count must be >= 1")
    warmup = mc.ModelWarmup(name=name, batch_size=batch_size, count=count)
    for input_name, spec in inputs.items():
        warmup.inputs[input_name].CopyFrom(spec.to_proto())
    return warmup


@dataclass(frozen=True)
class TensorRTAccelerator:
    """ONNX Runtime's TensorRT execution provider inside Triton's onnxruntime backend.

    Only works where the backend was built with TensorRT (NGC containers, GPU): see SPEC §6.
    ``extra`` takes any other key of the backend's README (``trt_engine_cache_path``, ...).
    """

    precision_mode: str = "FP16"
    # 1 GiB: the backend's own default, stated so the config says what it does.
    max_workspace_size_bytes: int = 1 << 30
    engine_cache: bool = True
    extra: Mapping[str, str] = field(default_factory=dict)

    def to_proto(self) -> mc.ModelOptimizationPolicy.ExecutionAccelerators.Accelerator:
        if self.precision_mode not in ("FP32", "FP16", "INT8"):
            raise ConfigError(
                f"TensorRT precision_mode {self.precision_mode!r}: use FP32, FP16 or INT8"
            )
        accelerator = mc.ModelOptimizationPolicy.ExecutionAccelerators.Accelerator(name="tensorrt")
        accelerator.parameters["precision_mode"] = self.precision_mode
        accelerator.parameters["max_workspace_size_bytes"] = str(int(self.max_workspace_size_bytes))
        accelerator.parameters["trt_engine_cache_enable"] = "1" if self.engine_cache else "0"
        for key, value in self.extra.items():
            accelerator.parameters[key] = str(value)
        return accelerator


@dataclass(frozen=True)
class EnsembleStep:
    """One step of an ensemble: ``input_map`` maps the step model's input names to ensemble
    tensor names; ``output_map`` maps its output names to ensemble tensor names. ``-1`` is the
    latest version."""

    model_name: str
    input_map: Mapping[str, str]
    output_map: Mapping[str, str]
    model_version: int = -1

    def to_proto(self) -> mc.ModelEnsembling.Step:
        step = mc.ModelEnsembling.Step(model_name=self.model_name, model_version=self.model_version)
        for key, value in self.input_map.items():
            step.input_map[key] = value
        for key, value in self.output_map.items():
            step.output_map[key] = value
        return step


class ModelOptions(TypedDict, total=False):
    """What every model's config may set besides its name and tensors: the keyword arguments of
    `python_model`, `onnxruntime_model` and `tensorrt_model` (defaults: `_base`'s). ``parameters``
    reach a python model as ``json.loads(args["model_config"])["parameters"]``."""

    max_batch_size: int
    dynamic_batching: mc.ModelDynamicBatching | None
    instance_groups: Sequence[mc.ModelInstanceGroup]
    warmup: Sequence[mc.ModelWarmup]
    parameters: Mapping[str, str]


def _base(
    name: str,
    inputs: Sequence[TensorSpec],
    outputs: Sequence[TensorSpec],
    *,
    max_batch_size: int = 0,
    dynamic_batching: mc.ModelDynamicBatching | None = None,
    instance_groups: Sequence[mc.ModelInstanceGroup] = (),
    warmup: Sequence[mc.ModelWarmup] = (),
    parameters: Mapping[str, str] = {},  # noqa: B006 - read only
) -> mc.ModelConfig:
    if not name or "/" in name:
        raise ConfigError(f"invalid model name {name!r}")
    if max_batch_size < 0:
        raise ConfigError(f"max_batch_size must be >= 0, got {max_batch_size}")
    if not inputs or not outputs:
        raise ConfigError(f"model {name!r} needs at least one input and one output")
    config = mc.ModelConfig(name=name, max_batch_size=max_batch_size)
    config.input.extend(model_input(t) for t in inputs)
    config.output.extend(model_output(t) for t in outputs)
    if dynamic_batching is not None:
        config.dynamic_batching.CopyFrom(dynamic_batching)
    config.instance_group.extend(instance_groups)
    config.model_warmup.extend(warmup)
    for key, value in parameters.items():
        config.parameters[key].string_value = str(value)
    validate(config)
    return config


def python_model(
    name: str, inputs: Sequence[TensorSpec], outputs: Sequence[TensorSpec], **options: Unpack[ModelOptions]
) -> mc.ModelConfig:
    """A python-backend model (``1/model.py`` defines ``TritonPythonModel``)."""
    config = _base(name, inputs, outputs, **options)
    config.backend = "python"
    return config


def onnxruntime_model(
    name: str,
    inputs: Sequence[TensorSpec],
    outputs: Sequence[TensorSpec],
    *,
    tensorrt: TensorRTAccelerator | None = None,
    default_model_filename: str = "model.onnx",
    **options: Unpack[ModelOptions],
) -> mc.ModelConfig:
    """A model for Triton's own ONNX Runtime backend (``1/model.onnx``), optionally with the
    TensorRT execution provider as a GPU accelerator."""
    config = _base(name, inputs, outputs, **options)
    config.backend = "onnxruntime"
    config.default_model_filename = default_model_filename
    if tensorrt is not None:
        accelerators = config.optimization.execution_accelerators
        accelerators.gpu_execution_accelerator.append(tensorrt.to_proto())
    return config


def tensorrt_model(
    name: str,
    inputs: Sequence[TensorSpec],
    outputs: Sequence[TensorSpec],
    *,
    default_model_filename: str = "model.plan",
    **options: Unpack[ModelOptions],
) -> mc.ModelConfig:
    """A serialized TensorRT engine (``1/model.plan``); it needs a GPU instance group (one is
    added when ``instance_groups`` names none)."""
    groups = options.pop("instance_groups", ()) or (instance_group(kind="gpu"),)
    config = _base(name, inputs, outputs, instance_groups=groups, **options)
    config.platform = "tensorrt_plan"
    config.default_model_filename = default_model_filename
    return config


def ensemble_model(
    name: str,
    inputs: Sequence[TensorSpec],
    outputs: Sequence[TensorSpec],
    steps: Sequence[EnsembleStep],
    *,
    max_batch_size: int = 0,
) -> mc.ModelConfig:
    """An ensemble chaining ``steps``. It takes no dynamic batching, instance groups or warm-up:
    ``dynamic_batching`` and ``ensemble_scheduling`` are one protobuf oneof (the server refuses
    the model otherwise), so batch on the step models instead."""
    if not steps:
        raise ConfigError(f"ensemble {name!r} needs at least one step")
    config = _base(name, inputs, outputs, max_batch_size=max_batch_size)
    config.platform = "ensemble"
    config.ensemble_scheduling.step.extend(step.to_proto() for step in steps)
    validate(config)
    return config


def validate(config: mc.ModelConfig) -> None:
    """Catch, before the server does, mistakes its log reports obscurely; raises ConfigError."""
    name = config.name or "<unnamed>"
    scheduling = config.WhichOneof("scheduling_choice")
    if config.platform == "ensemble":
        if scheduling != "ensemble_scheduling":
            raise ConfigError(
                f"ensemble {name!r} has {scheduling or 'no'} scheduling instead of "
                "ensemble_scheduling: setting dynamic_batching on an ensemble replaces its steps "
                "(a protobuf oneof); batch on the step models"
            )
        if config.instance_group or config.model_warmup:
            raise ConfigError(f"ensemble {name!r} cannot have instance groups or warm-up")
        produced = {t.name for t in config.input}
        for step in config.ensemble_scheduling.step:
            missing = [v for v in step.input_map.values() if v not in produced]
            if missing:
                raise ConfigError(
                    f"ensemble {name!r}: step {step.model_name!r} reads {missing}, which no "
                    "ensemble input or earlier step produces"
                )
            produced.update(step.output_map.values())
        unproduced = [t.name for t in config.output if t.name not in produced]
        if unproduced:
            raise ConfigError(f"ensemble {name!r}: no step produces outputs {unproduced}")
    if scheduling == "dynamic_batching":
        if config.max_batch_size == 0:
            raise ConfigError(f"model {name!r}: dynamic batching needs max_batch_size > 0")
        too_big = [
            b
            for b in config.dynamic_batching.preferred_batch_size
            if not 0 < b <= config.max_batch_size
        ]
        if too_big:
            raise ConfigError(
                f"model {name!r}: preferred batch sizes {too_big} are not in "
                f"1..max_batch_size={config.max_batch_size}"
            )
    for warmup in config.model_warmup:
        if warmup.batch_size > max(1, config.max_batch_size):
            raise ConfigError(
                f"model {name!r}: warm-up {warmup.name!r} batch_size {warmup.batch_size} exceeds "
                f"max_batch_size {config.max_batch_size}"
            )
        unknown = set(warmup.inputs) - {t.name for t in config.input}
        if unknown:
            raise ConfigError(
                f"model {name!r}: warm-up {warmup.name!r} feeds unknown inputs {sorted(unknown)}"
            )


def to_text(config: mc.ModelConfig) -> str:
    """The ``config.pbtxt`` text of ``config``."""
    return text_format.MessageToString(config)


def read_config(path: str | os.PathLike[str]) -> mc.ModelConfig:
    """Parse a ``config.pbtxt`` (or a model folder holding one) back into a ModelConfig."""
    path = Path(path)
    if path.is_dir():
        path = path / CONFIG_FILENAME
    try:
        return text_format.Parse(path.read_text(encoding="utf-8"), mc.ModelConfig())
    except (OSError, text_format.ParseError) as e:
        raise ConfigError(f"cannot read Triton model config {path}: {e}") from e


def write_config(model_dir: str | os.PathLike[str], config: mc.ModelConfig) -> Path:
    """Validate ``config`` and write ``model_dir/config.pbtxt`` atomically (temp file, then
    ``os.replace``); returns its path. The folder name must be the model's name (Triton's rule)."""
    model_dir = Path(model_dir)
    if config.name and config.name != model_dir.name:
        raise ConfigError(
            f"model {config.name!r} must live in a folder of the same name, not {model_dir}"
        )
    validate(config)
    return write_text_atomic(model_dir / CONFIG_FILENAME, to_text(config))


def version_dir(model_dir: str | os.PathLike[str], version: int = 1) -> Path:
    """Create and return ``model_dir/<version>/`` (Triton loads the versions it finds there)."""
    if version < 1:
        raise ConfigError(f"model versions start at 1, got {version}")
    path = Path(model_dir) / str(version)
    path.mkdir(parents=True, exist_ok=True)
    return path
