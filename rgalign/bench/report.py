"""``bench.json`` -> ``bench.md`` (tables) and ``bench.png`` (a chart), written atomically.

The Markdown holds every measured row; the chart shows three things at a glance: the reasoner
at the headline shape per engine against its FLOP floor, the pipeline's throughput over batch
size, and the served ensemble's throughput over concurrency.
"""

from __future__ import annotations

import io
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from rgalign.io import write_bytes_atomic, write_text_atomic


def _f(v: Any, digits: int = 3) -> str:
    if v is None:
        return "—"
    if isinstance(v, float):
        return f"{v:.{digits}f}" if abs(v) < 1000 else f"{v:,.0f}"
    return str(v)


def _table(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> list[str]:
    out = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    out += ["| " + " | ".join(_f(c) for c in row) + " |" for row in rows]
    return out + [""]


def markdown(result: Mapping[str, Any]) -> str:
    m = result["machine"]
    gpu = m["gpu"]
    lines = [
        "# rgalign bench",
        "",
        f"- command: `{result['command']}`",
        f"- when: {result['created']} ({'quick' if result['quick'] else 'full'} run, {result['seconds']:.0f} s)",
        f"- target: {result['target'].get('kind')} {result['target'].get('path') or ''}; requests: "
        f"{result['target'].get('records')}",
        f"- machine: {m['cpu']} ({', '.join(m['cpu_flags']) or 'no AVX2'}), {m['usable_cpus']} usable CPUs, "
        f"{m['memory_gib']} GiB, load average {m['load_average']}; "
        f"GPU: {gpu.get('name') if gpu.get('available') else gpu.get('reason')}",
        f"- threads per CPU engine: {m['threads']} (ratios take each engine's faster count); versions: "
        + ", ".join(f"{k} {v}" for k, v in m["versions"].items()),
        f"- budget per case: {result['budget']}",
        "",
    ]
    for note in result["target"].get("notes", []):
        lines.append(f"> {note}")
    load = m.get("load_average") or [0.0]
    if load[0] > (m.get("usable_cpus") or 1) * 0.5:
        lines.append(f"> the machine was busy (load average {load[0]} on {m.get('usable_cpus')} CPUs when the run "
                     "ended): figures are noisier and slower than on a quiet machine")
    lines.append("")

    lines += ["## SPEC §8 targets", ""]
    lines += _table(["target", "wanted", "measured", "met"],
                    [[t["what"], t["target"], t["measured"],
                      "—" if t["met"] is None else ("yes" if t["met"] else "**no**")] for t in result["targets"]])
    lines += ["## Ratios (same run)", ""]
    lines += _table(["ratio", "value", "how"],
                    [[k, v, result["ratio_notes"].get(k, "")] for k, v in result["ratios"].items()])

    rows = result["inprocess"]
    for model in ("reasoner", "ranker", "pipeline"):
        ok = [r for r in rows if r["model"] == model and r["status"] == "OK"]
        if not ok:
            continue
        lines += [f"## {model} (in-process, ms per call)", ""]
        extra = "tokens" if model == "reasoner" else ("prompt tokens" if model == "pipeline" else None)
        header = ["engine", "device", "threads", "batch"] + ([extra] if extra else []) + \
                 ["p50", "p95", "p99", "items/s", "calls", "first call"]
        body = []
        for r in sorted(ok, key=lambda r: (r["engine"], r["device"], -r["threads"], r.get("seq") or 0, r["batch"])):
            cells = [r["engine"], r["device"], r["threads"], r["batch"]]
            if extra:
                cells.append(r["seq"] if model == "reasoner" else r.get("prompt_tokens"))
            cells += [r["p50_ms"], r["p95_ms"], r["p99_ms"], r["throughput"], r["n"], r.get("first_call_ms")]
            body.append(cells)
        lines += _table(header, body)

    floor = result.get("flop_floor") or {}
    if floor:
        lines += ["## FLOP floor", "",
                  "Matmul peak measured in this run, per thread count; floor = weight matmuls at the precision's "
                  "peak + attention matmuls at the fp32 peak (matmul FLOPs only), at the thread count of the "
                  "measured row.", ""]
        gemms = []
        for th, peaks in (floor.get("peaks") or {}).items():
            best = peaks.get("peak_gflops", {})
            lines.append(f"- {th} thread(s): peak fp32 {_f(best.get('fp32'), 1)} GFLOP/s, "
                         f"int8 {_f(best.get('int8'), 1)} GOP/s")
            gemms += [[th, g["name"], "x".join(map(str, g["shape"])), g["impl"], g["precision"], g["p50_ms"],
                       g["gflops"]] for g in peaks.get("gemms", [])]
            for err in peaks.get("errors", []):
                lines.append(f"  - not measured: {err}")
        lines.append("")
        lines += _table(["threads", "GEMM", "M x K x N", "impl", "precision", "p50 ms", "GFLOP/s"], gemms)
        for model, info in (floor.get("models") or {}).items():
            if info.get("reason"):
                lines += [f"> {model}: {info['reason']}", ""]
                continue
            body = []
            for c in info.get("cases", []):
                for precision, fl in c["floor_ms"].items():
                    body.append([model, c["batch"], c.get("seq"), c["flops"]["total"] / 1e6, precision,
                                 c["threads"].get(precision), fl, c["measured_ms"].get(precision),
                                 c["fraction"].get(precision)])
            lines += _table(["model", "batch", "tokens", "MFLOP", "precision", "threads", "floor ms",
                             "measured p50 ms", "floor / measured"], body)

    served = result.get("served")
    if served:
        lines += [f"## Served: Triton model `{served.get('model')}` ({served.get('request')}), "
                  f"measured with {served.get('source', 'rgalign client')}", ""]
        body = []
        for protocol in ("http", "grpc"):
            p = served.get(protocol) or {}
            if p.get("status") != "OK":
                lines.append(f"> {protocol} {p.get('url')}: {p.get('status')}: {p.get('reason')}")
                continue
            for lv in p["levels"]:
                body.append([protocol, lv["concurrency"], lv.get("p50_ms"), lv.get("p95_ms"), lv.get("p99_ms"),
                             lv.get("throughput"), lv.get("n"), lv["status"] if lv["status"] == "OK" else
                             f"{lv['status']}: {lv.get('reason')}"])
        if body:
            lines += [""] + _table(["protocol", "concurrency", "p50", "p95", "p99", "req/s", "requests", "status"], body)
        pa = served.get("perf_analyzer") or {}
        if pa.get("status") in ("SKIPPED", "FAIL"):
            lines += [f"perf_analyzer: {pa['status']} ({pa.get('reason')}); the figures above are rgalign's client's", ""]
        split = [[protocol, lv["concurrency"], lv.get("server_queue_ms"), lv.get("server_compute_input_ms"),
                  lv.get("server_compute_infer_ms"), lv.get("server_compute_output_ms"),
                  ", ".join(f"{m} {c.get('queue_ms', 0):.2f}+{c.get('compute_infer_ms', 0):.2f}"
                            for m, c in sorted((lv.get("composing") or {}).items()))]
                 for protocol in ("http", "grpc") for lv in (served.get(protocol) or {}).get("levels", [])
                 if lv.get("status") == "OK" and "server_queue_ms" in lv]  # fmt: skip
        if split:
            lines += ["Server side (perf_analyzer, ms per request): queue and compute of the model asked; per "
                      "composing model of an ensemble, queue + compute infer.", ""]
            lines += _table(["protocol", "concurrency", "queue", "compute input", "compute infer",
                             "compute output", "composing"], split)
    else:
        lines += ["## Served", "", "Not measured: no `--url`.", ""]

    skipped = [r for r in rows if r["status"] != "OK"]
    if skipped:
        lines += ["## Not measured", ""]
        seen = set()
        body = []
        for r in skipped:
            key = (r["model"], r["engine"], r["device"], r["status"], r["reason"])
            if key in seen:
                continue
            seen.add(key)
            body.append([r["model"], r["engine"], r["device"], r["status"], r["reason"]])
        lines += _table(["model", "engine", "device", "status", "why"], body)
    return "\n".join(lines).rstrip() + "\n"


def chart(result: Mapping[str, Any]) -> bytes:
    """The PNG (matplotlib, Agg backend: no display needed)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = result["inprocess"]
    fig, axes = plt.subplots(1, 3, figsize=(16, 4.8))

    ax = axes[0]
    seq = result.get("headline", {}).get("seq")
    best: dict[tuple[str, str], dict] = {}  # the fastest thread count of each engine, as the ratios take
    for r in rows:
        if r["model"] == "reasoner" and r["status"] == "OK" and r["batch"] == 1 and r["seq"] == seq:
            key = (r["engine"], r["device"])
            if key not in best or r["p50_ms"] < best[key]["p50_ms"]:
                best[key] = r
    head = sorted(best.values(), key=lambda r: r["p50_ms"])
    if head:
        labels = [f"{r['engine']} ({r['device']}, {r['threads']}t)" for r in head]
        ax.barh(labels, [r["p50_ms"] for r in head], color="tab:blue")
        ax.errorbar([r["p50_ms"] for r in head], range(len(head)),
                    xerr=[[0] * len(head), [r["p99_ms"] - r["p50_ms"] for r in head]], fmt="none", ecolor="gray")
        case = _floor_case(result, 1, seq)
        if case and case["floor_ms"].get("int8"):
            ax.axvline(case["floor_ms"]["int8"], color="tab:red", ls="--", label="int8 FLOP floor")
            ax.legend(loc="lower right")
        ax.invert_yaxis()
    ax.set_title(f"reasoner, batch 1, {seq} tokens: p50 (bar) to p99")
    ax.set_xlabel("ms per call")

    ax = axes[1]
    engines = sorted({(r["engine"], r["device"], r["threads"]) for r in rows
                      if r["model"] == "pipeline" and r["status"] == "OK"})
    for eng, dev, th in engines:
        pts = sorted((r["batch"], r["throughput"]) for r in rows if r["model"] == "pipeline" and r["status"] == "OK"
                     and (r["engine"], r["device"], r["threads"]) == (eng, dev, th))
        ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", label=f"{eng} ({dev}, {th}t)")
    _log2_ticks(ax, sorted({r["batch"] for r in rows if r["model"] == "pipeline" and r["status"] == "OK"}))
    ax.set_title("whole pipeline in-process: throughput")
    ax.set_xlabel("batch size")
    ax.set_ylabel("requests / s")
    if engines:
        ax.legend(fontsize=8)

    ax = axes[2]
    served = result.get("served") or {}
    drawn = False
    for protocol in ("http", "grpc"):
        levels = [lv for lv in (served.get(protocol) or {}).get("levels", []) if lv.get("status") == "OK"]
        if levels:
            ax.plot([lv["concurrency"] for lv in levels], [lv["throughput"] for lv in levels], marker="o", label=protocol)
            drawn = True
    ax.set_title("Triton ensemble: throughput vs concurrency")
    ax.set_xlabel("concurrency")
    ax.set_ylabel("requests / s")
    if drawn:
        _log2_ticks(ax, sorted({lv["concurrency"] for p in ("http", "grpc")
                                for lv in (served.get(p) or {}).get("levels", []) if lv.get("status") == "OK"}))
        ax.legend()
    else:
        ax.text(0.5, 0.5, "not measured (no --url)", ha="center", va="center", transform=ax.transAxes)

    m = result["machine"]
    threads = m["threads"] if isinstance(m["threads"], list) else [m["threads"]]
    fig.suptitle(f"rgalign bench — {m['cpu']}, {m['usable_cpus']} CPUs, threads {', '.join(map(str, threads))}"
                 f"{' (quick)' if result['quick'] else ''}", fontsize=11)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110)
    plt.close(fig)
    return buf.getvalue()


def _log2_ticks(ax: Any, values: Sequence[int]) -> None:
    """A log-2 x axis labelled with the measured values themselves (1, 8, 32), not 2^k."""
    if not values:
        return
    ax.set_xscale("log", base=2)
    ax.set_xticks(list(values))
    ax.set_xticklabels([str(v) for v in values])
    ax.minorticks_off()


def _floor_case(result: Mapping[str, Any], batch: int, seq: int | None) -> dict | None:
    info = ((result.get("flop_floor") or {}).get("models") or {}).get("reasoner") or {}
    for c in info.get("cases", []):
        if c["batch"] == batch and c.get("seq") == seq:
            return c
    return None


def write_report(out_dir: str | os.PathLike, result: Mapping[str, Any]) -> dict[str, Path]:
    """DIR/bench.json, bench.md, bench.png; each written atomically."""
    from rgalign.io import write_json_atomic

    out = Path(out_dir)
    paths = {"json": out / "bench.json", "md": out / "bench.md", "png": out / "bench.png"}
    write_json_atomic(paths["json"], result)
    write_text_atomic(paths["md"], markdown(result))
    write_bytes_atomic(paths["png"], chart(result))
    return paths
