"""Models, one file per idea (imports are left to the caller: the reasoner pulls in transformers,
which the rankers do not need).

- `tokenizer`: byte-level BPE trained offline; prompt / (prompt, target) batches
- `prompt`: raw request features -> the reasoner's prompt text; clicked intents -> SFT target
- `reasoner`: causal LM -> latent query (last-token pooling); LM loss, log-probs, generation
- `layers`: field embedding, AutoInt interacting layer, mixture of experts, cross-attention
- `baseline`: AutoInt + MoE two-tower ranker (the paper's industrial baseline)
- `qe_ranker`: three-tower Query-Enhanced ranker with mutual attention
- `losses`: ListNet, BCE, KL-to-previous, and their combination
- `checkpoint`: ranker checkpoints (safetensors + JSON)
"""
