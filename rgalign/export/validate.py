"""Gates: `validate(artifact, reference, spec, precision, feeds) -> GateReport`, and the end-to-end
`validate_pipeline` that judges a precision's ranking quality on held-out requests.

A gate checks names, then shapes, then values, collects *every* failure, and never passes with a
warning: `raise_if_failed(reports)` raises `GateFailed` (an `ExportError`) listing each missed
figure. Thresholds (SPEC §5, `rgalign.export.specs.Tolerances`):

- fp32: max |ONNX - PyTorch| <= 1e-4 on every float output, on padded batches of several shapes;
  ``topk_idx`` must pick intents whose reference scores equal ``topk_scores`` (so two intents tied
  to 1e-7 may swap places, a different intent may not).
- fp16: cosine >= 0.999 (mean over rows; row-centred for the ranker's scores; for the reasoner's
  latent queries *batch-centred*: every latent minus the reference latents' mean over all the
  parity prompts, see `gated_cosine`).
- int8 (and int4): cosine >= 0.99 per artifact, *and* end to end (prompt -> int8 reasoner -> int8 ranker)
  on held-out requests: the latent queries' cosine centred on the held-out mean >= 0.99, top-10
  overlap with the fp32 (PyTorch) pipeline >= 0.9 and
  GAUC(fp32) - GAUC(int8) <= 0.002 over the shown intents.

The end-to-end figures are computed (and reported) for every precision; only int8 and int4 are
gated on them.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from rgalign.errors import ExportError
from rgalign.export.specs import ExportSpec, Tolerances
from rgalign.inference.runtime import Runner

# precisions judged end to end on held-out requests (top-10 overlap, GAUC drop): the quantised ones
GATED_END_TO_END = ("int8", "int4")


@dataclass(frozen=True)
class Figure:
    """One measured figure; a gate when ``op`` is ">=" or "<=" (``threshold`` set)."""

    name: str
    value: float
    op: str | None = None
    threshold: float | None = None
    note: str = ""

    @property
    def gated(self) -> bool:
        return self.op is not None

    @property
    def passed(self) -> bool:
        if not self.gated:
            return True
        if self.value is None or math.isnan(self.value):
            return False
        return self.value >= self.threshold if self.op == ">=" else self.value <= self.threshold

    def describe(self) -> str:
        if not self.gated:
            return f"{self.name} = {self.value:.6g}"
        need = f"needs {self.op} {self.threshold:g}"
        missed = "" if self.passed else ", MISSED"
        note = f" {self.note}" if self.note else ""
        return f"{self.name} = {self.value:.6g} ({need}{missed}){note}"

    def to_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = {"value": None if self.value is None or math.isnan(self.value) else float(self.value)}
        if self.gated:
            d.update(op=self.op, threshold=self.threshold, passed=self.passed)
        if self.note:
            d["note"] = self.note
        return d


@dataclass
class GateReport:
    """The figures of one artifact (``reasoner/int8``) or pipeline (``pipeline/int8``)."""

    artifact: str
    precision: str
    figures: list[Figure] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)  # names / shapes, before any value

    @property
    def passed(self) -> bool:
        return not self.problems and all(f.passed for f in self.figures)

    def failures(self) -> list[str]:
        return [f"{self.artifact}: {p}" for p in self.problems] + [
            f"{self.artifact}: {f.describe()}" for f in self.figures if not f.passed
        ]

    def figure(self, name: str) -> float:
        return next(f.value for f in self.figures if f.name == name)

    def to_dict(self) -> dict[str, Any]:
        return {
            "precision": self.precision,
            "passed": self.passed,
            "problems": list(self.problems),
            "figures": {f.name: f.to_dict() for f in self.figures},
        }


class GateFailed(ExportError):
    """An artifact missed its gate. ``reports`` holds every report of the failed check."""

    def __init__(self, message: str, reports: Sequence[GateReport] = ()) -> None:
        super().__init__(message)
        self.reports = list(reports)


def raise_if_failed(reports: Sequence[GateReport], what: str = "export") -> None:
    """Raise `GateFailed` listing every missed figure of ``reports`` (one line), if any."""
    failed = [msg for r in reports for msg in r.failures()]
    if failed:
        raise GateFailed(f"{what} failed its gate: " + "; ".join(failed), reports)


# ---- figures -----------------------------------------------------------------------------------


def row_cosine(a: np.ndarray, b: np.ndarray, centre: bool = False) -> np.ndarray:
    """Per-row cosine similarity of (R, D) arrays (float64); ``centre`` subtracts each row's
    mean first. A row of zeros against a row of zeros counts 1, against anything else 0."""
    a = np.asarray(a, dtype=np.float64)
    b = np.asarray(b, dtype=np.float64)
    if centre:
        a = a - a.mean(axis=-1, keepdims=True)
        b = b - b.mean(axis=-1, keepdims=True)
    na, nb = np.linalg.norm(a, axis=-1), np.linalg.norm(b, axis=-1)
    dot = (a * b).sum(axis=-1)
    both_zero = (na == 0) & (nb == 0)
    with np.errstate(invalid="ignore", divide="ignore"):
        cos = np.where(both_zero, 1.0, dot / np.maximum(na * nb, 1e-300))
    return cos


def batch_centred_cosine(got: np.ndarray, ref: np.ndarray) -> np.ndarray:
    """Per-row cosine of (R, D) ``got`` and ``ref`` after subtracting the reference rows' mean.

    Why: an untrained or lightly trained LM maps every prompt to nearly the same latent (cosine
    0.9999 between different prompts, measured at Qwen3-0.6B shape), so an uncentred cosine
    passes a precision that blurs every difference between prompts. Centred on the reference's
    mean, what is compared is exactly what tells prompts apart. The mean is the *reference's*
    (one origin for both), so an error shared by every prompt still counts.
    """
    g = np.asarray(got, dtype=np.float64)
    r = np.asarray(ref, dtype=np.float64)
    mu = r.mean(axis=0, keepdims=True)
    return row_cosine(g - mu, r - mu)


def gated_cosine(spec: ExportSpec, got: Sequence[np.ndarray], ref: Sequence[np.ndarray]) -> tuple[str, np.ndarray]:
    """(figure name, per-row cosine) of the gated output over batches ``got`` vs ``ref``: the
    reasoner's batch-centred over every batch at once, the ranker's row-centred."""
    out = spec.gated_output
    if spec.centre_batch:
        return f"cosine_centred({out})", batch_centred_cosine(np.concatenate(got), np.concatenate(ref))
    return f"cosine({out})", np.concatenate([row_cosine(g, r, spec.centre_gated) for g, r in zip(got, ref)])


def _max_abs(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.max(np.abs(a.astype(np.float64) - b))) if a.size else 0.0


def topk_overlap(a_idx: np.ndarray, b_idx: np.ndarray) -> np.ndarray:
    """Per-row |A ∩ B| / K of two (R, K) index arrays."""
    k = a_idx.shape[1]
    return np.array([len(set(x.tolist()) & set(y.tolist())) / k for x, y in zip(a_idx, b_idx)])


# ---- artifact gate -----------------------------------------------------------------------------


def _names(spec: ExportSpec, artifact: Runner) -> list[str]:
    problems = []
    for kind, want in (("inputs", spec.input_names), ("outputs", spec.output_names)):
        got = getattr(artifact, f"{kind[:-1]}_names", None)
        if got is not None and sorted(got) != sorted(want):  # by name: every runtime feeds by name
            problems.append(f"{kind} are {list(got)}, expected {list(want)}")
    return problems


def validate(
    artifact: Runner,
    reference: Runner,
    spec: ExportSpec,
    precision: str,
    feeds: Sequence[Mapping[str, np.ndarray]],
    name: str | None = None,
) -> GateReport:
    """Run ``artifact`` and ``reference`` on every batch of ``feeds`` and compare (SPEC §5).

    Checks, in order: input/output names, output shapes and dtypes per batch, then the values
    for ``precision``. Every problem is collected; the report is returned (raise with
    `raise_if_failed`).
    """
    tol = spec.tolerances
    report = GateReport(name or f"{spec.name}/{precision}", precision)
    report.problems += _names(spec, artifact)
    if report.problems:
        return report
    got_all: list[dict[str, np.ndarray]] = []
    ref_all: list[dict[str, np.ndarray]] = []
    for feed in feeds:
        try:
            got = artifact(feed)
        except Exception as e:  # noqa: BLE001 - a runtime failure is a gate failure with its reason
            shape = {k: tuple(v.shape) for k, v in feed.items()}
            first = str(e).splitlines()[0] if str(e) else ""
            report.problems.append(f"fails to run on {shape}: {type(e).__name__}: {first}")
            continue
        ref = reference(feed)
        for out in spec.outputs:
            g, r = got.get(out.name), ref[out.name]
            if g is None:
                report.problems.append(f"output {out.name!r} missing")
            elif g.shape != r.shape:
                report.problems.append(f"output {out.name!r} has shape {g.shape}, PyTorch {r.shape}")
            elif g.dtype != np.dtype(out.dtype):
                report.problems.append(f"output {out.name!r} is {g.dtype}, expected {out.dtype}")
        got_all.append(got)
        ref_all.append(ref)
    if report.problems:
        return report

    float_outs = [o.name for o in spec.outputs if o.dtype.startswith("float")]
    gated = spec.gated_output
    cos_name, cos = gated_cosine(spec, [g[gated] for g in got_all], [r[gated] for r in ref_all])
    max_abs = {
        o: max(_max_abs(g[o], r[o]) for g, r in zip(got_all, ref_all)) for o in float_outs
    }
    if precision == "fp32":
        for o in float_outs:
            report.figures.append(Figure(f"max_abs_diff({o})", max_abs[o], "<=", tol.fp32_max_abs))
    else:
        for o in float_outs:
            report.figures.append(Figure(f"max_abs_diff({o})", max_abs[o]))
    thr = tol.cosine(precision)
    report.figures.append(Figure(cos_name, float(cos.mean()), ">=" if thr else None, thr))
    report.figures.append(Figure(cos_name.replace("cosine", "cosine_min", 1), float(cos.min())))
    if spec.centre_batch:  # the uncentred figure beside it, ungated: it cannot fail on a blurred model
        plain = np.concatenate([row_cosine(g[gated], r[gated]) for g, r in zip(got_all, ref_all)])
        report.figures.append(Figure(f"cosine({gated})", float(plain.mean())))
    if "topk_idx" in spec.output_names:
        # the intents the artifact picked, scored by the reference: equal to the reference top-K
        # scores up to the tolerance, even where near-ties swap order
        picked = max(
            float(np.max(np.abs(np.take_along_axis(r["scores"], g["topk_idx"], axis=1) - r["topk_scores"])))
            for g, r in zip(got_all, ref_all)
        )
        overlap = np.concatenate([topk_overlap(g["topk_idx"], r["topk_idx"]) for g, r in zip(got_all, ref_all)])
        if precision == "fp32":
            report.figures.append(Figure("topk_idx_score_gap", picked, "<=", tol.fp32_max_abs))
        report.figures.append(Figure("topk_overlap", float(overlap.mean())))
    return report


# ---- end-to-end gate ---------------------------------------------------------------------------


def validate_pipeline(
    outputs: Mapping[str, np.ndarray],
    reference: Mapping[str, np.ndarray],
    eval_requests: Any,
    precision: str,
    tolerances: Tolerances | None = None,
    name: str | None = None,
) -> GateReport:
    """Compare a pipeline's outputs on held-out requests with the fp32 reference pipeline's.

    ``outputs`` / ``reference``: `Pipeline.forward` results (latent_query, scores, topk_idx) on
    ``eval_requests.records``. int8 is gated on top-K overlap and GAUC drop; other precisions get
    the same figures, ungated.
    """
    tol = tolerances or Tolerances()
    gate = precision in GATED_END_TO_END
    report = GateReport(name or f"pipeline/{precision}", precision)
    q_cos = row_cosine(outputs["latent_query"], reference["latent_query"])
    q_centred = batch_centred_cosine(outputs["latent_query"], reference["latent_query"])
    s_cos = row_cosine(outputs["scores"], reference["scores"], centre=True)
    overlap = topk_overlap(outputs["topk_idx"], reference["topk_idx"])
    g_ref = eval_requests.gauc(reference["scores"])
    g_art = eval_requests.gauc(outputs["scores"])
    k = outputs["topk_idx"].shape[1]
    report.figures += [
        Figure("requests", float(len(eval_requests))),
        Figure("cosine(latent_query)", float(q_cos.mean())),
        # the held-out prompts' latents centred on their own mean: the strictest test that a
        # quantised reasoner keeps what tells real prompts apart (gated like the artifact cosine)
        Figure("cosine_centred(latent_query)", float(q_centred.mean()), ">=" if gate else None,
               tol.cosine(precision) if gate else None),
        Figure("cosine(scores)", float(s_cos.mean())),
        Figure(f"top{k}_overlap", float(overlap.mean()), ">=" if gate else None,
               tol.int8_topk_overlap if gate else None),
        Figure("gauc_reference", g_ref),
        Figure("gauc", g_art),
        Figure(
            "gauc_drop", g_ref - g_art, "<=" if gate else None, tol.int8_gauc_drop if gate else None,
            note="(GAUC undefined: no user with both a click and a non-click)" if math.isnan(g_ref - g_art) else "",
        ),
    ]
    return report
