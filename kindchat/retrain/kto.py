"""KTO with TRL's KTOTrainer: learns from single 👍/👎 as well as from pairs.

Most real feedback is one thumb on one answer, with no sibling to pair it with; DPO and the RM
cannot use it, KTO can (Ethayarajh et al. 2024, "KTO: Model Alignment as Prospect Theoretic
Optimization"). What it trains on, from one export:

* every unpaired 👍 (desirable) and 👎 (undesirable), and both sides of an arena `both_bad`;
* every pair, split into its chosen (desirable) and rejected (undesirable) answer;
* users' better answers (desirable; they also arrive as pairs).

As a nightly method the policy starts from the serving one with SFT as the frozen reference
(the same anchor as DPO). Deviations from the paper, and why: the desirable/undesirable weights
are set from the counts so that λ_D·n_D = λ_U·n_U (the paper's Eq. 8 range starts there), and
the rows are shuffled once, seeded, because TRL's KTO reads them in order and estimates the KL
term from neighbours within a batch.
"""

from __future__ import annotations

import logging
import random
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from datasets import Dataset
from transformers import PreTrainedModel, PreTrainedTokenizerBase
from trl import KTOConfig, KTOTrainer

from kindchat.models.presets import Preset
from kindchat.retrain.common import LoraOptions, check_trainer_fields
from kindchat.retrain.data import example_prompt, without_eval_prompts
from kindchat.retrain.hf_trainer import train_against_reference
from kindchat.retrain.methods import Method, MethodJob, MethodResult, train_anchored
from kindchat.seed import Example, read_examples_file, read_rm_file

logger = logging.getLogger(__name__)


@dataclass
class KtoConfig:
    """Hyper-parameters of one KTO run."""

    epochs: float = 1.0  # passes over the examples (ignored when max_steps > 0)
    max_steps: int = -1  # optimiser steps; -1 runs `epochs` epochs
    batch_size: int = 8  # examples per step; > 1, since KTO's KL term uses batch neighbours
    # LR 2e-4: chosen on the `polite` users of bench/learn_per_vote.py (5e-5 moved the tiny
    # model too little), then checked on `concise` users it was not chosen on (docs/learning.md)
    learning_rate: float = 2e-4  # peak LR of the cosine schedule
    beta: float = 0.1  # strength of the implicit KL to the reference (the SFT model)
    balance_weights: bool = True  # λ_D·n_D = λ_U·n_U from the counts (else 1 and 1)
    max_length: int = 256  # tokens of prompt + answer
    use_pairs: bool = True  # also learn from pairs, split into desirable and undesirable
    max_records: int | None = None  # use a slice of the examples (micro runs)
    lora: LoraOptions = field(default_factory=LoraOptions)
    deepspeed: Path | None = None
    gradient_checkpointing: bool = False
    seed: int = 0

    def __post_init__(self) -> None:
        check_trainer_fields(self, min_length=32)
        if self.batch_size < 2:
            raise ValueError(
                f"batch_size must be >= 2 for KTO (its KL term reads batch neighbours), "
                f"got {self.batch_size}"
            )
        if self.beta <= 0:
            raise ValueError(f"beta must be > 0, got {self.beta}")


def examples_from_files(
    pairs: Path | None, unpaired: Path | None, use_pairs: bool = True
) -> list[Example]:
    """Unpaired rows as they are, then each pair as a desirable and an undesirable row."""
    rows: list[Example] = list(read_examples_file(unpaired)) if unpaired else []
    if use_pairs and pairs is not None:
        for pair in read_rm_file(pairs):
            for completion, label in ((pair.chosen, True), (pair.rejected, False)):
                rows.append(
                    Example(
                        id=f"{pair.id}:{'chosen' if label else 'rejected'}",
                        prompt=pair.prompt,
                        completion=completion,
                        label=label,
                        source=f"pair:{pair.id.split(':')[0]}",
                        context=pair.context,
                    )
                )
    return rows


def class_weights(labels: Sequence[bool], balance: bool) -> tuple[float, float]:
    """(λ_D, λ_U): the larger class weighs 1, the smaller n_large / n_small, so that
    λ_D·n_D = λ_U·n_U; (1, 1) when not balancing or when a class is empty."""
    desirable = sum(1 for label in labels if label)
    undesirable = len(labels) - desirable
    if not balance or desirable == 0 or undesirable == 0:
        return 1.0, 1.0
    if desirable < undesirable:
        return undesirable / desirable, 1.0
    return 1.0, desirable / undesirable


def kto_dataset(
    examples: Sequence[Example], tokenizer: PreTrainedTokenizerBase, max_length: int, seed: int
) -> Dataset:
    """TRL's unpaired format (prompt / completion / label), rows shuffled once, seeded."""
    order = list(range(len(examples)))
    random.Random(seed).shuffle(order)
    rows = [examples[i] for i in order]
    return Dataset.from_dict(
        {
            "prompt": [
                example_prompt(tokenizer, e.prompt, e.context, max_length // 2) for e in rows
            ],
            "completion": [e.completion for e in rows],
            "label": [e.label for e in rows],
        }
    )


def train_kto_model(
    model: PreTrainedModel,
    reference: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    examples: Sequence[Example],
    config: KtoConfig,
    run_dir: Path,
) -> tuple[PreTrainedModel, dict[str, Any]]:
    """Optimise the KTO loss against the frozen `reference`; LoRA merged before returning."""
    desirable_weight, undesirable_weight = class_weights(
        [e.label for e in examples], config.balance_weights
    )
    trained, metrics, history = train_against_reference(
        KTOTrainer,
        KTOConfig,
        model=model,
        reference=reference,
        tokenizer=tokenizer,
        dataset=kto_dataset(examples, tokenizer, config.max_length, config.seed),
        config=config,
        run_dir=run_dir,
        stage="kto",
        desirable_weight=desirable_weight,
        undesirable_weight=undesirable_weight,
    )
    desirable = sum(1 for e in examples if e.label)
    metrics.update(
        desirable=desirable,
        undesirable=len(examples) - desirable,
        desirable_weight=desirable_weight,
        undesirable_weight=undesirable_weight,
    )
    logged = [row for row in history if "kl" in row]
    if logged:
        metrics["kl_end"] = logged[-1]["kl"]
    return trained, metrics


def night_config(preset: Preset) -> KtoConfig:
    """One night's KTO on the preset: one epoch over the export's examples at KtoConfig's LR."""
    budget = preset.rm
    return KtoConfig(
        epochs=1.0,
        batch_size=max(2, budget.batch_size),
        max_length=preset.seq_len,
        seed=budget.seed,
    )


def train(job: MethodJob, config: KtoConfig) -> MethodResult:
    """KTO from the serving policy (`job.policy`) against SFT on the export's thumbs and pairs."""
    examples = without_eval_prompts(
        examples_from_files(job.data.pairs, job.data.unpaired, config.use_pairs),
        job.settings.data_dir,
    )
    return train_anchored(
        job,
        config,
        examples,
        train_kto_model,
        algorithm="kto",
        what="examples (one batch)",
        minimum=config.batch_size,
    )


METHOD = Method(
    name="kto",
    summary="TRL KTOTrainer on single 👍/👎 and pairs, from the serving policy, SFT as reference",
    config_type=KtoConfig,
    default_config=night_config,
    train=train,
    uses_unpaired=True,
)
