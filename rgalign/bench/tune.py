"""``rgalign tune``: the configuration sweep a Triton user expects, with perf_analyzer.

Over a grid of deployments (layout, instances per model, max batch, max queue delay) it deploys
the export, starts a server, measures each concurrency with perf_analyzer, and keeps:

    OUT/tune.json     every measurement (throughput, p50/p95/p99, server queue / compute, memory)
    OUT/best.json     the best configuration: the highest throughput whose p99 is within the
                      latency budget, whether it reaches the throughput goal, and the deploy
                      command that reproduces it
    OUT/best/         the best configuration's model configs (config.pbtxt per model)
    OUT/frontier.png  p99 latency vs throughput of every measurement, the Pareto frontier, the
                      budget and the goal

It is what triton-model-analyzer's "brute" search does in local launch mode, for the two
layouts of `rgalign deploy`; model-analyzer itself is not used (its dependency set, numba,
optuna, gevent, docker and tritonclient[all], is not the project's, and it expects a
``tritonserver`` it launches itself, where ours needs the environment of `rgalign.serve.server`).

Example::

    rgalign tune export --out tune --precision int8 --latency-budget-ms 10 --throughput-goal 300
"""

from __future__ import annotations

import itertools
import os
import shutil
import tempfile
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from rgalign.bench import perf_analyzer as pa
from rgalign.errors import ConfigError
from rgalign.io import write_json_atomic

Progress = Callable[[str], None]


@dataclass(frozen=True)
class Grid:
    """The configurations swept (their product). Defaults: both layouts; 1 or 2 instances (two
    cores: a second instance overlaps one request's Python with another's ONNX Runtime); max batch
    4 or 16; a queue delay of 0.1 ms (batch what arrived together) or 2 ms (wait for more)."""

    layouts: tuple[str, ...] = ("fused", "ensemble")
    instances: tuple[int, ...] = (1, 2)
    max_batch: tuple[int, ...] = (4, 16)
    queue_delay_us: tuple[int, ...] = (100, 2000)

    def points(self) -> list[dict[str, Any]]:
        keys = ("layout", "instances", "max_batch", "queue_delay_us")
        return [dict(zip(keys, values)) for values in itertools.product(
            self.layouts, self.instances, self.max_batch, self.queue_delay_us)]

    def to_dict(self) -> dict[str, Any]:
        return {k: list(v) for k, v in asdict(self).items()}


@dataclass(frozen=True)
class Goal:
    """What "best" means: p99 at most ``latency_budget_ms``; then the highest throughput, which
    meets the goal when it is at least ``throughput_goal`` (requests / s)."""

    latency_budget_ms: float = 20.0
    throughput_goal: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def name_of(point: Mapping[str, Any]) -> str:
    return f"{point['layout']}-i{point['instances']}-b{point['max_batch']}-d{point['queue_delay_us']}"


def process_memory_mb(pids: Sequence[int]) -> dict[str, float]:
    """Resident memory of ``pids`` together: ``rss_mb`` (the sum of RSS, counting shared pages
    once per process) and ``pss_mb`` (proportional set size: shared pages split, so the sum is
    what the processes really hold)."""
    rss = pss = 0
    for pid in pids:
        try:
            for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
                if line.startswith("Rss:"):
                    rss += int(line.split()[1])
                elif line.startswith("Pss:"):
                    pss += int(line.split()[1])
        except OSError:  # exited meanwhile
            continue
    return {"rss_mb": round(rss / 1024, 1), "pss_mb": round(pss / 1024, 1), "processes": len(pids)}


def server_pids(server: Any) -> list[int]:
    """A running `TritonServer`'s process and its python-backend stubs."""
    from rgalign.serve.server import find_processes

    return sorted(set(find_processes(server.pid, server.shm_prefix)) | {server.pid})


def server_memory_mb(server: Any) -> dict[str, float]:
    """`process_memory_mb` of a running `TritonServer` and its python-backend stubs."""
    return process_memory_mb(server_pids(server))


def process_cpu_seconds(pids: Sequence[int]) -> float:
    """User + system CPU seconds ``pids`` have used so far (``/proc/PID/stat``; an exited
    process counts 0): the difference over a measurement, divided by its wall time, is how many
    cores they kept busy."""
    ticks = 0
    for pid in pids:
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        ticks += int(fields[11]) + int(fields[12])  # utime, stime (fields 14 and 15 of stat)
    return ticks / os.sysconf("SC_CLK_TCK")


def pareto(points: Sequence[Mapping[str, Any]]) -> list[Mapping[str, Any]]:
    """The measurements no other beats on both p99 (lower) and throughput (higher), by p99."""
    ok = sorted((p for p in points if p.get("status") == "OK"), key=lambda p: (p["p99_ms"], -p["throughput"]))
    front, best = [], -1.0
    for p in ok:
        if p["throughput"] > best:
            front.append(p)
            best = p["throughput"]
    return front


def choose(points: Sequence[Mapping[str, Any]], goal: Goal) -> dict[str, Any]:
    """The best measurement for ``goal`` (see `Goal`), or why there is none."""
    within = [p for p in points if p.get("status") == "OK" and p["p99_ms"] <= goal.latency_budget_ms]
    if not within:
        fastest = min((p for p in points if p.get("status") == "OK"), key=lambda p: p["p99_ms"], default=None)
        return {"found": False, "reason": (
            f"no configuration has p99 <= {goal.latency_budget_ms:g} ms"
            + (f" (the lowest: {fastest['p99_ms']:.2f} ms, {fastest['config']} at c={fastest['concurrency']})"
               if fastest else ": nothing was measured"))}
    best = max(within, key=lambda p: (p["throughput"], -p["p99_ms"]))
    return {"found": True, "measurement": dict(best), "goal_met": best["throughput"] >= goal.throughput_goal}


def plot_frontier(points: Sequence[Mapping[str, Any]], goal: Goal, best: Mapping[str, Any] | None,
                  path: Path) -> None:
    """p99 vs throughput per measurement (one marker per layout), the Pareto frontier, the budget
    and the goal; written atomically to ``path`` (PNG)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 5))
    markers = {"fused": "o", "ensemble": "s"}
    ok = [p for p in points if p.get("status") == "OK"]
    for layout in sorted({p["layout"] for p in ok}):
        mine = [p for p in ok if p["layout"] == layout]
        ax.scatter([p["throughput"] for p in mine], [p["p99_ms"] for p in mine], marker=markers.get(layout, "x"),
                   alpha=0.6, label=layout)
    front = pareto(ok)
    if front:
        ax.plot([p["throughput"] for p in front], [p["p99_ms"] for p in front], "k--", lw=1, label="Pareto frontier")
    ax.axhline(goal.latency_budget_ms, color="red", lw=0.8, label=f"p99 budget {goal.latency_budget_ms:g} ms")
    if goal.throughput_goal:
        ax.axvline(goal.throughput_goal, color="green", lw=0.8, label=f"goal {goal.throughput_goal:g} req/s")
    if best:
        ax.scatter([best["throughput"]], [best["p99_ms"]], s=160, facecolors="none", edgecolors="red",
                   label=f"best: {best['config']} c={best['concurrency']}")
    ax.set_xlabel("throughput (requests / s, perf_analyzer)")
    ax.set_ylabel("p99 latency (ms)")
    ax.set_yscale("log")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    ax.set_title("rgalign tune: every configuration and concurrency")
    fig.tight_layout()
    fd, tmp = tempfile.mkstemp(suffix=".png", dir=path.parent)
    os.close(fd)
    try:
        fig.savefig(tmp, dpi=110)
        os.replace(tmp, path)
    finally:
        plt.close(fig)
        Path(tmp).unlink(missing_ok=True)


def _deploy_command(export: Path, point: Mapping[str, Any], base: Mapping[str, Any]) -> str:
    return (f"rgalign deploy {os.fspath(export)} --out triton_repo --layout {point['layout']} "
            f"--precision {base['precision']} --threads {base['threads']} --instances {point['instances']} "
            f"--max-batch {point['max_batch']} --queue-delay-us {point['queue_delay_us']}")


def tune(
    export: str | os.PathLike,
    out: str | os.PathLike,
    records: Sequence[Mapping[str, Any]],
    *,
    grid: Grid | None = None,
    goal: Goal | None = None,
    concurrencies: Sequence[int] = (1, 4, 16),
    precision: str = "int8",
    threads: int = 0,
    settings: pa.Settings | None = None,
    protocol: str = "http",
    start_timeout: float = 120.0,
    progress: Progress | None = None,
) -> dict[str, Any]:
    """Sweep ``grid`` over ``export`` (see the module doc) and write ``out``; returns tune.json's
    object. Raises ConfigError when perf_analyzer cannot run here (it is the measuring engine)."""
    from rgalign.serve.repository.deploy import DeployOptions, deploy
    from rgalign.serve.server import TritonServer

    binary, about = pa.available()
    if binary is None:
        raise ConfigError(f"rgalign tune measures with perf_analyzer, which cannot run here: {about}")
    grid, goal = grid or Grid(), goal or Goal()
    settings = settings or pa.Settings()
    say = progress or (lambda _msg: None)
    export, out = Path(export), Path(out)
    out.mkdir(parents=True, exist_ok=True)
    data = pa.input_data(records[:64])
    base = {"precision": precision, "threads": threads}
    measurements: list[dict[str, Any]] = []
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="rgalign-tune-") as tmp:
        for point in grid.points():
            config = name_of(point)
            repo = Path(tmp) / config
            try:
                deploy(export, repo, DeployOptions(precision=precision, threads=threads, **point))
            except ConfigError as e:
                measurements.append({**point, "config": config, "status": "FAIL", "reason": str(e)})
                continue
            server = TritonServer(repo, log_file=Path(tmp) / f"{config}.log")
            try:
                server.start(timeout=start_timeout)
                for c in concurrencies:
                    say(f"{config}, concurrency {c}")
                    row: dict[str, Any] = {**point, "config": config, "concurrency": c}
                    try:
                        url = server.http_address if protocol == "http" else server.grpc_url
                        got = pa.run(binary, url, data, protocol=protocol, concurrency=c, settings=settings)
                        row.update(status="OK", **{k: v for k, v in got.items() if k not in ("composing",)})
                        row["memory"] = server_memory_mb(server)
                    except ConfigError as e:
                        row.update(status="FAIL", reason=str(e))
                    measurements.append(row)
            except Exception as e:  # noqa: BLE001 - a configuration that cannot serve is a result
                measurements.append({**point, "config": config, "status": "FAIL", "reason": str(e)[:500]})
            finally:
                server.stop()
            if (repo / "deploy.json").is_file():
                shutil.copytree(repo, Path(tmp) / "keep" / config, ignore=shutil.ignore_patterns("1", "warmup"))
        choice = choose(measurements, goal)
        best_dir = out / "best"
        shutil.rmtree(best_dir, ignore_errors=True)
        if choice["found"]:
            m = choice["measurement"]
            point = {k: m[k] for k in ("layout", "instances", "max_batch", "queue_delay_us")}
            choice["deploy_options"] = {**base, **point}
            choice["command"] = _deploy_command(export, point, base)
            kept = Path(tmp) / "keep" / m["config"]
            if kept.is_dir():
                shutil.copytree(kept, best_dir)
    result = {
        "format": "rgalign.tune/1",
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "export": os.fspath(export.resolve()),
        "engine": about,
        "protocol": protocol,
        "grid": grid.to_dict(),
        "goal": goal.to_dict(),
        "concurrencies": list(concurrencies),
        "base": base,
        "measurements": measurements,
        "pareto": [p["config"] + f"@c{p['concurrency']}" for p in pareto(measurements)],
        "best": choice,
        "seconds": round(time.perf_counter() - t0, 1),
    }
    write_json_atomic(out / "tune.json", result)
    write_json_atomic(out / "best.json", choice)
    plot_frontier(measurements, goal, choice.get("measurement"), out / "frontier.png")
    return result
