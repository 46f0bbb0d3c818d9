"""The quickstart end to end on a tiny configuration: synth -> train 0-6 -> export -> deploy ->
a real tritonserver -> query -> bench --quick -> stop; a re-run reuses every finished step."""

from __future__ import annotations

import json

import pytest

from fakes import E2E_DATA, TINY_TRAIN
from rgalign.serve.server import find_processes
from rgalign.training.config import TrainConfig

pytestmark = [pytest.mark.triton, pytest.mark.slow]

# one epoch / fewer examples than the other e2e tests: this one also exports, serves and benchmarks
TINY_QUICKSTART = {
    **TINY_TRAIN, "baseline": {"epochs": 1, "batch_size": 64}, "reward": {"epochs": 1, "batch_size": 64},
    "warmup": {"max_examples": 32, "batch_size": 16}, "calibrate": {"epochs": 1, "batch_size": 64, "control": False},
}


def test_quickstart_runs_every_step_then_reuses_them(tmp_path):
    from rgalign.quickstart import quickstart

    cfg = TrainConfig.from_dict(TINY_QUICKSTART)
    messages: list[str] = []
    res = quickstart(tmp_path / "qs", log=messages.append, quiet=True, data_params=E2E_DATA, train_config=cfg,
                     precision="fp32")
    assert set(res.metrics["test"]) == {"baseline", "qe", "qe_rga"}
    manifest = json.loads((res.export / "manifest.json").read_text())
    assert manifest["source"]["ranker"] == "stages/6-calibrate/ranker"  # the aligned pair is deployed
    assert (res.repo / "rgalign" / "config.pbtxt").is_file()
    assert len(res.queries) == 3 and all(len(q["intent_ids"]) == len(q["texts"]) == 3 for q in res.queries)
    for q in res.queries:
        assert q["scores"] == sorted(q["scores"], reverse=True)
    bench = json.loads((res.bench / "bench.json").read_text())
    assert "ratios" in bench and bench["served"]["http"]
    assert (res.bench / "bench.md").is_file() and (res.bench / "bench.png").is_file()
    assert any(m.startswith("serve: server stopped") for m in messages)
    assert not find_processes(marker=str(res.repo)), "no tritonserver or stub left running"

    again: list[str] = []
    quickstart(tmp_path / "qs", log=again.append, quiet=True, data_params=E2E_DATA, train_config=cfg,
               precision="fp32")
    assert any(m.startswith("data: reusing") for m in again)
    assert sum("finished earlier" in m for m in again) == 7
    assert any(m.startswith("export: reusing") for m in again)
