"""Peak RSS of stage 3 (RG-SFT) with a Qwen3-0.6B-width reasoner under LoRA: the reward reasoner as a
second full copy (the code before) vs the policy itself (the same checkpoint, no copy).

    python benchmarks/rg_sft_memory.py OUT --code before=/path/to/old/checkout --code after=$PWD

OUT/data and OUT/backbone as `benchmarks/qwen06_lora.py` makes them (random init, nothing
downloaded; ``--layers`` of Qwen3-0.6B's 28, default 2: hidden 1024, the 151,936-row tied
embedding, ~0.2B parameters, 0.75 GB in fp32), then `rgalign train --stages 0-2` once (LoRA: auto
for a ``--backbone``). For each ``--code LABEL=DIR``, a child process with ``PYTHONPATH=DIR`` runs
stage 3 alone on its own copy of that run (`trainer.prepare`, then the stage driver) and reports
its peak RSS (``ru_maxrss``) after loading the run and after the stage, and what the stage wrote
of its reward reasoner. Each child is its own process, so one's memory never counts in another's.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from qwen06_lora import BUDGET, DATA, run_train  # noqa: E402

# stage 3's tiny budget: 16 clicked requests x 4 candidates (2 sampled), 4 SFT steps
CONFIG = {**BUDGET, "rg_sft": {"max_requests": 16, "n_candidates": 4, "n_sampled": 2, "max_new_tokens": 8,
                               "batch_size": 4, "epochs": 1}}


def stage3_child(data: Path, run: Path) -> None:
    """In the child: stage 3 alone, then one JSON line with its figures."""
    import torch

    from rgalign.training import trainer
    from rgalign.training.alignment import RGA_STAGES
    from rgalign.training.config import TrainConfig
    from rgalign.training.distributed import DistInfo

    config = TrainConfig.from_dict(json.loads((run / "run.json").read_text())["config"])  # with its --backbone
    ctx = trainer.prepare(data, run, config, DistInfo(), lambda m: None, True)
    rss_loaded = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e6
    torch.manual_seed(ctx.config.seed * 1000 + 3)
    t0 = time.perf_counter()
    RGA_STAGES[3](ctx, 0)
    info = json.loads((run / "stages" / "3-rg-sft" / "stage.json").read_text())
    print(json.dumps({
        "peak_rss_gb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e6, 3),
        "peak_rss_before_stage_gb": round(rss_loaded, 3), "stage_s": round(time.perf_counter() - t0, 1),
        "frozen_unchanged": info["frozen_unchanged"], "reward_reasoner": info["reward_reasoner"],
        "reward_reasoner_source": info.get("reward_reasoner_source", "a frozen copy (always, before)"),
        "finetune": info["finetune"], "reward_best_mean": info["reward"]["best_mean"],
        "final_lm_loss": info["final_lm_loss"],
    }), flush=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("out", type=Path)
    ap.add_argument("--code", action="append", default=[], help="LABEL=DIR: a checkout whose rgalign runs stage 3")
    ap.add_argument("--layers", type=int, default=2)
    ap.add_argument("--json", type=Path, help="write the figures here too")
    ap.add_argument("--child", nargs=2, type=Path, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        stage3_child(*args.child)
        return
    out = args.out
    out.mkdir(parents=True, exist_ok=True)
    subprocess.run([sys.executable, str(Path(__file__).with_name("qwen06_lora.py")), str(out), "--layers",
                    str(args.layers), "--prepare-only"], check=True)
    data, backbone, base = out / "data", out / "backbone", out / "runs" / "stages-0-2"
    result: dict = {"argv": sys.argv, "shape_layers": args.layers, "config": CONFIG, "runs": {},
                    "machine": {"cpus": os.cpu_count(), "load_before": os.getloadavg()}}
    if not (base / "stages" / "2-reward" / "stage.json").is_file():
        cfg = out / "config-rg-sft.json"
        cfg.write_text(json.dumps(CONFIG))
        result["setup"] = run_train([str(data), "--out", str(base), "--backbone", str(backbone), "--config", str(cfg),
                                     "--stages", "0-2", "--quiet"], out / "setup.log")
        if result["setup"]["exit_code"] != 0:
            sys.exit(f"stages 0-2 failed: see {out / 'setup.log'}")
    for spec in args.code:
        label, code = spec.split("=", 1)
        run = out / "runs" / f"stage3-{label}"
        shutil.rmtree(run, ignore_errors=True)
        shutil.copytree(base, run)
        env = dict(os.environ, PYTHONPATH=os.path.abspath(code))
        proc = subprocess.run([sys.executable, __file__, str(out), "--child", str(data), str(run)], env=env,
                              capture_output=True, text=True)
        if proc.returncode != 0:
            sys.exit(f"stage 3 ({label}) failed:\n{proc.stderr[-3000:]}")
        result["runs"][label] = json.loads(proc.stdout.strip().splitlines()[-1])
        print(label, json.dumps(result["runs"][label]), flush=True)
    result["machine"]["load_after"] = os.getloadavg()
    if args.json:
        args.json.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
