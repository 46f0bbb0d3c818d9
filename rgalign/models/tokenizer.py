"""The reasoner's tokenizer: byte-level BPE trained offline on the dataset's own text, and the two
ways text becomes model input (a prompt alone; a prompt followed by a target for SFT / DPO).

Nothing is downloaded: `train_tokenizer` learns the vocabulary from the prompts and intent texts
of the training split, with the `tokenizers` library. Byte-level means every string is encodable
(no unknown characters, so an unseen value at serving time never crashes the tokenizer), and the
BPE trainer is deterministic: same texts, same vocabulary, in any process.

Example:
    >>> tok = train_tokenizer(["user: tier=gold | query:", "Where is my parcel?"], vocab_size=300)
    >>> tok.decode(tok("Where is my parcel?")["input_ids"], skip_special_tokens=True)
    'Where is my parcel?'
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Sequence

import torch
from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, processors, trainers
from transformers import AutoTokenizer, PreTrainedTokenizerFast

from rgalign.errors import ConfigError
from rgalign.models.saved_tokenizer import open_saved_tokenizer

PAD, BOS, EOS, UNK = "<pad>", "<bos>", "<eos>", "<unk>"
SPECIAL_TOKENS = (PAD, BOS, EOS, UNK)  # ids 0..3, in this order, in every trained tokenizer

IGNORE_INDEX = -100  # label value the LM loss skips (HF convention)

# Where BPE may merge: GPT-2's byte-level word split, with two changes for prompts made of
# `key=value` fields: a word may hold `_` and digits after its first letter, and a key keeps its
# `=` or `:` and the `;` or `|` separator before it. So a field's key with its separator
# ("; days_since_last_order=", " | recent_actions:") can become one token where GPT-2's split cuts
# it at every `_`, `=` and `;` into up to 9. On the default synthetic prompts that is 37 tokens a
# prompt instead of 79; the reasoner's cost (training, latent queries, serving) follows the count.
WORD_SPLIT = r"(?: ?[;|])? ?[\p{L}_][\p{L}\p{N}_]*[=:]|'(?:s|t|re|ve|m|ll|d)| ?[\p{L}_][\p{L}\p{N}_]*| ?\p{N}+| ?[^\s\p{L}\p{N}_]+|\s+(?!\S)|\s+"


def train_tokenizer(
    texts: Iterable[str],
    vocab_size: int = 2048,
    *,
    padding_side: str = "left",
    min_frequency: int = 2,
    model_max_length: int = 128,
) -> PreTrainedTokenizerFast:
    """Train a byte-level BPE tokenizer on ``texts``, offline and deterministically; merges stay
    inside the pieces `WORD_SPLIT` cuts a text into.

    ``vocab_size`` 2048 is enough for a prompt vocabulary of feature names, category values and
    KB intent texts (a few thousand distinct words), and keeps the reasoner's embedding and LM
    head small (2048 x hidden). ``min_frequency`` 2 keeps one-off strings from taking merges.
    The vocabulary can come out smaller than ``vocab_size`` on a small corpus.

    Encoding adds ``<bos>`` in front (no ``<eos>``: a prompt must end at its last real token,
    which is where the latent query is pooled). ``padding_side`` ("left" or "right") is what
    batches are padded with; the reasoner's pooling is correct for both. Truncation keeps the
    *end* of a text (``truncation_side="left"``), where a prompt's ``query:`` marker is.
    """
    if padding_side not in ("left", "right"):
        raise ConfigError(f"padding_side must be 'left' or 'right', got {padding_side!r}")
    tok = Tokenizer(models.BPE(unk_token=UNK))
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(WORD_SPLIT), behavior="isolated"),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
    ])
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=min_frequency,
        special_tokens=list(SPECIAL_TOKENS),
        # the full byte alphabet, so any string (emoji, other scripts) stays encodable
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator((t for t in texts), trainer=trainer)
    bos_id = tok.token_to_id(BOS)
    tok.post_processor = processors.TemplateProcessing(
        single=f"{BOS} $A", pair=f"{BOS} $A $B", special_tokens=[(BOS, bos_id)]
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token=BOS,
        eos_token=EOS,
        pad_token=PAD,
        unk_token=UNK,
        padding_side=padding_side,
        truncation_side="left",
        model_max_length=model_max_length,
    )


def load_tokenizer(path: str | os.PathLike, padding_side: str | None = None) -> PreTrainedTokenizerFast:
    """Load a tokenizer saved with ``save_pretrained`` from a local folder (never the hub)."""
    return open_saved_tokenizer(path, lambda p: AutoTokenizer.from_pretrained(p, local_files_only=True), padding_side)


def encode_prompts(
    tokenizer: PreTrainedTokenizerFast, prompts: Sequence[str], max_len: int
) -> dict[str, torch.Tensor]:
    """Tokenise prompts for the reasoner's forward pass.

    Returns ``input_ids`` (B, T) int64 and ``attention_mask`` (B, T) int64, padded on the
    tokenizer's ``padding_side`` to the longest prompt (T <= ``max_len``); a longer prompt keeps
    ``<bos>`` and its last ``max_len - 1`` tokens (the end holds the ``query:`` marker).
    """
    enc = tokenizer(
        list(prompts),
        padding=True,
        truncation=True,
        max_length=max_len,
        return_tensors="pt",
    )
    return {"input_ids": enc["input_ids"], "attention_mask": enc["attention_mask"]}


def encode_pairs(
    tokenizer: PreTrainedTokenizerFast,
    prompts: Sequence[str],
    targets: Sequence[str],
    max_len: int,
) -> dict[str, torch.Tensor]:
    """Tokenise (prompt, target) pairs for SFT / DPO: ``<bos> prompt target <eos>``.

    Returns ``input_ids``, ``attention_mask`` and ``labels``, each (B, T) int64. ``labels`` is
    the token id on target tokens (and the closing ``<eos>``, so the model learns to stop) and
    ``IGNORE_INDEX`` (-100) on prompt and padding tokens. Prompt and target are tokenised apart,
    so the label boundary is exact; targets from ``build_target`` start with a space, and byte-
    level BPE attaches that space to the first word, so the ids equal those of the joined string.
    If a pair is longer than ``max_len`` the target keeps at most half of it, and the prompt
    keeps ``<bos>`` and its end, as in `encode_prompts`.
    """
    if len(prompts) != len(targets):
        raise ConfigError(f"{len(prompts)} prompts but {len(targets)} targets")
    p_ids = tokenizer(list(prompts), add_special_tokens=True)["input_ids"]
    t_ids = tokenizer(list(targets), add_special_tokens=False)["input_ids"]
    eos = tokenizer.eos_token_id
    rows: list[tuple[list[int], list[int]]] = []
    for p, t in zip(p_ids, t_ids):
        t = (list(t) + [eos])[: max(1, max_len // 2)]
        budget = max_len - len(t)
        if len(p) > budget:  # keep <bos>, drop from the front of the prompt text
            p = [p[0]] + list(p[len(p) - budget + 1 :])
        rows.append((p, t))
    width = max(len(p) + len(t) for p, t in rows)
    pad = tokenizer.pad_token_id
    ids = torch.full((len(rows), width), pad, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    labels = torch.full((len(rows), width), IGNORE_INDEX, dtype=torch.long)
    for i, (p, t) in enumerate(rows):
        n = len(p) + len(t)
        start = width - n if tokenizer.padding_side == "left" else 0
        ids[i, start : start + n] = torch.tensor(p + t)
        mask[i, start : start + n] = 1
        labels[i, start + len(p) : start + n] = torch.tensor(t)
    return {"input_ids": ids, "attention_mask": mask, "labels": labels}
