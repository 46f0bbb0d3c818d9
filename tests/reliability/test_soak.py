"""The issue's "Done when", short: 8 clients, 20% bad requests of every kind, int8 with dynamic
batching; 0 good requests fail, 0 good answers differ from the same request sent alone, every bad
one gets a one-line 400, the server stays ready. `benchmarks/soak.py` runs the 60 s version."""

from __future__ import annotations

import pytest

from rgalign.bench.soak import reference_answers, soak

pytestmark = pytest.mark.reliability

SECONDS = 10.0


def test_soak_good_requests_unharmed_by_bad_ones(served, records):
    alone = reference_answers(served.url, records)
    assert all(a.ok for a in alone)
    report = soak(served.url, records, alone, clients=8, seconds=SECONDS, bad_fraction=0.2, atol=0.0, max_requests=20000)
    assert report.good_sent > 50 and report.bad_sent > 10
    assert report.good_failed == 0, report.problems[:5]
    assert report.good_changed == 0, report.problems[:5]
    assert report.bad_wrong == 0, report.problems[:5]
    assert report.not_ready_seen == 0
    assert served.server.is_ready()
