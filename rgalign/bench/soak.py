"""Hostile load on a served ensemble: good requests mixed with every kind of bad one.

`bad_requests(good)` is the catalogue of malformed requests issue 16 found (and a few more),
each a raw ``features`` payload plus what it is; `soak` runs ``clients`` threads for
``seconds``, each sending a bad request with probability ``bad_fraction`` and otherwise a good
one (batch 1), and checks every answer: a good request must succeed and equal the answer the
same request got alone (top-K ids exact, scores within ``atol``), a bad one must get a 400 whose
message is one line without a traceback, and the server must stay ready. All traffic goes to
the given URL (tests and ``benchmarks/soak.py`` use 127.0.0.1), bounded by count and time.

Example::

    alone = reference_answers(url, records)          # each good request sent alone
    report = soak(url, records, alone, clients=8, seconds=60, bad_fraction=0.2)
    assert report.good_failed == 0 and report.good_changed == 0
"""

from __future__ import annotations

import json
import random
import threading
import time
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

Record = Mapping[str, Any]


def _features(items: Sequence[bytes]) -> np.ndarray:
    return np.array([[b] for b in items], dtype=object)


def _nested(depth: int) -> str:
    return "[" * depth + "]" * depth


def bad_requests(good: Record, text_field: str | None = None, numeric_field: str | None = None,
                 categorical_field: str | None = None, max_batch: int = 16) -> dict[str, dict[str, Any]]:
    """``{kind: {"items": [bytes, ...], "top_k": int | None}}``: one malformed request per kind,
    built from the good record ``good`` (field names guessed from its values when not given)."""
    g = dict(good)
    text_field = text_field or next((k for k, v in g.items() if isinstance(v, str) and " " in v), None)
    numeric_field = numeric_field or next((k for k, v in g.items() if isinstance(v, (int, float)) and not isinstance(v, bool)), None)
    categorical_field = categorical_field or next((k for k, v in g.items() if isinstance(v, str) and k != text_field), None)

    def with_raw(field_name: str | None, raw: str) -> bytes:
        """``good`` with one field's JSON value replaced by ``raw`` (JSON text, possibly invalid)."""
        base = {k: v for k, v in g.items() if k != field_name}
        body = json.dumps(base)
        return (body[:-1] + f', "{field_name}": {raw}}}').encode()

    one = json.dumps(g).encode()
    kinds: dict[str, bytes | list[bytes]] = {
        "malformed-json": b'{"tier": "gold",',
        "not-an-object": b"[1, 2, 3]",
        "not-utf8": b"\xff\xfe\xfd",
        "empty-string": b"",
        "missing-feature": json.dumps({k: v for k, v in list(g.items())[1:]}).encode(),
        "nested-10000": with_raw(categorical_field, _nested(10000)),
        "nested-inside-item": (json.dumps(g)[:-1] + ', "extra": ' + _nested(10000) + "}").encode(),
        "categorical-infinity": with_raw(categorical_field, "Infinity"),
        "categorical-nan": with_raw(categorical_field, "NaN"),
        "numeric-400-digits": with_raw(numeric_field, "9" * 400),
        "numeric-5000-digits": with_raw(numeric_field, "9" * 5000),
        "numeric-infinity": with_raw(numeric_field, "-Infinity"),
        "numeric-string": with_raw(numeric_field, '"thirty"'),
        "object-value": with_raw(categorical_field, '{"a": {"b": 1}}'),
        "text-1mb": with_raw(text_field, json.dumps("x" * 1_000_000)),
        "text-over-limit": with_raw(text_field, json.dumps("word " * 2000)),
        "huge-int-categorical": with_raw(categorical_field, "1" + "0" * 30),
    }
    out: dict[str, dict[str, Any]] = {}
    for kind, items in kinds.items():
        if kind.endswith("-nan") and categorical_field is None:
            continue
        out[kind] = {"items": items if isinstance(items, list) else [items], "top_k": None}
    out["top-k-zero"] = {"items": [one], "top_k": 0}
    out["top-k-huge"] = {"items": [one], "top_k": 2**31 - 1}
    out["batch-over-max"] = {"items": [one] * (max_batch + 1), "top_k": None}
    out["mixed-items-one-bad"] = {"items": [one, b"{oops"], "top_k": None}
    return out


@dataclass
class Reply:
    ok: bool
    status: str  # "200", "400", "500", ... or the exception's type for a transport error
    message: str = ""
    intent_ids: list[list[str]] | None = None
    scores: list[list[float]] | None = None
    seconds: float = 0.0


def infer_raw(client: Any, items: Sequence[bytes], top_k: int | None = None, model: str = "rgalign") -> Reply:
    """Send one request of raw ``features`` items with a ``tritonclient.http`` client."""
    import tritonclient.http as http
    from tritonclient.utils import InferenceServerException

    inputs = [http.InferInput("features", [len(items), 1], "BYTES")]
    inputs[0].set_data_from_numpy(_features(items))
    if top_k is not None:
        k = http.InferInput("top_k", [len(items), 1], "INT32")
        k.set_data_from_numpy(np.full((len(items), 1), top_k, dtype=np.int32))
        inputs.append(k)
    t0 = time.perf_counter()
    try:
        result = client.infer(model, inputs)
    except InferenceServerException as e:
        status = str(e.status() or "")
        return Reply(False, status, e.message() or str(e), seconds=time.perf_counter() - t0)
    except Exception as e:  # noqa: BLE001 - a transport failure is a failed request, recorded
        return Reply(False, type(e).__name__, str(e).splitlines()[0] if str(e) else "", seconds=time.perf_counter() - t0)
    ids = [[x.decode() for x in row] for row in result.as_numpy("intent_ids")]
    scores = result.as_numpy("scores").tolist()
    return Reply(True, "200", intent_ids=ids, scores=scores, seconds=time.perf_counter() - t0)


def http_client(url: str, timeout: float = 60.0) -> Any:
    import tritonclient.http as http

    address = url.split("://", 1)[-1]
    return http.InferenceServerClient(address, connection_timeout=timeout, network_timeout=timeout)


def reference_answers(url: str, records: Sequence[Record], top_k: int | None = None) -> list[Reply]:
    """Each record sent alone, one after another: the answers a good request must keep."""
    client = http_client(url)
    try:
        return [infer_raw(client, [json.dumps(r).encode()], top_k) for r in records]
    finally:
        client.close()


def bad_reply_problem(reply: Reply) -> str | None:
    """What is wrong with the reply to a bad request, or None: it must be a 400 with one line
    and no traceback or server path."""
    if reply.ok:
        return "accepted"
    if reply.status != "400":
        return f"status {reply.status}: {reply.message[:120]}"
    if "\n" in reply.message.strip() or "Traceback" in reply.message or "/site-packages/" in reply.message:
        return f"not one line: {reply.message[:160]!r}"
    return None


@dataclass
class SoakReport:
    clients: int
    seconds: float
    bad_fraction: float
    good_sent: int = 0
    good_failed: int = 0
    good_changed: int = 0  # top-K ids differ, or a score by more than atol
    good_ids_changed: int = 0  # top-K ids differ
    bad_sent: int = 0
    bad_wrong: int = 0
    bad_kinds: dict[str, int] = field(default_factory=dict)
    max_score_diff: float = 0.0
    good_p50_ms: float = 0.0
    good_p99_ms: float = 0.0
    good_max_ms: float = 0.0
    throughput: float = 0.0
    not_ready_seen: int = 0
    problems: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def soak(
    url: str,
    records: Sequence[Record],
    alone: Sequence[Reply],
    *,
    clients: int = 8,
    seconds: float = 60.0,
    bad_fraction: float = 0.2,
    atol: float = 1e-5,
    seed: int = 0,
    max_batch: int = 16,
    max_requests: int = 1_000_000,
) -> SoakReport:
    """``clients`` threads for ``seconds`` (or ``max_requests`` in all): good requests (each must
    equal ``alone``) mixed with every kind of `bad_requests`. See the module doc."""
    bad = bad_requests(records[0], max_batch=max_batch)
    kinds = sorted(bad)
    report = SoakReport(clients, seconds, bad_fraction)
    lock = threading.Lock()
    latencies: list[float] = []
    counts: Counter[str] = Counter()
    sent = [0]
    deadline = time.monotonic() + seconds

    def worker(cid: int) -> None:
        rng = random.Random(seed * 1000 + cid)
        client = http_client(url)
        try:
            while time.monotonic() < deadline:
                with lock:
                    if sent[0] >= max_requests:
                        return
                    sent[0] += 1
                if rng.random() < bad_fraction:
                    kind = kinds[rng.randrange(len(kinds))]
                    reply = infer_raw(client, bad[kind]["items"], bad[kind]["top_k"])
                    problem = bad_reply_problem(reply)
                    with lock:
                        report.bad_sent += 1
                        counts[kind] += 1
                        if problem:
                            report.bad_wrong += 1
                            report.problems.append(f"bad {kind}: {problem}")
                    continue
                i = rng.randrange(len(records))
                reply = infer_raw(client, [json.dumps(records[i]).encode()])
                ref = alone[i]
                with lock:
                    report.good_sent += 1
                    latencies.append(reply.seconds)
                    if not reply.ok:
                        report.good_failed += 1
                        report.problems.append(f"good #{i} failed: {reply.status} {reply.message[:160]}")
                        continue
                    diff = float(np.max(np.abs(np.subtract(reply.scores, ref.scores)))) if ref.scores else 0.0
                    report.max_score_diff = max(report.max_score_diff, diff)
                    report.good_ids_changed += reply.intent_ids != ref.intent_ids
                    if reply.intent_ids != ref.intent_ids or diff > atol:
                        report.good_changed += 1
                        report.problems.append(f"good #{i} changed: {reply.intent_ids} vs {ref.intent_ids} (diff {diff:.2e})")
        finally:
            client.close()

    def health() -> None:
        import urllib.request

        base = url if "://" in url else f"http://{url}"
        while time.monotonic() < deadline:
            try:
                with urllib.request.urlopen(f"{base}/v2/health/ready", timeout=2) as r:
                    ok = r.status == 200
            except OSError:
                ok = False
            if not ok:
                with lock:
                    report.not_ready_seen += 1
            time.sleep(0.5)

    t0 = time.monotonic()
    threads = [threading.Thread(target=worker, args=(c,), daemon=True) for c in range(clients)]
    threads.append(threading.Thread(target=health, daemon=True))
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=seconds + 120)
    wall = time.monotonic() - t0
    report.bad_kinds = dict(sorted(counts.items()))
    if latencies:
        ms = np.array(latencies) * 1e3
        report.good_p50_ms = float(np.percentile(ms, 50))
        report.good_p99_ms = float(np.percentile(ms, 99))
        report.good_max_ms = float(ms.max())
    report.throughput = (report.good_sent + report.bad_sent) / wall
    report.problems = report.problems[:50]
    return report


class ClosedLoop:
    """``clients`` threads, each sending one good request (batch 1) at a time until `stop`,
    backing off 20 ms after a failure; ``log`` holds ``(start, end, ok)`` per request
    (monotonic seconds). The steady load the recovery test and benchmark kill a process under.

    Example::

        with ClosedLoop(url, records, clients=4) as load:
            ...  # kill something
        failed = [x for x in load.log if not x[2]]
    """

    def __init__(self, url: str, records: Sequence[Record], clients: int, timeout: float = 60.0) -> None:
        self.url, self.records, self.clients, self.timeout = url, list(records), clients, timeout
        self.log: list[tuple[float, float, bool]] = []
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._client, args=(c,)) for c in range(clients)]

    def _client(self, cid: int) -> None:
        c = http_client(self.url, timeout=self.timeout)
        i = cid
        while not self._stop.is_set():
            t0 = time.monotonic()
            r = infer_raw(c, [json.dumps(self.records[i % len(self.records)]).encode()])
            self.log.append((t0, time.monotonic(), r.ok))
            i += self.clients
            if not r.ok:
                time.sleep(0.02)  # a client backs off a little after a failure
        c.close()

    def start(self) -> ClosedLoop:
        for t in self._threads:
            t.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        for t in self._threads:
            t.join(timeout=60)

    def __enter__(self) -> ClosedLoop:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
