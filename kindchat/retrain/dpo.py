"""DPO with TRL's DPOTrainer: the RM-free alternative to PPO, from the same pairwise data."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from datasets import Dataset
from transformers import PreTrainedModel, PreTrainedTokenizerBase
from trl import DPOConfig, DPOTrainer

from kindchat.models.template import kullm_prompt
from kindchat.retrain.common import (
    LogToFile,
    LoraOptions,
    check_trainer_fields,
    run_trainer,
    trainer_arguments,
)
from kindchat.seed import RmPair

logger = logging.getLogger(__name__)


@dataclass
class DpoConfig:
    """Hyper-parameters of one DPO run (Rafailov et al. 2023)."""

    epochs: float = 1.0  # passes over the pairs (ignored when max_steps > 0)
    max_steps: int = -1  # optimiser steps; -1 runs `epochs` epochs
    batch_size: int = 8  # pairs per optimiser step
    learning_rate: float = 5e-5  # peak LR of the cosine schedule
    beta: float = 0.1  # strength of the implicit KL to the reference (the SFT model)
    max_length: int = 256  # tokens of prompt + answer
    exclude_eval_prompts: bool = True  # keep rm/*_test.json prompts out of training
    max_records: int | None = None  # use a slice of the pairs (micro runs)
    extra_data: list[Path] = field(default_factory=list)  # more pair files (feedback export)
    lora: LoraOptions = field(default_factory=LoraOptions)
    deepspeed: Path | None = None
    gradient_checkpointing: bool = False  # recompute activations: less memory, more compute
    seed: int = 0

    def __post_init__(self) -> None:
        check_trainer_fields(self, min_length=32)
        if self.beta <= 0:
            raise ValueError(f"beta must be > 0, got {self.beta}")


def preference_dataset(pairs: Sequence[RmPair]) -> Dataset:
    """TRL's prompt / chosen / rejected format, the prompt in the KULLM template."""
    return Dataset.from_dict(
        {
            "prompt": [kullm_prompt(p.prompt) for p in pairs],
            "chosen": [p.chosen for p in pairs],
            "rejected": [p.rejected for p in pairs],
        }
    )


def train_dpo_model(
    model: PreTrainedModel,
    reference: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    pairs: Sequence[RmPair],
    config: DpoConfig,
    run_dir: Path,
) -> tuple[PreTrainedModel, dict[str, Any]]:
    """Optimise the DPO loss against the frozen `reference`; LoRA merged before returning."""
    args = DPOConfig(
        **trainer_arguments(
            run_dir,
            batch_size=config.batch_size,
            learning_rate=config.learning_rate,
            epochs=config.epochs,
            max_steps=config.max_steps,
            seed=config.seed,
            deepspeed=config.deepspeed,
            gradient_checkpointing=config.gradient_checkpointing,
        ),
        beta=config.beta,
        max_length=config.max_length,
        truncation_mode="keep_start",
        dataset_num_proc=None,
    )
    trainer = DPOTrainer(
        model=model,
        ref_model=None if config.lora.enabled else reference,
        args=args,
        train_dataset=preference_dataset(pairs),
        processing_class=tokenizer,
        peft_config=config.lora.peft_config("CAUSAL_LM") if config.lora.enabled else None,
        callbacks=[LogToFile("dpo")],
    )
    trained, metrics = run_trainer(trainer, config.lora.enabled, "dpo")
    history = [row for row in trainer.state.log_history if "rewards/accuracies" in row]
    if history:
        metrics["reward_accuracy_end"] = history[-1]["rewards/accuracies"]
        metrics["reward_margin_end"] = history[-1].get("rewards/margins")
    return trained, metrics
