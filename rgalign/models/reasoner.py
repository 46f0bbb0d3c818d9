"""The reasoner: a causal LM that reads a request's prompt and returns its *latent query*.

    prompt tokens (B, T) --backbone--> final hidden states (B, T, H)
        --last real token--> (B, H) --Linear--> (B, d) --L2 normalise--> latent query (B, d)

The backbone is any Hugging Face causal LM (`AutoModelForCausalLM`): a local folder, or a hub name
where the machine has the hub. The default is a small Qwen3-architecture model built from
`ReasonerConfig` and trained from scratch with a tokenizer trained on the dataset: nothing is
downloaded. The paper uses Qwen3-4B; 4 layers x 256 hidden (about 3M parameters) is what a
2-core CPU trains in minutes and serves in about a millisecond per prompt.

Padding: the pooled position is the last token whose attention mask is 1, found from the mask
with tensor ops (no Python branching on values, so `torch.onnx.export` traces one graph), which
is right for left *and* right padding. Position ids are computed from the mask too
(``cumsum(mask) - 1``), so a left-padded prompt sees the same positions as the unpadded one and
gets the same latent query.

Besides the latent query the reasoner can: embed texts (`encode_texts`, the QE ranker's intent
text table), give the SFT loss (`lm_loss`), summed label log-probabilities (`sequence_logprobs`,
for DPO), and sample text queries (`generate_query`, for RGA's Best-of-N).

Checkpoint layout (`save` / `load`), no pickles::

    DIR/reasoner.json          ReasonerConfig + format version
    DIR/head.safetensors       the projection to d
    DIR/backbone/              a standard HF model folder (config.json, model.safetensors) and
                               the tokenizer files: usable on its own as ``--backbone DIR/backbone``
"""

from __future__ import annotations

import inspect
import os
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from safetensors.torch import save_file
from torch import nn
from transformers import AutoConfig, AutoModelForCausalLM, PreTrainedTokenizerBase, Qwen3Config
from transformers.utils import logging as _hf_logging

# checkpoints are tiny and local: the hub-download style progress bars are noise in our output
_hf_logging.disable_progress_bar()

from rgalign.config import from_dict
from rgalign.errors import ConfigError
from rgalign.io import atomic_dir, write_json_atomic
from rgalign.models.checkpoint import FORMAT_VERSION, read_meta
from rgalign.models.tokenizer import IGNORE_INDEX, encode_prompts, load_tokenizer
from rgalign.progress import first_line



@dataclass(frozen=True)
class ReasonerConfig:
    """What the reasoner is. The architecture fields are used only when ``backbone`` is None."""

    # None: build the default Qwen3-architecture model below; else a local folder or hub name
    backbone: str | None = None
    vocab_size: int = 2048  # upper bound; the built model uses the trained tokenizer's size
    hidden: int = 256
    layers: int = 4
    heads: int = 4
    kv_heads: int = 2  # grouped-query attention as in Qwen3: halves the K/V projections
    intermediate: int = 512  # 2x hidden: SwiGLU has three matrices, so 2x keeps the MLP ~ attention
    max_len: int = 128  # default prompts are ~30-50 tokens; 128 leaves room for the SFT target
    d_query: int = 64  # the paper's latent query size; what the ranker receives
    rope_theta: float = 10000.0
    tie_embeddings: bool = True  # input and output embeddings shared: 0.5M parameters saved
    attn_implementation: str = "sdpa"  # fused attention in eager PyTorch, exports to ONNX
    seed: int = 0  # weight init of the default backbone and the projection

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> ReasonerConfig:
        return from_dict(cls, d, where="reasoner config")


def _check_causal_lm(config: Any, source: str) -> None:
    from transformers.models.auto.modeling_auto import (
        MODEL_FOR_CAUSAL_LM_MAPPING_NAMES,
        MODEL_FOR_MASKED_LM_MAPPING_NAMES,
    )

    model_type = getattr(config, "model_type", None)
    if model_type not in MODEL_FOR_CAUSAL_LM_MAPPING_NAMES:
        raise ConfigError(
            f"backbone {source!r} is a {model_type!r} model, not a causal LM "
            "(AutoModelForCausalLM cannot load it): pass a decoder-only LM such as Qwen3"
        )
    # BERT-like encoders have a causal-LM head class too, but are bidirectional unless built as
    # decoders: last-token pooling and generation would be meaningless with them
    if model_type in MODEL_FOR_MASKED_LM_MAPPING_NAMES and not getattr(config, "is_decoder", False):
        raise ConfigError(
            f"backbone {source!r} is a bidirectional {model_type!r} encoder, not a causal LM: "
            "pass a decoder-only LM such as Qwen3"
        )


def default_backbone_config(cfg: ReasonerConfig, tokenizer: PreTrainedTokenizerBase) -> Qwen3Config:
    """The default backbone's HF config: Qwen3 architecture sized by ``cfg``."""
    if cfg.hidden % cfg.heads or cfg.heads % cfg.kv_heads:
        raise ConfigError(
            f"reasoner hidden={cfg.hidden}, heads={cfg.heads}, kv_heads={cfg.kv_heads}: "
            "hidden must divide by heads and heads by kv_heads"
        )
    vocab = len(tokenizer)
    if vocab > cfg.vocab_size:
        raise ConfigError(f"tokenizer has {vocab} tokens, more than reasoner vocab_size={cfg.vocab_size}")
    return Qwen3Config(
        vocab_size=vocab,
        hidden_size=cfg.hidden,
        intermediate_size=cfg.intermediate,
        num_hidden_layers=cfg.layers,
        num_attention_heads=cfg.heads,
        num_key_value_heads=cfg.kv_heads,
        head_dim=cfg.hidden // cfg.heads,
        # prompt + generated query; RoPE needs no table, this only bounds generation
        max_position_embeddings=2 * cfg.max_len,
        rope_parameters={"rope_type": "default", "rope_theta": cfg.rope_theta},
        tie_word_embeddings=cfg.tie_embeddings,
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        use_cache=True,
        attn_implementation=cfg.attn_implementation,
    )


def build_backbone(cfg: ReasonerConfig, tokenizer: PreTrainedTokenizerBase) -> nn.Module:
    """The causal LM: built from ``cfg`` (seeded) when ``cfg.backbone`` is None, else loaded.

    Raises `ConfigError` (one line) when the backbone folder is missing, holds no loadable
    config, or holds a model that is not a causal LM.
    """
    if cfg.backbone is None:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(cfg.seed)
            model = AutoModelForCausalLM.from_config(default_backbone_config(cfg, tokenizer))
        return model.float()

    source = cfg.backbone
    # "/x", "./x", "~/x" or anything that exists is a folder; "Qwen/Qwen3-0.6B" is a hub name
    local = os.path.exists(source) or source.startswith(("/", ".", "~")) or os.path.isabs(source)
    where = os.fspath(Path(source).expanduser()) if local else source
    if local:
        if not os.path.isdir(where):
            raise ConfigError(f"backbone folder {source!r} does not exist")
        if not os.path.isfile(os.path.join(where, "config.json")):
            raise ConfigError(f"backbone folder {source!r} has no config.json: it is not a HF model folder")
    try:
        config = AutoConfig.from_pretrained(where, local_files_only=local)
    except Exception as e:  # noqa: BLE001 - unreadable config / unknown hub name: one line
        raise ConfigError(f"cannot load backbone {source!r}: {first_line(e)}") from None
    _check_causal_lm(config, source)
    try:
        model = AutoModelForCausalLM.from_pretrained(
            where, local_files_only=local, dtype=torch.float32, attn_implementation=cfg.attn_implementation
        )
    except Exception as e:  # noqa: BLE001
        raise ConfigError(f"cannot load backbone weights from {source!r}: {first_line(e)}") from None
    if model.get_input_embeddings().num_embeddings < len(tokenizer):
        model.resize_token_embeddings(len(tokenizer))
    if model.config.pad_token_id is None:
        model.config.pad_token_id = tokenizer.pad_token_id
    return model


def last_token_index(attention_mask: torch.Tensor) -> torch.Tensor:
    """Index of the last real token of each row: (B, T) mask -> (B,) int64.

    ``argmax(mask * arange(T))``: the largest position whose mask is 1, whatever the padding
    side (right padding: ``sum(mask) - 1``; left padding: ``T - 1``). No branching on values.
    """
    t = attention_mask.shape[-1]
    positions = torch.arange(t, device=attention_mask.device, dtype=torch.long)
    return (attention_mask.long() * positions).argmax(dim=-1)


def position_ids_from_mask(attention_mask: torch.Tensor) -> torch.Tensor:
    """(B, T) -> (B, T): 0, 1, 2... over the real tokens (padding gets 0 on the left)."""
    return (attention_mask.long().cumsum(dim=-1) - 1).clamp(min=0)


def _sample_top_p(logits: torch.Tensor, top_p: float, generator: torch.Generator) -> torch.Tensor:
    """One token per row from the smallest set of tokens whose probability reaches ``top_p``
    (nucleus sampling; the most likely token is always kept): (B, V) logits -> (B,) int64."""
    probs = torch.softmax(logits, dim=-1)
    if top_p < 1.0:
        sorted_p, order = torch.sort(probs, dim=-1, descending=True)
        outside = sorted_p.cumsum(dim=-1) - sorted_p > top_p  # mass before the token already reaches top_p
        sorted_p = sorted_p.masked_fill(outside, 0.0)
        probs = torch.zeros_like(probs).scatter(-1, order, sorted_p)
    return torch.multinomial(probs, 1, generator=generator).squeeze(-1)


class Reasoner(nn.Module):
    """Causal LM backbone + projection to the latent query.

    Example:
        >>> r = Reasoner(ReasonerConfig(hidden=64, layers=2, heads=2, kv_heads=1), tokenizer)
        >>> batch = encode_prompts(tokenizer, [prompt], r.config.max_len)
        >>> r(batch["input_ids"], batch["attention_mask"]).shape
        torch.Size([1, 64])
    """

    def __init__(
        self,
        config: ReasonerConfig,
        tokenizer: PreTrainedTokenizerBase,
        backbone: nn.Module | None = None,
    ) -> None:
        super().__init__()
        self.config = config
        self.tokenizer = tokenizer  # not a module: saved beside the weights, never in them
        self.backbone = backbone if backbone is not None else build_backbone(config, tokenizer)
        hidden = self.backbone.config.hidden_size
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(config.seed + 1)
            self.proj = nn.Linear(hidden, config.d_query)
        # some causal LMs take no position_ids; decided once here, never in forward
        base_forward = inspect.signature(self.backbone.base_model.forward).parameters
        self._pass_positions = "position_ids" in base_forward
        # transformers 5 names the cache argument ``cache``; older and remote-code models ``past_key_values``
        lm_forward = inspect.signature(self.backbone.forward).parameters
        self._cache_arg = "cache" if "cache" in lm_forward else "past_key_values"
        self._logits_to_keep = "logits_to_keep" in lm_forward

    @property
    def hidden_size(self) -> int:
        return int(self.backbone.config.hidden_size)

    # ---- representations --------------------------------------------------------------------

    def hidden_states(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """Final-layer hidden states (after the final norm): (B, T) -> (B, T, H)."""
        kwargs: dict[str, Any] = {"input_ids": input_ids, "attention_mask": attention_mask, "use_cache": False}
        if self._pass_positions:
            kwargs["position_ids"] = position_ids_from_mask(attention_mask)
        return self.backbone.base_model(**kwargs).last_hidden_state

    def pooled(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """Hidden state at each row's last real token: (B, T) -> (B, H). No projection."""
        h = self.hidden_states(input_ids, attention_mask)
        idx = last_token_index(attention_mask)  # (B,)
        # gather, not h[arange(B), idx]: exports as one op and keeps B dynamic
        idx = idx.view(-1, 1, 1).expand(-1, 1, h.shape[-1])
        return h.gather(1, idx).squeeze(1)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """Latent query: input_ids (B, T) int64, attention_mask (B, T) int64 -> (B, d) float32,
        unit L2 norm."""
        return F.normalize(self.proj(self.pooled(input_ids, attention_mask)), dim=-1)

    @torch.no_grad()
    def encode_texts(
        self,
        texts: Sequence[str],
        tokenizer: PreTrainedTokenizerBase | None = None,
        batch_size: int = 64,
    ) -> torch.Tensor:
        """Embed texts with the backbone: last-token pooled hidden state, no projection.

        Returns (N, H) float32 on CPU. Used for the QE ranker's intent text table (once per KB).
        """
        tokenizer = tokenizer or self.tokenizer
        was_training = self.training
        self.eval()
        try:
            device = next(self.parameters()).device
            out = []
            for i in range(0, len(texts), batch_size):
                batch = encode_prompts(tokenizer, texts[i : i + batch_size], self.config.max_len)
                out.append(
                    self.pooled(batch["input_ids"].to(device), batch["attention_mask"].to(device)).float().cpu()
                )
            return torch.cat(out) if out else torch.zeros(0, self.hidden_size)
        finally:
            self.train(was_training)

    @torch.no_grad()
    def encode_prompts(
        self, prompts: Sequence[str], batch_size: int = 64
    ) -> torch.Tensor:
        """Latent queries of prompt strings: (N, d), in eval mode, on CPU."""
        was_training = self.training
        self.eval()
        try:
            device = next(self.parameters()).device
            out = []
            for i in range(0, len(prompts), batch_size):
                batch = encode_prompts(self.tokenizer, prompts[i : i + batch_size], self.config.max_len)
                out.append(self(batch["input_ids"].to(device), batch["attention_mask"].to(device)).float().cpu())
            return torch.cat(out) if out else torch.zeros(0, self.config.d_query)
        finally:
            self.train(was_training)

    # ---- language modelling -----------------------------------------------------------------

    def _lm_logits(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        kwargs: dict[str, Any] = {"input_ids": input_ids, "attention_mask": attention_mask, "use_cache": False}
        if self._pass_positions:
            kwargs["position_ids"] = position_ids_from_mask(attention_mask)
        return self.backbone(**kwargs).logits

    def lm_loss(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor, labels: torch.Tensor
    ) -> torch.Tensor:
        """Mean next-token cross-entropy over label tokens (labels -100 elsewhere): scalar.

        (B, T) each; ``labels[t]`` is predicted from positions < t (shift done here).
        """
        logits = self._lm_logits(input_ids, attention_mask)
        return F.cross_entropy(
            logits[:, :-1].reshape(-1, logits.shape[-1]).float(),
            labels[:, 1:].reshape(-1),
            ignore_index=IGNORE_INDEX,
        )

    def sequence_logprobs(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor, labels: torch.Tensor
    ) -> torch.Tensor:
        """Summed log-probability of each row's label tokens: (B, T) -> (B,). For DPO."""
        logits = self._lm_logits(input_ids, attention_mask)[:, :-1].float()
        target = labels[:, 1:]
        keep = target != IGNORE_INDEX
        logp = torch.log_softmax(logits, dim=-1)
        tok = logp.gather(-1, target.clamp(min=0).unsqueeze(-1)).squeeze(-1)
        return (tok * keep).sum(dim=-1)

    @torch.no_grad()
    def generate_query(
        self,
        prompts: Sequence[str],
        tokenizer: PreTrainedTokenizerBase | None = None,
        n: int = 4,
        temperature: float = 1.0,
        top_p: float = 0.95,
        max_new_tokens: int = 24,
        seed: int | None = None,
    ) -> list[list[str]]:
        """Sample ``n`` text queries per prompt: a list (one per prompt) of ``n`` strings.

        Used only in training (RGA's Best-of-N candidates). Nucleus sampling (``top_p``) at
        ``temperature``, stopping at ``<eos>``. Each prompt is run once and its key/value cache
        repeated for its ``n`` samples (``generate(num_return_sequences=n)`` would run the
        ~40-token prompt n times: most of the work). Prompts are left-padded whatever the
        tokenizer's setting; ``seed`` makes the samples reproducible without touching the global
        RNG. ``max_new_tokens`` 24 covers an intent-like query ("where is my parcel, it is late").
        """
        from transformers import DynamicCache

        tokenizer = tokenizer or self.tokenizer
        if not prompts:
            return []
        if temperature <= 0 or not 0 < top_p <= 1:
            raise ConfigError(f"sampling needs temperature > 0 and 0 < top_p <= 1, got {temperature}, {top_p}")
        side = tokenizer.padding_side
        was_training = self.training
        self.eval()
        tokenizer.padding_side = "left"
        try:
            device = next(self.parameters()).device
            batch = encode_prompts(tokenizer, prompts, self.config.max_len)
        finally:
            tokenizer.padding_side = side
        try:
            gen = torch.Generator(device=device)
            gen.manual_seed(int(seed) if seed is not None else int(torch.randint(0, 2**62, (1,))))
            ids = batch["input_ids"].to(device)
            mask = batch["attention_mask"].to(device)
            cache = DynamicCache(config=self.backbone.config)
            logits = self._step(ids, mask, cache)
            cache.batch_repeat_interleave(n)
            logits, mask = logits.repeat_interleave(n, dim=0), mask.repeat_interleave(n, dim=0)
            done = torch.zeros(logits.shape[0], dtype=torch.bool, device=device)
            steps = []
            for _ in range(max_new_tokens):
                token = _sample_top_p(logits / temperature, top_p, gen)
                token = torch.where(done, tokenizer.pad_token_id, token)
                steps.append(token)
                done |= token == tokenizer.eos_token_id
                if bool(done.all()):
                    break
                mask = torch.cat([mask, torch.ones_like(mask[:, :1])], dim=1)
                logits = self._step(token[:, None], mask, cache)
        finally:
            self.train(was_training)
        out = torch.stack(steps, dim=1) if steps else torch.zeros(len(prompts) * n, 0, dtype=torch.long)
        texts = [t.strip() for t in tokenizer.batch_decode(out, skip_special_tokens=True)]
        return [texts[i * n : (i + 1) * n] for i in range(len(prompts))]

    def _step(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, cache: Any) -> torch.Tensor:
        """One forward over ``input_ids`` on top of ``cache`` (updated in place): next-token
        logits (B, V) of the last position. Positions come from the whole attention mask."""
        kwargs: dict[str, Any] = {"input_ids": input_ids, "attention_mask": attention_mask, "use_cache": True,
                                  self._cache_arg: cache}
        if self._logits_to_keep:
            kwargs["logits_to_keep"] = 1  # the LM head on the last position only
        if self._pass_positions:
            kwargs["position_ids"] = position_ids_from_mask(attention_mask)[:, -input_ids.shape[1] :]
        return self.backbone(**kwargs).logits[:, -1].float()

    # ---- checkpoint -------------------------------------------------------------------------

    def save(self, directory: str | os.PathLike) -> Path:
        """Write the checkpoint folder atomically (layout in the module docstring)."""
        with atomic_dir(directory) as tmp:
            self.backbone.save_pretrained(tmp / "backbone", safe_serialization=True)
            self.tokenizer.save_pretrained(tmp / "backbone")
            save_file(
                {k: v.detach().cpu().contiguous() for k, v in self.proj.state_dict().items()},
                os.fspath(tmp / "head.safetensors"),
            )
            write_json_atomic(
                tmp / "reasoner.json",
                {"format_version": FORMAT_VERSION, "kind": "reasoner", "config": self.config.to_dict()},
            )
        return Path(directory)

    @classmethod
    def load(cls, directory: str | os.PathLike, padding_side: str | None = None) -> Reasoner:
        """Load a folder written by `save`; outputs are identical to the saved model's."""
        directory = Path(directory)
        config = ReasonerConfig.from_dict(read_meta(directory, "reasoner", "reasoner.json"))
        tokenizer = load_tokenizer(directory / "backbone", padding_side=padding_side)
        # the saved backbone folder is the backbone now, whatever the config first said
        backbone = build_backbone(
            ReasonerConfig.from_dict({**config.to_dict(), "backbone": os.fspath(directory.resolve() / "backbone")}),
            tokenizer,
        )
        model = cls(config, tokenizer, backbone=backbone)
        from rgalign.models.checkpoint import load_weights

        model.proj.load_state_dict(load_weights(directory / "head.safetensors"))
        model.eval()
        return model
