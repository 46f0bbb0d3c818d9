"""The fused layout under the reliability suite's hostile input (`rgalign.bench.soak`): every
crash kind is its own one-line 400 while concurrent good int8 requests keep the answers they get
alone, and concurrent int8 answers do not depend on batch mates (the fused model runs the
Pipeline's batch-invariant runners)."""

from __future__ import annotations

import json
import threading

import numpy as np
import pytest

from rgalign.bench.soak import bad_reply_problem, bad_requests, http_client, infer_raw, reference_answers
from rgalign.serve.server import TritonServer

pytestmark = pytest.mark.triton

MAX_BATCH = 16


@pytest.fixture(scope="module")
def fused_int8(tiny_int8_export, tmp_path_factory):
    from rgalign.serve.repository.deploy import DeployOptions, deploy

    repo = tmp_path_factory.mktemp("fused_int8") / "repo"
    deploy(tiny_int8_export, repo, DeployOptions(precision="int8", max_batch=MAX_BATCH, threads=1,
                                                 queue_delay_us=2000, layout="fused"))
    with TritonServer(repo, log_file=repo.parent / "tritonserver.log") as server:
        yield server


def _same(a, b) -> bool:
    return a.ok and b.ok and a.intent_ids == b.intent_ids and np.allclose(a.scores, b.scores, atol=1e-6, rtol=0)


def test_every_crash_kind_is_its_own_400_beside_unchanged_good_requests(fused_int8, serve_records):
    url = fused_int8.http_url
    records = serve_records[:16]
    bad = bad_requests(records[0], max_batch=MAX_BATCH)
    alone = reference_answers(url, records)
    assert all(r.ok for r in alone)
    replies: dict[str, object] = {}
    good: list[object] = [None] * len(records)
    barrier = threading.Barrier(len(bad) + len(records))

    def send(key, items, top_k=None):
        c = http_client(url)
        barrier.wait()
        reply = infer_raw(c, items, top_k)
        c.close()
        if isinstance(key, int):
            good[key] = reply
        else:
            replies[key] = reply

    threads = [threading.Thread(target=send, args=(k, v["items"], v["top_k"])) for k, v in bad.items()]
    threads += [threading.Thread(target=send, args=(i, [json.dumps(r).encode()])) for i, r in enumerate(records)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    problems = {k: bad_reply_problem(r) for k, r in replies.items() if bad_reply_problem(r)}
    assert not problems, problems
    assert len(replies) == len(bad)
    changed = [i for i in range(len(records)) if not _same(good[i], alone[i])]
    assert not changed, [(good[i].status, good[i].message) for i in changed]
    assert fused_int8.is_ready()
