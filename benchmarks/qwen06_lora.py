"""Training a Qwen3-0.6B-shape reasoner (random init, built from a config: nothing is downloaded):
stage 1 (warm-up SFT) with a tiny budget, full fine-tuning vs LoRA, then `rgalign train --stages
0-2` with LoRA end to end. Each is the real `rgalign train` in its own process; its peak RSS is
the kernel's (``wait4`` -> ``ru_maxrss``), its trainable parameters and step times are what the
stage wrote to ``stage.json`` / ``losses.csv``.

    python benchmarks/qwen06_lora.py OUT [--json benchmarks/results/qwen06_lora.json]

OUT/data is the synthetic set `benchmarks/qwen06_run.py` uses; OUT/backbone a Hugging Face folder
(``save_pretrained``: config.json, model.safetensors, 2.4 GB, plus a 512-token BPE trained on the
data), what a user passes as ``--backbone``. Runs one after the other (a full fine-tuning run
peaks near 10 GB): on a shared machine, under the big-memory lock.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from qwen06_run import DATA as EXPORT_DATA, QWEN3_06B  # noqa: E402

# qwen06_run's synthetic set with 160 requests instead of 400: stage 2 encodes every train and
# valid prompt with the 0.6B model (~1 s each here), and a tiny budget is the point
DATA = {**EXPORT_DATA, "requests": 160}

# stage 1's tiny budget: 12 examples, 3 steps of 4 (the issue's 32 examples in one step took
# 429 s and 14.6 GB); ranker stages 0 and 2 as small as the tests', for the end-to-end run
BUDGET = {
    "reasoner": {"max_len": 96, "d_query": 64},
    "warmup": {"max_examples": 12, "batch_size": 4, "epochs": 1},
    "baseline": {"epochs": 1, "batch_size": 64},
    "reward": {"epochs": 1, "batch_size": 64},
    "ranker": {"field_dim": 8, "dim": 16, "expert_hidden": 32, "n_experts": 2},
    "infer_batch": 32,
}
MODES = {  # name -> the config's finetune section
    "full": {"lora": "off", "gradient_checkpointing": "off"},
    "lora": {"lora": "on", "gradient_checkpointing": "off"},
    "lora+checkpointing": {"lora": "on", "gradient_checkpointing": "on"},  # what --lora auto picks
}


def make_backbone(out: Path, data: Path, layers: int) -> Path:
    """OUT/backbone: the 0.6B-shape model (seed 0) and a tokenizer, as `save_pretrained` writes them."""
    folder = out / "backbone"
    if (folder / "model.safetensors").is_file():
        return folder
    import torch
    from transformers import AutoModelForCausalLM, Qwen3Config

    from rgalign.data.encoders import FeatureEncoders
    from rgalign.data.loader import load_dataset
    from rgalign.data.requests import build_requests
    from rgalign.models.prompt import PromptFields, build_prompt
    from rgalign.models.tokenizer import train_tokenizer

    ds = load_dataset(data)
    train = build_requests(ds, FeatureEncoders.fit(ds), "train")
    fields = PromptFields.from_schema(ds.schema)
    tok = train_tokenizer([build_prompt(r, fields) for r in train.raw] + ds.intent_texts * 4, vocab_size=512)
    config = Qwen3Config(**{**QWEN3_06B, "num_hidden_layers": layers}, pad_token_id=tok.pad_token_id,
                         bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id)
    torch.manual_seed(0)
    AutoModelForCausalLM.from_config(config).float().save_pretrained(folder)
    tok.save_pretrained(folder)
    return folder


def run_train(argv: list[str], log: Path) -> dict:
    """``python -m rgalign train ...`` in a child process: wall time, exit code, peak RSS."""
    t0 = time.perf_counter()
    with open(log, "w") as f:
        proc = subprocess.Popen([sys.executable, "-m", "rgalign", "train", *argv], stdout=f, stderr=subprocess.STDOUT)
        _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    return {"command": "rgalign train " + " ".join(argv), "exit_code": proc.returncode,
            "wall_s": round(time.perf_counter() - t0, 1), "peak_rss_gb": round(usage.ru_maxrss / 1e6, 2)}


def stage1(out: Path, data: Path, backbone: Path, mode: str) -> dict:
    cfg = out / f"config-{mode}.json"
    cfg.write_text(json.dumps({**BUDGET, "finetune": MODES[mode]}))
    run = out / "runs" / mode
    res = run_train([str(data), "--out", str(run), "--backbone", str(backbone), "--config", str(cfg),
                     "--stages", "1", "--quiet"], out / f"{mode}.log")
    if res["exit_code"] == 0:
        info = json.loads((run / "stages" / "1-warmup" / "stage.json").read_text())
        steps = len((run / "stages" / "1-warmup" / "losses.csv").read_text().splitlines()) - 1
        res.update(finetune=info["finetune"], examples=info["examples"], steps=steps,
                   train_loop_s=round(info["seconds"], 1), s_per_step=round(info["seconds"] / steps, 1),
                   final_lm_loss=round(info["final_lm_loss"], 3))
    return res


def end_to_end(out: Path, data: Path, backbone: Path) -> dict:
    cfg = out / "config-e2e.json"
    cfg.write_text(json.dumps(BUDGET))  # finetune: auto -> LoRA and checkpointing for a --backbone
    run = out / "runs" / "e2e-0-2"
    res = run_train([str(data), "--out", str(run), "--backbone", str(backbone), "--config", str(cfg),
                     "--stages", "0-2", "--quiet"], out / "e2e.log")
    if res["exit_code"] == 0:
        stages = {}
        for d in sorted((run / "stages").iterdir()):
            info = json.loads((d / "stage.json").read_text())
            stages[d.name] = {k: info[k] for k in ("seconds", "latent_seconds", "ranker_seconds", "finetune")
                              if k in info}
        metrics = json.loads((run / "metrics.json").read_text())
        res.update(stages=stages, test_gauc={m: round(v["gauc"], 4) for m, v in metrics["test"].items()})
    return res


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("out", type=Path)
    ap.add_argument("--json", type=Path, help="write the figures here too")
    ap.add_argument("--layers", type=int, default=QWEN3_06B["num_hidden_layers"], help="fewer for a quick try")
    ap.add_argument("--modes", default="full,lora+checkpointing",
                    help=f"stage-1 modes to run, comma-separated, of {', '.join(MODES)}")
    ap.add_argument("--no-e2e", action="store_true", help="skip `train --stages 0-2`")
    ap.add_argument("--prepare-only", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()

    args.out.mkdir(parents=True, exist_ok=True)
    data = args.out / "data"
    if args.prepare_only:
        from rgalign.data.synth import synthesize

        if not (data / "dataset.yaml").is_file():
            synthesize(data, **DATA)
        make_backbone(args.out, data, args.layers)
        return
    # data and backbone in a child: this process forks every measured run, and Linux counts the
    # parent's resident memory at fork in the child's peak (ru_maxrss): it stays a small launcher
    t0 = time.perf_counter()
    subprocess.run([sys.executable, __file__, str(args.out), "--layers", str(args.layers), "--prepare-only"],
                   check=True)
    backbone = args.out / "backbone"
    result: dict = {
        "argv": sys.argv,
        "what": "stage 1 (warm-up SFT) of a Qwen3-0.6B-shape reasoner, tiny budget, full fine-tuning vs LoRA; "
                "then train --stages 0-2 with LoRA (auto), each `rgalign train` in its own process",
        "shape": {**QWEN3_06B, "num_hidden_layers": args.layers}, "budget": BUDGET,
        "backbone_build_s": round(time.perf_counter() - t0, 1), "stage1": {},
        "machine": {"cpus": os.cpu_count(), "load_before": os.getloadavg(),
                    "launcher_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e3)},
    }

    def write() -> None:  # after every run: an interrupted benchmark keeps what it measured
        result["machine"]["load_after"] = os.getloadavg()
        if args.json:
            args.json.write_text(json.dumps(result, indent=2) + "\n")

    for mode in args.modes.split(","):
        result["stage1"][mode] = stage1(args.out, data, backbone, mode)
        print(mode, json.dumps(result["stage1"][mode]), flush=True)
        write()
    full, lora = result["stage1"].get("full", {}), result["stage1"].get("lora+checkpointing", {})
    if "finetune" in full and "finetune" in lora:
        result["lora_vs_full"] = {
            "trainable_parameters_factor": round(full["finetune"]["trainable_parameters"]
                                                 / lora["finetune"]["trainable_parameters"], 1),
            "peak_rss_factor": round(full["peak_rss_gb"] / lora["peak_rss_gb"], 2),
            "s_per_step_ratio": round(lora["s_per_step"] / full["s_per_step"], 2),
        }
    write()
    if not args.no_e2e:
        result["e2e_stages_0_2"] = end_to_end(args.out, data, backbone)
        print("e2e", json.dumps(result["e2e_stages_0_2"]), flush=True)
        write()
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
