"""The layering ARCHITECTURE.md draws, enforced: every ``import`` in ``rgalign/`` (module level,
inside functions and under TYPE_CHECKING alike) is parsed with `ast`, and

- each layer imports only the layers its row in `ALLOWED` names (and itself);
- no module imports itself back through others (no import circle, function-level ones included);
- `rgalign.inference` runs without torch (checked in a fresh interpreter);
- no source file is much past 400 lines (the house style's "one file per idea").
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

import rgalign

PACKAGE = Path(rgalign.__file__).parent

# module prefix -> layer; the longest matching prefix wins
LAYER_OF = {
    "rgalign": "core",  # __init__: the version
    "rgalign.errors": "core",
    "rgalign.io": "core",
    "rgalign.config": "core",
    "rgalign.progress": "core",
    "rgalign.artifacts": "artifacts",
    "rgalign.data": "data",
    "rgalign.metrics": "metrics",
    "rgalign.models": "models",
    "rgalign.inference": "inference",
    "rgalign.training": "training",
    "rgalign.export": "export",
    "rgalign.serve": "serve",
    "rgalign.bench": "bench",
    "rgalign.quickstart": "app",
    "rgalign.cli": "app",
    "rgalign.__main__": "app",
}

# layer -> the layers it may import (besides itself): ARCHITECTURE.md's table
ALLOWED = {
    "core": set(),
    "artifacts": {"core"},
    "data": {"core"},
    "metrics": {"core"},
    "models": {"core", "data"},
    "inference": {"core", "artifacts", "data", "models"},
    "training": {"core", "artifacts", "data", "metrics", "models"},
    "export": {"core", "artifacts", "data", "metrics", "models", "inference"},
    "serve": {"core", "artifacts", "data", "models", "inference"},
    "bench": {"core", "artifacts", "data", "metrics", "models", "inference", "export", "serve"},
    "app": {"core", "artifacts", "data", "metrics", "models", "inference", "training", "export", "serve", "bench"},
}

MAX_LINES = 460  # "none much past 400 lines"
# Over the limit, left whole on purpose while issue 12 (real data) rewrites them in parallel:
# splitting them here would turn that merge into a rewrite. Split them there; then empty this.
NOT_YET_SPLIT = {"rgalign.data.synth"}


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _modules() -> dict[str, Path]:
    return {_module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def _imports(name: str, path: Path, known: set[str]) -> set[str]:
    """The rgalign modules ``name`` imports (``from pkg import sub`` counts as ``pkg.sub``)."""
    is_pkg = path.name == "__init__.py"
    out: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            out.update(a.name for a in node.names if a.name.split(".")[0] == "rgalign")
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = name.split(".") if is_pkg else name.split(".")[:-1]
                base = base[: len(base) - (node.level - 1)]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            if target.split(".")[0] != "rgalign":
                continue
            subs = {f"{target}.{a.name}" for a in node.names if f"{target}.{a.name}" in known}
            out.update(subs or {target})
    return {m for m in out if m != name}


def _graph() -> dict[str, set[str]]:
    mods = _modules()
    known = set(mods)
    return {name: _imports(name, path, known) for name, path in mods.items()}


def _layer(module: str) -> str:
    best = max((p for p in LAYER_OF if module == p or module.startswith(p + ".")), key=len, default=None)
    if best is None:
        raise AssertionError(f"{module} belongs to no layer: add it to ARCHITECTURE.md and LAYER_OF")
    return LAYER_OF[best]


def test_every_module_has_a_layer():
    for name in _modules():
        _layer(name)


def test_layers_import_only_the_layers_below():
    bad = []
    for name, deps in sorted(_graph().items()):
        mine = _layer(name)
        for dep in sorted(deps):
            theirs = _layer(dep)
            if theirs != mine and theirs not in ALLOWED[mine]:
                bad.append(f"{name} ({mine}) imports {dep} ({theirs})")
    assert not bad, "imports against ARCHITECTURE.md's layers:\n" + "\n".join(bad)


def test_no_import_circle():
    graph = _graph()
    # a package's __init__ re-exporting its own submodules is not a circle: skip parent -> child
    edges = {m: {d for d in deps if not d.startswith(m + ".")} for m, deps in graph.items()}
    state: dict[str, int] = {}  # 1: on the stack, 2: done
    cycles: list[list[str]] = []

    def visit(node: str, stack: list[str]) -> None:
        state[node] = 1
        stack.append(node)
        for dep in sorted(edges.get(node, ())):
            if state.get(dep) == 1:
                cycles.append(stack[stack.index(dep):] + [dep])
            elif dep not in state:
                visit(dep, stack)
        stack.pop()
        state[node] = 2

    for node in sorted(edges):
        if node not in state:
            visit(node, [])
    assert not cycles, "import circles:\n" + "\n".join(" -> ".join(c) for c in cycles)


def test_no_source_file_much_past_400_lines():
    long = {name: n for name, p in _modules().items()
            if (n := len(p.read_text().splitlines())) > MAX_LINES and name not in NOT_YET_SPLIT}
    assert not long, f"split these by idea: {long}"


@pytest.mark.parametrize("module", ["rgalign.inference", "rgalign.serve.client", "rgalign.serve.models.preprocess"])
def test_inference_runs_without_torch(module):
    code = (
        f"import sys, {module}\n"
        "heavy = sorted(m for m in ('torch', 'rgalign.training', 'rgalign.export') if m in sys.modules)\n"
        "print(','.join(heavy))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True)
    assert out.stdout.strip() == "", f"importing {module} imported {out.stdout.strip()}"
