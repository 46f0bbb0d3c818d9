"""ONNX graphs whose weights live beside them as *external data* (``model.onnx`` +
``model.onnx.data``): protobuf cannot hold one message over 2 GiB, and a Qwen3-0.6B-shape
reasoner is 2.4 GB in fp32.

Every export step handles such a graph *by path*: checked (`onnx.checker.check_model(path)`),
fused, converted and quantised from its file and written with its weights beside it, never
serialised as one protobuf in memory. The rules, in one place:

- `is_external(path)`: does the graph keep any tensor outside its file;
- `external_files(path)`: the files it references (relative to its folder), so that the export
  folder carries every one of them and the manifest hashes them;
- `wants_external(bytes, threshold)`: whether a graph of that many weight bytes is written with
  external data (``threshold`` is `ExportOptions.external_data_threshold`, default `PROTO_LIMIT`;
  tests set it low to push a tiny model through the same path);
- `save_model(model, path, external)`: ``onnx.save`` with all weights in ``<file>.data``;
- `place(src, dst)`: a graph and its data files into their final folder, the data renamed to
  ``<dst name>.data``. Copied, never hard-linked: onnx's checker refuses a data file with more
  than one link ("potential hardlink attack"), and one graph may ship twice (the fp32 ranker is
  also the int4 deployment's).
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from pathlib import Path

import onnx
from onnx.external_data_helper import uses_external_data

# protobuf's 2 GiB, less headroom for the graph's own nodes and names
PROTO_LIMIT = 2 * 1024**3 - 64 * 1024**2


def _tensors(graph: onnx.GraphProto) -> Iterator[onnx.TensorProto]:
    """Every tensor of ``graph``: initializers and node attributes, subgraphs included."""
    yield from graph.initializer
    for node in graph.node:
        for attr in node.attribute:
            if attr.HasField("t"):
                yield attr.t
            yield from attr.tensors
            if attr.HasField("g"):
                yield from _tensors(attr.g)
            for g in attr.graphs:
                yield from _tensors(g)


def _location(t: onnx.TensorProto) -> str:
    return next(e.value for e in t.external_data if e.key == "location")


def load_graph(path: str | os.PathLike) -> onnx.ModelProto:
    """The graph alone (external tensors left as references): small whatever the weights."""
    return onnx.load(os.fspath(path), load_external_data=False)


def external_files(path: str | os.PathLike) -> list[Path]:
    """The data files ``path``'s graph references, as paths beside it (sorted, unique)."""
    model = load_graph(path)
    names = sorted({_location(t) for t in _tensors(model.graph) if uses_external_data(t)})
    return [Path(path).parent / n for n in names]


def is_external(path: str | os.PathLike) -> bool:
    return bool(external_files(path))


def wants_external(weight_bytes: int, threshold: int) -> bool:
    return weight_bytes > threshold


def data_name(path: str | os.PathLike) -> str:
    """The one weight file of a graph written here: ``model.onnx`` -> ``model.onnx.data``."""
    return Path(path).name + ".data"


def save_model(model: onnx.ModelProto, path: str | os.PathLike, external: bool) -> Path:
    """``onnx.save`` ``model`` to ``path``; with ``external``, every tensor over 1 KB goes to
    ``<path>.data`` (written fresh: onnx appends to an existing file)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    data = path.parent / data_name(path)
    if data.exists():
        data.unlink()
    if external:
        onnx.save_model(model, os.fspath(path), save_as_external_data=True, all_tensors_to_one_file=True,
                        location=data.name, size_threshold=1024)
    else:
        onnx.save_model(model, os.fspath(path))
    return path


def graph_bytes(path: str | os.PathLike) -> int:
    """The graph file plus every data file it references."""
    return Path(path).stat().st_size + sum(f.stat().st_size for f in external_files(path))


def place(src: str | os.PathLike, dst: str | os.PathLike) -> list[Path]:
    """Put graph ``src`` at ``dst`` with its data: returns every file written (``dst`` first).

    A self-contained graph is copied. A graph with external data gets its one or several data
    files as ``<dst name>.data`` (several: ``.data``, ``.1.data``, ...); the graph's references are
    rewritten to those names, so the pair loads from its new folder and nothing points back at
    the work folder.
    """
    src, dst = Path(src), Path(dst)
    dst.parent.mkdir(parents=True, exist_ok=True)
    files = external_files(src)
    if not files:
        shutil.copyfile(src, dst)
        return [dst]
    model = load_graph(src)
    renamed = {f.name: (data_name(dst) if i == 0 else f"{dst.name}.{i}.data") for i, f in enumerate(files)}
    for t in _tensors(model.graph):
        if uses_external_data(t):
            for e in t.external_data:
                if e.key == "location":
                    e.value = renamed[e.value]
    out = [dst]
    for f in files:
        target = dst.parent / renamed[f.name]
        shutil.copyfile(f, target)
        out.append(target)
    onnx.save_model(model, os.fspath(dst))  # the graph alone: its tensors stay references
    return out
