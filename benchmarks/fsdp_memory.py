"""Peak RSS and step time per rank of the reasoner's SFT (`global_sft.train_sft_global`): one
process, DDP on 2, FSDP2 on 2, for a reasoner of Qwen3-0.6B's shape cut to a few layers (random
init, built from a config: nothing is downloaded; the 151,936-row tied embedding is kept, so the
embedding alone is 156M parameters).

    python benchmarks/fsdp_memory.py --label one --layers 2
    torchrun --nproc_per_node 2 benchmarks/fsdp_memory.py --label ddp2 --dist ddp --layers 2
    torchrun --nproc_per_node 2 benchmarks/fsdp_memory.py --label fsdp2 --dist fsdp --layers 2

Each adds its per-rank figures to ``--json`` (default benchmarks/results/fsdp_memory.json).
Peak RSS is the process's ``ru_maxrss`` after the steps (it includes the ~0.3 GB of imports and
the reasoner as built, before any wrapping); losses are recorded to show the three runs train the
same way.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import time
from pathlib import Path

QWEN3_06B = dict(
    vocab_size=151_936, hidden_size=1024, intermediate_size=3072, num_hidden_layers=28,
    num_attention_heads=16, num_key_value_heads=8, head_dim=128, max_position_embeddings=40_960,
    rms_norm_eps=1e-6, tie_word_embeddings=True,
)


def rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--label", required=True)
    ap.add_argument("--dist", default="auto", choices=("auto", "ddp", "fsdp"))
    ap.add_argument("--layers", type=int, default=2)
    ap.add_argument("--vocab", type=int, default=QWEN3_06B["vocab_size"], help="smaller for a quick try")
    ap.add_argument("--steps", type=int, default=3)
    ap.add_argument("--batch", type=int, default=4, help="global batch (examples per step over all ranks)")
    ap.add_argument("--json", type=Path, default=Path(__file__).parent / "results" / "fsdp_memory.json")
    args = ap.parse_args()

    import torch
    from transformers import AutoModelForCausalLM, Qwen3Config

    from rgalign.data.synth import tiny_dataset
    from rgalign.models.prompt import PromptFields, build_prompt
    from rgalign.models.reasoner import Reasoner, ReasonerConfig
    from rgalign.models.tokenizer import train_tokenizer
    from rgalign.training.distributed import DistInfo, init_distributed
    from rgalign.training.global_sft import train_sft_global

    torch.set_num_threads(1)
    dist = init_distributed(args.dist)
    ds = tiny_dataset()
    fields = PromptFields.from_schema(ds.schema)
    table = ds.request_table("train")
    prompts = [build_prompt(r, fields) for r in table[list(ds.schema.features)].to_dict("records")]
    texts = ds.intent_texts
    tok = train_tokenizer(prompts[:200] + texts * 4, vocab_size=512)
    n = args.batch * args.steps
    prompts, targets = prompts[:n], [" " + texts[i % len(texts)] for i in range(n)]

    shape = {**QWEN3_06B, "num_hidden_layers": args.layers, "vocab_size": args.vocab}
    hf = Qwen3Config(**shape, pad_token_id=tok.pad_token_id, bos_token_id=tok.bos_token_id,
                     eos_token_id=tok.eos_token_id, attn_implementation="sdpa")
    torch.manual_seed(0)
    backbone = AutoModelForCausalLM.from_config(hf).float()
    reasoner = Reasoner(ReasonerConfig(backbone="qwen3-0.6b-shape", max_len=96, d_query=64), tok, backbone=backbone)
    params = sum(p.numel() for p in reasoner.parameters())
    rss_built = rss_mb()
    t0 = time.perf_counter()
    res = train_sft_global(reasoner, tok, prompts, targets, epochs=1, batch_size=args.batch, lr=1e-4, max_len=96,
                           seed=0, dist=DistInfo(dist.rank, dist.world_size, args.dist), quiet=True)
    row = {"rank": dist.rank, "world_size": dist.world_size, "parameters": params, "rss_after_build_mb": rss_built,
           "peak_rss_mb": rss_mb(), "seconds": time.perf_counter() - t0, "s_per_step": res.seconds / args.steps,
           "losses": [r["lm_loss"] for r in res.log.rows]}
    rows = [row]
    if dist.enabled:
        rows = [None] * dist.world_size
        torch.distributed.all_gather_object(rows, row)
    if dist.is_main:
        out = json.loads(args.json.read_text()) if args.json.is_file() else {}
        out.setdefault("machine", {"cpus": os.cpu_count(), "torch": torch.__version__, "platform": platform.platform()})
        out[args.label] = {"dist": args.dist, "layers": args.layers, "vocab": args.vocab, "steps": args.steps, "batch": args.batch,
                           "ranks": rows}
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(out, indent=1) + "\n")
        print(json.dumps(out[args.label], indent=1))
    if dist.enabled:
        torch.distributed.destroy_process_group()


if __name__ == "__main__":
    main()
