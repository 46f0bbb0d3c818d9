"""Where the fused layout's time goes at concurrency 1: the phases of one request inside the python
backend's stub, against the same phases in process.

    .venv/bin/python benchmarks/fused_breakdown.py EXPORT [--precision int8] [--threads 1] [--rounds 3]
        [--out benchmarks/results/fused_breakdown.json]

Deploys ``--layout fused`` and replaces its ``model.py`` with a subclass of the product's
`rgalign.serve.models.fused.TritonPythonModel` that times, per ``execute``: reading each request
(``read``: the JSON decode, the checks, the prompt and its tokens), the batched graphs and the
postprocessing (``call``), the whole ``execute``, and the idle time between two executes; every
2,000 executes it writes the medians to a JSON file. perf_analyzer drives it at concurrency 1
over HTTP and reports its own split (queue, compute infer, network). In the same run, the same
``FusedStep.read`` / ``FusedStep.__call__`` and the whole in-process `Pipeline` are timed on the
same requests, back to back (a hot loop) and paced (idle ``IDLE_S`` before each call, as the
stub idles between requests at concurrency 1: caches and the core cool down). What the served p50 adds to the in-process one is then: perf_analyzer's HTTP and
queue, the stub round trip (compute infer minus execute) and whatever the same Python costs more
in the stub process than in a hot in-process loop (execute minus in-process read + call).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np

from rgalign.bench import perf_analyzer as pa
from rgalign.bench.target import resolve_target
from rgalign.inference.limits import RequestLimits
from rgalign.serve.models.fused import FusedStep
from rgalign.serve.repository.deploy import DeployOptions, deploy
from rgalign.serve.server import TritonServer

# Between two requests at concurrency 1 the stub idles ~0.4-0.5 ms (the response's way back, the
# next request's way in): the in-process loop is also timed with that idle time before each call.
IDLE_S = 0.0005

TIMED_MODEL = '''import json
import time

import numpy as np

from rgalign.serve.models import fused
from rgalign.serve.models.common import input_array, respond_each

OUT = {out!r}
T = {{"execute": [], "read": [], "call": [], "between": []}}
LAST = [None]


class TritonPythonModel(fused.TritonPythonModel):
    def execute(self, requests):
        t0 = time.perf_counter()
        if LAST[0] is not None:
            T["between"].append(t0 - LAST[0])

        def read(r):
            a = time.perf_counter()
            item = self.step.read(input_array(r, "features"), input_array(r, "top_k"))
            T["read"].append(time.perf_counter() - a)
            return item

        def call(items):
            a = time.perf_counter()
            out = self.step(items)
            T["call"].append(time.perf_counter() - a)
            return out

        responses = respond_each(requests, read, call, model="rgalign")
        LAST[0] = time.perf_counter()
        T["execute"].append(LAST[0] - t0)
        if len(T["execute"]) % 2000 == 0:
            with open(OUT + ".tmp", "w") as f:
                json.dump({{k: float(np.median(v[-1500:])) * 1e3 for k, v in T.items() if v}}, f)
            import os
            os.replace(OUT + ".tmp", OUT)
        return responses
'''


def median_ms(fn, n: int, warmup: int = 100, idle_s: float = 0.0) -> float:
    """Median ms of ``fn(i)`` over ``n`` calls; ``idle_s`` > 0 idles that long before each call,
    as a server does between requests at concurrency 1."""
    times = []
    for i in range(n + warmup):
        if idle_s:
            time.sleep(idle_s)
        t0 = time.perf_counter()
        fn(i)
        times.append(time.perf_counter() - t0)
    return round(statistics.median(times[warmup:]) * 1e3, 3)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("export", type=Path)
    ap.add_argument("--precision", default="int8")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--out", type=Path, default=Path("benchmarks/results/fused_breakdown.json"))
    args = ap.parse_args()
    binary, about = pa.available()
    if binary is None:
        raise SystemExit(f"perf_analyzer cannot run here: {about}")
    records = resolve_target(args.export, None).records
    raw = [np.array([[json.dumps(r).encode()]], dtype=object) for r in records]
    n = len(records)
    step = FusedStep.from_dir(args.export, args.precision, args.threads, 10, RequestLimits())
    items = [step.read(x, None) for x in raw]
    rounds = []
    with tempfile.TemporaryDirectory(prefix="rgalign-breakdown-") as tmp:
        repo, phases = Path(tmp) / "fused", Path(tmp) / "phases.json"
        deploy(args.export, repo, DeployOptions(layout="fused", precision=args.precision, threads=args.threads))
        (repo / "rgalign" / "1" / "model.py").write_text(TIMED_MODEL.format(out=os.fspath(phases)), encoding="utf-8")
        with TritonServer(repo, log_file=Path(tmp) / "server.log") as srv:
            for r in range(args.rounds):
                inproc = {
                    "pipeline": median_ms(lambda i: step.pipeline([records[i % n]], 10), 600),
                    "pipeline_paced": median_ms(lambda i: step.pipeline([records[i % n]], 10), 600, idle_s=IDLE_S),
                    "read_paced": median_ms(lambda i: step.read(raw[i % n], None), 600, idle_s=IDLE_S),
                    "read": median_ms(lambda i: step.read(raw[i % n], None), 600),
                    "call": median_ms(lambda i: step([items[i % n]]), 600),
                }
                data = pa.input_data(records, n=5000, repeated=0.0, seed=r, tag=f"breakdown-r{r}-")
                got = pa.run(binary, srv.http_address, data, concurrency=1, settings=pa.Settings(interval_ms=3000))
                served = {k: got[k] for k in ("p50_ms", "network_ms", "server_queue_ms", "server_compute_input_ms",
                                              "server_compute_infer_ms", "server_compute_output_ms")}
                stub = {k: round(v, 3) for k, v in json.loads(phases.read_text()).items()}
                rounds.append({"inprocess": inproc, "perf_analyzer": served, "stub": stub})
                print(json.dumps(rounds[-1]), flush=True)
    med = {part: {k: round(statistics.median(x[part][k] for x in rounds), 3) for k in rounds[0][part]}
           for part in rounds[0]}
    split = {
        "served_p50_above_inprocess_pipeline": med["perf_analyzer"]["p50_ms"] - med["inprocess"]["pipeline"],
        "served_p50_above_inprocess_pipeline_paced": med["perf_analyzer"]["p50_ms"] - med["inprocess"]["pipeline_paced"],
        "inprocess: paced - back to back": med["inprocess"]["pipeline_paced"] - med["inprocess"]["pipeline"],
        "stub_round_trip (compute_infer - execute)": med["perf_analyzer"]["server_compute_infer_ms"] - med["stub"]["execute"],
        "read: stub - in process": med["stub"]["read"] - med["inprocess"]["read"],
        "call: stub - in process": med["stub"]["call"] - med["inprocess"]["call"],
    }
    result = {"export": os.fspath(args.export.resolve()), "precision": args.precision, "threads": args.threads,
              "engine": about, "load_average": os.getloadavg(), "rounds": rounds, "median": med,
              "split_ms": {k: round(v, 3) for k, v in split.items()}}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1) + "\n", encoding="utf-8")
    print(json.dumps(result["split_ms"], indent=1))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
