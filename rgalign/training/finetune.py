"""How the reasoner trains in stages 1, 3, 4 and 5: fully, or through LoRA adapters; with or
without gradient checkpointing; in fp32 or under bf16 autocast (`FinetuneConfig`).

    tuning = start(reasoner, train_config)             # adapters in, checkpointing on
    loops.train_sft(reasoner, ..., autocast=tuning.autocast)
    with tuning.base_model():                          # adapters off: the model before the stage
        reference_logprobs = ...                       # (DPO's reference, without a second copy)
    tuning.merge()                                     # adapters folded into the weights
    reasoner.save(d)                                   # a plain checkpoint: export is unchanged

LoRA (Hu et al., 2021) through ``peft``: low-rank adapters on the backbone's linear layers
(``lora_targets``), the backbone's own weights frozen; the projection head to the latent query
stays fully trainable (64k parameters, and RG-CL's signal reaches it first). At the end of a
stage the adapters are merged (``merge_and_unload``): the backbone is again the plain HF model it
was, with the same modules and shapes, so the checkpoint loads with `Reasoner.load` and exports
to the same graph. Every stage starts fresh adapters on the previous stage's merged weights.

Why it matters (measured at Qwen3-0.6B's shape, see README "Big backbones"): full fine-tuning
keeps fp32 gradients and two AdamW moments for all ~0.6B parameters (~7 GB on top of the 2.4 GB
of weights); LoRA keeps them for ~10M.
"""

from __future__ import annotations

import contextlib
import warnings
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager
from dataclasses import asdict, dataclass
from typing import Any

import torch
from torch import nn

from rgalign.errors import ConfigError
from rgalign.progress import first_line
from rgalign.training.config import FinetuneConfig, TrainConfig


@dataclass(frozen=True)
class FinetunePlan:
    """The switches of `FinetuneConfig` resolved for one backbone on one device."""

    lora: bool
    gradient_checkpointing: bool
    bf16: bool

    def to_dict(self) -> dict[str, bool]:
        return asdict(self)


def bf16_supported(device: torch.device) -> bool:
    """Whether ``auto`` turns bf16 autocast on: a CUDA device that has bf16 (Ampere and later)."""
    return device.type == "cuda" and torch.cuda.is_available() and torch.cuda.is_bf16_supported()


def finetune_plan(cfg: FinetuneConfig, *, loaded_backbone: bool, device: torch.device) -> FinetunePlan:
    """``auto`` resolved: LoRA and checkpointing for a loaded backbone, bf16 where the device has it."""

    def pick(switch: str, auto: bool) -> bool:
        return auto if switch == "auto" else switch == "on"

    return FinetunePlan(
        lora=pick(cfg.lora, loaded_backbone),
        gradient_checkpointing=pick(cfg.gradient_checkpointing, loaded_backbone),
        bf16=pick(cfg.bf16, bf16_supported(device)),
    )


def start_plan(reasoner: nn.Module, config: TrainConfig) -> FinetunePlan:
    """The plan for ``reasoner`` in a run of ``config``; ``auto`` reads whether the run loads its
    backbone (``--backbone``) from the run's config, not from the reasoner's (a reasoner loaded
    from a checkpoint always names its folder)."""
    device = next(reasoner.parameters()).device
    return finetune_plan(config.finetune, loaded_backbone=config.reasoner.backbone is not None, device=device)


def start(reasoner: nn.Module, config: TrainConfig) -> Tuning:
    """Set ``reasoner`` up for a stage's training as ``config.finetune`` says (`start_plan`)."""
    return Tuning(reasoner, config.finetune, start_plan(reasoner, config))


def autocast_for(device: torch.device, bf16: bool) -> Callable[[], AbstractContextManager]:
    """A factory of the context the forward passes run in: ``torch.autocast(device.type,
    torch.bfloat16)`` when ``bf16``, else nothing at all (the fp32 path is the code as it was)."""
    if not bf16:
        return contextlib.nullcontext
    return lambda: torch.autocast(device_type=device.type, dtype=torch.bfloat16)


def count_parameters(module: nn.Module) -> tuple[int, int]:
    """(trainable, total) parameters of ``module``, each shared tensor counted once."""
    seen: set[int] = set()
    trainable = total = 0
    for p in module.parameters():
        if id(p) in seen:
            continue
        seen.add(id(p))
        total += p.numel()
        trainable += p.numel() if p.requires_grad else 0
    return trainable, total


class Tuning:
    """The reasoner set up for one stage's training, as ``plan`` says; `merge` undoes the set-up
    and folds the adapters into the weights.

    ``reasoner.backbone`` stays the same HF model object throughout: peft replaces its linear
    layers in place (``get_peft_model``), and the `peft.PeftModel` wrapper is kept here only for
    its ``disable_adapter`` and ``merge_and_unload``. The reasoner's own code (pooling, LM loss,
    generation) runs unchanged on it.
    """

    def __init__(self, reasoner: nn.Module, cfg: FinetuneConfig, plan: FinetunePlan) -> None:
        self.reasoner = reasoner
        self.plan = plan
        self.peft: Any = None
        self.device = next(reasoner.parameters()).device
        self.autocast = autocast_for(self.device, plan.bf16)
        backbone = reasoner.backbone
        if plan.gradient_checkpointing:
            if not getattr(backbone, "supports_gradient_checkpointing", False):
                raise ConfigError(f"activation checkpointing: {type(backbone).__name__} does not support it; "
                                  "set finetune.gradient_checkpointing: off")
            _checkpointing(backbone, True)
        if plan.lora:
            self.peft = _attach_lora(backbone, cfg)
        self.trainable_parameters, self.total_parameters = count_parameters(reasoner)

    @contextlib.contextmanager
    def base_model(self) -> Iterator[nn.Module]:
        """The reasoner with its adapters off: its backbone as it was when the stage began, what
        a frozen copy taken then would compute, without a second copy of the weights (the DPO
        reference). The head is not adapted but trained in place: it is the current one. Only
        with LoRA: a fully fine-tuned model's starting weights are gone, and its stages keep a
        copy as before."""
        if self.peft is None:
            raise RuntimeError("base_model() needs LoRA: without adapters the starting weights are not kept")
        with self.peft.disable_adapter():
            yield self.reasoner

    def merge(self) -> None:
        """Fold the adapters into the weights and leave a plain backbone (no LoRA modules, no
        checkpointing), every parameter trainable again, as `Reasoner.load` would give it."""
        backbone = self.reasoner.backbone
        if self.peft is not None:
            merged = self.peft.merge_and_unload()
            for attr in ("peft_config", "_hf_peft_config_loaded"):  # nothing of peft in the saved config
                if attr in merged.__dict__:
                    delattr(merged, attr)
            self.reasoner.backbone = backbone = merged
            self.peft = None
        if self.plan.gradient_checkpointing:
            _checkpointing(backbone, False)
        for p in self.reasoner.parameters():
            p.requires_grad_(True)

    def info(self) -> dict[str, Any]:
        """What stage.json records of how the stage trained."""
        return {**self.plan.to_dict(), "trainable_parameters": self.trainable_parameters,
                "total_parameters": self.total_parameters}


def summary(tuning: Tuning) -> str:
    """The log line's tail: how the stage trained, when not in full (the default's line is as it was)."""
    p = tuning.plan
    if not (p.lora or p.gradient_checkpointing or p.bf16):
        return ""
    parts = [f"LoRA {tuning.trainable_parameters / 1e6:.2f}M of {tuning.total_parameters / 1e6:.1f}M parameters trained"
             if p.lora else "full fine-tuning"]
    parts += ["gradient checkpointing"] * p.gradient_checkpointing + ["bf16 autocast"] * p.bf16
    return " (" + ", ".join(parts) + ")"


def _checkpointing(backbone: nn.Module, on: bool) -> None:
    """Activation (gradient) checkpointing of the HF backbone's blocks, on or off. transformers
    5.x renamed ``gradient_checkpointing_enable`` to ``activation_checkpointing_enable`` (the old
    name warns, and goes in v6): the new one where it exists."""
    # non-reentrant: torch's recommendation, and the variant that works when a block's inputs
    # need no gradient (frozen embeddings under LoRA)
    kwargs = {"use_reentrant": False}
    if hasattr(backbone, "activation_checkpointing_enable"):
        if on:
            backbone.activation_checkpointing_enable(activation_checkpointing_kwargs=kwargs)
        else:
            backbone.activation_checkpointing_disable()
    elif on:
        backbone.gradient_checkpointing_enable(gradient_checkpointing_kwargs=kwargs)
    else:
        backbone.gradient_checkpointing_disable()


def _attach_lora(backbone: nn.Module, cfg: FinetuneConfig) -> Any:
    try:
        from peft import LoraConfig, get_peft_model
    except ImportError as e:  # a dependency of rgalign: only a broken install lacks it
        raise ConfigError(f"LoRA needs peft ({e}); reinstall rgalign (`make install`) or set --lora off") from None
    targets: Any = list(cfg.lora_targets)
    if targets == ["all-linear"]:
        targets = "all-linear"  # peft's own keyword: every linear layer but the output head
    config = LoraConfig(r=cfg.lora_rank, lora_alpha=cfg.lora_alpha, lora_dropout=cfg.lora_dropout,
                        target_modules=targets, bias="none")
    try:
        with warnings.catch_warnings():
            # peft 0.21 reads transformers' deprecated ``is_gradient_checkpointing``: its warning
            # is peft's to fix, and says nothing to a user of rgalign
            warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*", category=FutureWarning)
            return get_peft_model(backbone, config)
    except (ValueError, TypeError, KeyError) as e:  # e.g. no module of that name in this architecture
        raise ConfigError(f"LoRA on {type(backbone).__name__}: {first_line(e)}; check finetune.lora_targets") from None
