"""Test doubles shared by several test folders (``tests/`` is on ``sys.path``: its conftest.py
sits in a folder without ``__init__.py``). `make_fake_run`: a training run for export, serving
and benchmark tests, built in seconds: the 50-intent synthetic dataset (`rgalign.data.synth.tiny_dataset`'s
draws, written to disk so the run's data path works), encoders fitted on it, a tokenizer trained on
its prompts, the tiny 2-layer reasoner and a QE ranker sized from the encoders, laid out as
`rgalign train` lays out a run."""

from __future__ import annotations

from pathlib import Path

from rgalign.io import write_json_atomic

TINY_DATA = dict(users=60, intents=50, requests=400, seed=0, slate_size=8)  # = tiny_dataset()'s


def make_fake_run(tmp_path: Path, seed: int = 0) -> Path:
    """``tmp_path/run``: run.json, encoders.json, tokenizer/, prompt_fields.json and stages
    1-warmup/reasoner + 2-reward/ranker (with their stage.json), from ``tmp_path/data``."""
    from rgalign.data.encoders import FeatureEncoders
    from rgalign.data.loader import load_dataset
    from rgalign.data.requests import build_requests
    from rgalign.data.synth import synthesize
    from rgalign.models.prompt import PromptFields, build_prompt
    from rgalign.models.qe_ranker import QERanker, QERankerConfig
    from rgalign.models.reasoner import Reasoner
    from tiny import tiny_reasoner_config
    from rgalign.models.tokenizer import train_tokenizer

    data = synthesize(tmp_path / "data", **TINY_DATA)
    ds = load_dataset(data)
    enc = FeatureEncoders.fit(ds)
    fields = PromptFields.from_schema(ds.schema)
    train = build_requests(ds, enc, "train")
    prompts = [build_prompt(r, fields) for r in train.raw]
    tok = train_tokenizer(prompts + ds.intent_texts * 4, vocab_size=512)

    reasoner = Reasoner(tiny_reasoner_config(seed=seed), tok).eval()
    # tiny_qe_ranker's cardinalities are those of tests/tiny.py's requests, not this
    # dataset's: size the ranker from the encoders, with tiny's other dimensions
    ranker = QERanker(QERankerConfig(
        cardinalities=tuple(enc.cardinalities), n_numeric=len(enc.numeric_fields), n_intents=enc.num_intents,
        d_query=reasoner.config.d_query, text_dim=reasoner.hidden_size, field_dim=16, dim=16,
        expert_hidden=32, seed=seed,
    )).eval()
    ranker.set_intent_text_emb(reasoner.encode_texts(ds.intent_texts))

    run = tmp_path / "run"
    run.mkdir()
    write_json_atomic(run / "run.json", {
        "seed": seed, "config": {"reasoner": reasoner.config.to_dict()},
        "data": {"path": str(data.resolve()), "sha256": "fake"},
    })
    enc.to_json(run / "encoders.json")
    tok.save_pretrained(run / "tokenizer")
    write_json_atomic(run / "prompt_fields.json", fields.to_dict())
    warm = run / "stages" / "1-warmup"
    reasoner.save(warm / "reasoner")
    write_json_atomic(warm / "stage.json", {"stage": 1, "name": "warmup"})
    reward = run / "stages" / "2-reward"
    ranker.save(reward / "ranker")
    write_json_atomic(reward / "stage.json", {"stage": 2, "name": "reward", "reasoner": "stages/1-warmup/reasoner"})
    return run


# A training config small enough for end-to-end tests of every stage (seconds per stage), and the
# dataset it trains on (`rgalign.data.synth.synthesize` arguments).
TINY_TRAIN = {
    "reasoner": {"vocab_size": 400, "hidden": 64, "layers": 2, "heads": 2, "kv_heads": 1, "intermediate": 128,
                 "max_len": 96, "d_query": 16, "tokenizer_corpus": 200},
    "ranker": {"field_dim": 8, "dim": 16, "expert_hidden": 32, "n_experts": 2},
    "baseline": {"epochs": 2, "batch_size": 64},
    "warmup": {"max_examples": 48, "batch_size": 16},
    "reward": {"epochs": 2, "batch_size": 64},
    "rg_sft": {"max_requests": 48, "batch_size": 16, "max_new_tokens": 8},
    "dpo": {"batch_size": 8, "min_margin": 0.0},
    "rg_cl": {"max_requests": 80, "batch_size": 32},
    "calibrate": {"epochs": 2, "batch_size": 64},
}
E2E_DATA = {"users": 60, "intents": 50, "requests": 300, "seed": 0, "slate_size": 8}
