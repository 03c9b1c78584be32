"""The causal-LM stages: the tokenizer and base LM (plain seed text, packed) and SFT (the model's
prompt format, loss on the answer tokens by default), each registered as a version.

Both train with TRL's SFTTrainer (`sft_trl`), or, for the first visit's models, with the lean
torch loop of `lean` (`trainer="torch"`): this module imports neither TRL nor `datasets`, so a
process that only trains the first models never pays for their import.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import torch
from transformers import AutoModelForCausalLM, PreTrainedModel, PreTrainedTokenizerBase

from kindchat.config import Settings
from kindchat.models.loading import load_causal_lm
from kindchat.models.presets import Preset, StageBudget
from kindchat.models.registry import Manifest, Registry
from kindchat.models.tokenizer import train_tokenizer
from kindchat.retrain.common import (
    LoraOptions,
    check_trainer_fields,
    config_dict,
    new_run_dir,
    register_model,
)
from kindchat.retrain.data import base_corpus, load_sft_split, prompt_completion_columns
from kindchat.retrain.evaluate import response_perplexity
from kindchat.seed import fingerprint

logger = logging.getLogger(__name__)

Trainer = Literal["trl", "torch"]


@dataclass
class SftConfig:
    """Hyper-parameters of one SFT (or base-LM) run."""

    epochs: float = 1.0  # passes over the training set (ignored when max_steps > 0)
    max_steps: int = -1  # optimiser steps; -1 runs `epochs` epochs
    batch_size: int = 8  # sequences per optimiser step
    learning_rate: float = 5e-4  # peak LR of the cosine schedule
    max_length: int = 256  # tokens per sequence (prompt + answer, or a packed block)
    completion_only_loss: bool = True  # loss on answer tokens only (SFT); False trains on all
    heldout_fraction: float = 0.05  # share of records held out by id hash for perplexity
    exclude_eval_prompts: bool = True  # keep rm/*_test.json prompts out of training
    max_records: int | None = None  # use a slice of the data (micro runs)
    lora: LoraOptions = field(default_factory=LoraOptions)
    deepspeed: Path | None = None  # a DeepSpeed JSON config passed to the HF trainer
    gradient_checkpointing: bool = False  # recompute activations: less memory, more compute
    seed: int = 0
    # "trl": TRL's SFTTrainer; "torch": the lean loop (`lean`), for the first visit's models:
    # no LoRA, DeepSpeed or activation checkpointing there
    trainer: Trainer = "trl"

    @classmethod
    def for_preset(cls, preset: Preset, stage: str = "sft", **fields: Any) -> SftConfig:
        """The config of a preset's `base` or `sft` stage: its budget and sequence length;
        `fields` set the rest, or override the budget's."""
        budget: StageBudget = getattr(preset, stage)
        from_budget = {
            "epochs": budget.epochs,
            "max_steps": budget.max_steps,
            "batch_size": budget.batch_size,
            "learning_rate": budget.learning_rate,
            "max_length": preset.seq_len,
            "max_records": budget.max_records,
            "seed": budget.seed,
        }
        return cls(**(from_budget | fields))

    def __post_init__(self) -> None:
        check_trainer_fields(self, min_length=16)
        if self.trainer not in ("trl", "torch"):
            raise ValueError(f"trainer must be 'trl' or 'torch', got {self.trainer!r}")
        if self.trainer == "torch" and (
            self.lora.enabled or self.deepspeed is not None or self.gradient_checkpointing
        ):
            raise ValueError("LoRA, DeepSpeed and activation checkpointing need trainer='trl'")


def train_causal_lm(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    columns: dict[str, list[str]],
    config: SftConfig,
    run_dir: Path,
    stage: str,
    packing: bool = False,
) -> tuple[PreTrainedModel, dict[str, Any]]:
    """Train `model` on `columns` (`text`, packed; or `prompt` and `completion`) with the
    config's trainer. Returns the trained model (LoRA merged in, if used, eval mode) and the
    train metrics."""
    if config.trainer == "torch":
        from kindchat.retrain import lean

        if packing:
            examples = lean.packed_examples(tokenizer, columns["text"], config.max_length)
        else:
            examples = lean.completion_examples(
                tokenizer, columns["prompt"], columns["completion"], config.max_length
            )
        return model, lean.fit_causal_lm(model, examples, config, tokenizer.pad_token_id, stage)
    # TRL and `datasets` (~10 s of imports on a fresh install): only where they are used
    from kindchat.retrain.sft_trl import train_with_trl

    return train_with_trl(model, tokenizer, columns, config, run_dir, stage, packing)


def train_base(
    settings: Settings, registry: Registry, preset: Preset, trainer: Trainer = "trl"
) -> Manifest:
    """Train the BPE tokenizer and a base LM of the preset's architecture on the seed text."""
    budget = preset.base
    # Leave out every held-out SFT record (the full split), report perplexity on the sliced one.
    texts = base_corpus(settings.data_dir, load_sft_split(settings.data_dir))
    split = load_sft_split(settings.data_dir, max_records=preset.sft.max_records)
    if budget.max_records is not None:
        texts = texts[: budget.max_records]
    logger.info(
        "tokenizer: training a %d-token byte-level BPE on %d texts", preset.vocab_size, len(texts)
    )
    tokenizer = train_tokenizer(texts, preset.vocab_size)
    model_config = preset.model_config(
        len(tokenizer), tokenizer.eos_token_id, tokenizer.pad_token_id
    )
    # the initial weights too: one preset, one base model, every run (torch's generator alone:
    # transformers' `set_seed` also seeds numpy and imports its trainer utilities and peft)
    torch.manual_seed(budget.seed)
    model = AutoModelForCausalLM.from_config(model_config)
    n_params = sum(p.numel() for p in model.parameters())
    logger.info("base LM: %.2fM parameters, preset %s", n_params / 1e6, preset.name)
    # the base reads `budget.max_records` texts itself (above): the config records them
    config = SftConfig.for_preset(preset, "base", completion_only_loss=False, trainer=trainer)
    run_dir = new_run_dir(settings.runs_dir, "base")
    model, metrics = train_causal_lm(
        model, tokenizer, {"text": texts}, config, run_dir, "base", packing=True
    )
    metrics["heldout_ppl"] = response_perplexity(model, tokenizer, split.heldout, preset.seq_len)
    metrics["parameters"] = n_params

    return register_model(
        registry,
        "base",
        model,
        tokenizer,
        parents=[],
        config={
            "preset": preset.name,
            "architecture": preset.architecture,
            "stage": config_dict(config),
        },
        metrics=metrics,
        data_fingerprint=fingerprint(texts),
    )


def train_sft(settings: Settings, registry: Registry, base_ref: str, config: SftConfig) -> Manifest:
    """SFT of a base LM (alias, version or directory) on the seed SFT data; register the result."""
    base_dir = registry.resolve(base_ref)
    model, tokenizer = load_causal_lm(base_dir)
    model.train()
    split = load_sft_split(
        settings.data_dir,
        heldout_fraction=config.heldout_fraction,
        exclude_eval_prompts=config.exclude_eval_prompts,
        max_records=config.max_records,
    )
    logger.info(
        "sft: %d train / %d held-out records (%d evaluation prompts left out)",
        len(split.train),
        len(split.heldout),
        split.excluded_eval,
    )
    ppl_before = response_perplexity(model, tokenizer, split.heldout, config.max_length)
    run_dir = new_run_dir(settings.runs_dir, "sft")
    model, metrics = train_causal_lm(
        model, tokenizer, prompt_completion_columns(split.train, tokenizer), config, run_dir, "sft"
    )
    ppl_after = response_perplexity(model, tokenizer, split.heldout, config.max_length)
    metrics.update(
        heldout_ppl_before=ppl_before, heldout_ppl=ppl_after, train_records=len(split.train)
    )
    logger.info("sft: held-out perplexity %.2f -> %.2f", ppl_before, ppl_after)
    return register_model(
        registry,
        "sft",
        model,
        tokenizer,
        parents=[registry.version_of(base_ref)],
        config={"stage": config_dict(config), "base": str(base_ref)},
        metrics=metrics,
        data_fingerprint=fingerprint(split.train),
    )
