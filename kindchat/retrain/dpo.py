"""DPO with TRL's DPOTrainer: the RM-free alternative to PPO, from the same pairwise data.

As a nightly method (`METHOD`): the new policy starts from the serving one and is anchored to
SFT — SFT is DPO's frozen reference, so β bounds the drift from SFT over every night, not only
from yesterday's model (Rafailov et al. 2023; iterative/online DPO as in Xu et al. 2023, with a
fixed reference instead of yesterday's, so that nights cannot compound drift). It trains on
the export's pairs of the night's window (`retrain/window.py`: the last
`retrain_window_days` days of feedback): arena votes, sibling thumbs and better answers (`feedback/export.py`
decides which). `kindchat train dpo` (:func:`train_dpo`) runs the same path from SFT on the
seed's RM pairs. The path DPO and KTO share is `methods.train_anchored`.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from datasets import Dataset
from transformers import PreTrainedModel, PreTrainedTokenizerBase
from trl import DPOConfig, DPOTrainer

from kindchat.config import Settings
from kindchat.models.presets import Preset
from kindchat.models.registry import Manifest, Registry
from kindchat.retrain.common import LoraOptions, check_trainer_fields, new_run_dir
from kindchat.retrain.data import example_prompt, without_eval_prompts
from kindchat.retrain.hf_trainer import train_against_reference
from kindchat.retrain.methods import Method, MethodJob, MethodResult, PreferenceData, train_anchored
from kindchat.retrain.reward import RmConfig
from kindchat.retrain.stages import rm_training_pairs
from kindchat.seed import RmPair, read_rm_file

logger = logging.getLogger(__name__)


@dataclass
class DpoConfig:
    """Hyper-parameters of one DPO run (Rafailov et al. 2023)."""

    epochs: float = 1.0  # passes over the pairs (ignored when max_steps > 0)
    max_steps: int = -1  # optimiser steps; -1 runs `epochs` epochs
    batch_size: int = 8  # pairs per optimiser step
    learning_rate: float = 2e-4  # peak LR of the cosine schedule (docs/learning.md)
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


def preference_dataset(
    pairs: Sequence[RmPair], tokenizer: PreTrainedTokenizerBase, max_length: int
) -> Dataset:
    """TRL's prompt / chosen / rejected format; each prompt is its conversation in the serving
    template (oldest turns dropped to fit half of `max_length`)."""
    return Dataset.from_dict(
        {
            "prompt": [
                example_prompt(tokenizer, p.prompt, p.context, max_length // 2) for p in pairs
            ],
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
    trained, metrics, history = train_against_reference(
        DPOTrainer,
        DPOConfig,
        model=model,
        reference=reference,
        tokenizer=tokenizer,
        dataset=preference_dataset(pairs, tokenizer, config.max_length),
        config=config,
        run_dir=run_dir,
        stage="dpo",
        truncation_mode="keep_start",
    )
    metrics["pairs"] = len(pairs)
    logged = [row for row in history if "rewards/accuracies" in row]
    if logged:
        metrics["reward_accuracy_end"] = logged[-1]["rewards/accuracies"]
        metrics["reward_margin_end"] = logged[-1].get("rewards/margins")
    return trained, metrics


def feedback_pairs(path: Path | None, settings_data_dir: Path) -> list[RmPair]:
    """The pairs of an export's `train.json`, evaluation prompts left out."""
    return [] if path is None else without_eval_prompts(read_rm_file(path), settings_data_dir)


def night_config(preset: Preset) -> DpoConfig:
    """One night's DPO on the preset: one epoch over the export's pairs at DpoConfig's LR."""
    budget = preset.rm
    return DpoConfig(
        epochs=1.0, batch_size=budget.batch_size, max_length=preset.seq_len, seed=budget.seed
    )


def train(job: MethodJob, config: DpoConfig) -> MethodResult:
    """DPO from the serving policy (`job.policy`) against SFT on the export's pairs."""
    pairs = feedback_pairs(job.data.pairs, job.settings.data_dir)
    return train_anchored(
        job, config, pairs, train_dpo_model, algorithm="dpo", what="preference pairs"
    )


def train_dpo(
    settings: Settings, registry: Registry, sft_ref: str, config: DpoConfig, adapter: bool = False
) -> Manifest:
    """`kindchat train dpo`: DPO of the SFT model (also its frozen reference) on the seed's RM
    pairs plus `config.extra_data`, evaluation prompts left out; registers a `policy` (with
    `adapter`, a LoRA adapter over SFT)."""
    rm_like = RmConfig(
        exclude_eval_prompts=config.exclude_eval_prompts,
        max_records=config.max_records,
        extra_data=config.extra_data,
    )
    sft = registry.version_of(sft_ref) or sft_ref
    job = MethodJob(
        settings=settings,
        registry=registry,
        policy=sft,
        sft=sft,
        rm=None,
        base=None,
        data=PreferenceData(),
        run_dir=new_run_dir(settings.runs_dir, "dpo"),
        adapter=adapter,
    )
    pairs = rm_training_pairs(settings, rm_like)
    result = train_anchored(
        job, config, pairs, train_dpo_model, algorithm="dpo", what="preference pairs"
    )
    return registry.manifest(result.policy)


METHOD = Method(
    name="dpo",
    summary="TRL DPOTrainer on the export's pairs, from the serving policy, SFT as reference",
    config_type=DpoConfig,
    default_config=night_config,
    train=train,
)
