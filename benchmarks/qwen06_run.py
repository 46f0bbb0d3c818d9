"""A training-run folder whose reasoner has Qwen3-0.6B's shape (random init, built from a config:
nothing is downloaded), for `rgalign export` / `rgalign bench` at the paper's budget size.

    python benchmarks/qwen06_run.py OUT            # OUT/data (synthetic), OUT/run

Shape (Qwen3-0.6B's config): hidden 1024, 28 layers, 16 heads / 8 KV heads, head_dim 128,
intermediate 3072, vocab 151,936, tied embeddings: ~0.6B parameters, ~2.4 GB in fp32. The run is
laid out as `rgalign train` lays one out (and as `tests/fakes.py` `make_fake_run` builds one):
run.json with the dataset's path, encoders.json, prompt_fields.json, the reasoner saved with
`Reasoner.save` under stages/1-warmup, the QE ranker (its intent text table from that reasoner)
under stages/2-reward. The prompts' tokenizer is trained on the synthetic data (512 tokens): the
backbone keeps its 151,936-row embedding, which is what the export's size depends on.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

QWEN3_06B = dict(
    vocab_size=151_936, hidden_size=1024, intermediate_size=3072, num_hidden_layers=28,
    num_attention_heads=16, num_key_value_heads=8, head_dim=128, max_position_embeddings=40_960,
    rms_norm_eps=1e-6, tie_word_embeddings=True,
)
DATA = dict(users=60, intents=50, requests=400, seed=0, slate_size=8)  # tests/fakes.py's TINY_DATA


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("out", type=Path)
    ap.add_argument("--layers", type=int, default=QWEN3_06B["num_hidden_layers"], help="fewer for a quick try")
    args = ap.parse_args()

    import torch
    from transformers import AutoModelForCausalLM, Qwen3Config

    from rgalign.data.encoders import FeatureEncoders
    from rgalign.data.loader import load_dataset
    from rgalign.data.requests import build_requests
    from rgalign.data.synth import synthesize
    from rgalign.io import write_json_atomic
    from rgalign.models.prompt import PromptFields, build_prompt
    from rgalign.models.qe_ranker import QERanker, QERankerConfig
    from rgalign.models.reasoner import Reasoner, ReasonerConfig
    from rgalign.models.tokenizer import train_tokenizer

    t0 = time.perf_counter()
    data = synthesize(args.out / "data", **DATA)
    ds = load_dataset(data)
    enc = FeatureEncoders.fit(ds)
    fields = PromptFields.from_schema(ds.schema)
    train = build_requests(ds, enc, "train")
    tok = train_tokenizer([build_prompt(r, fields) for r in train.raw] + ds.intent_texts * 4, vocab_size=512)

    shape = {**QWEN3_06B, "num_hidden_layers": args.layers}
    hf_config = Qwen3Config(**shape, pad_token_id=tok.pad_token_id, bos_token_id=tok.bos_token_id,
                            eos_token_id=tok.eos_token_id, attn_implementation="sdpa")
    torch.manual_seed(0)
    backbone = AutoModelForCausalLM.from_config(hf_config).float().eval()
    n_params = sum(p.numel() for p in backbone.parameters())
    config = ReasonerConfig(backbone="qwen3-0.6b-shape (random init)", max_len=96, d_query=64)
    reasoner = Reasoner(config, tok, backbone=backbone).eval()
    ranker = QERanker(QERankerConfig(
        cardinalities=tuple(enc.cardinalities), n_numeric=len(enc.numeric_fields), n_intents=enc.num_intents,
        d_query=config.d_query, text_dim=reasoner.hidden_size, field_dim=16, dim=16, expert_hidden=32, seed=0,
    )).eval()
    ranker.set_intent_text_emb(reasoner.encode_texts(ds.intent_texts))

    run = args.out / "run"
    run.mkdir(parents=True, exist_ok=True)
    write_json_atomic(run / "run.json", {
        "seed": 0, "config": {"reasoner": config.to_dict()},
        "data": {"path": str(data.resolve()), "sha256": "synthetic"},
    })
    enc.to_json(run / "encoders.json")
    tok.save_pretrained(run / "tokenizer")
    write_json_atomic(run / "prompt_fields.json", fields.to_dict())
    reasoner.save(run / "stages" / "1-warmup" / "reasoner")
    write_json_atomic(run / "stages" / "1-warmup" / "stage.json", {"stage": 1, "name": "warmup"})
    ranker.save(run / "stages" / "2-reward" / "ranker")
    write_json_atomic(run / "stages" / "2-reward" / "stage.json",
                      {"stage": 2, "name": "reward", "reasoner": "stages/1-warmup/reasoner"})
    print(f"{run}: {n_params / 1e6:.0f}M parameters, {time.perf_counter() - t0:.0f} s")


if __name__ == "__main__":
    main()
