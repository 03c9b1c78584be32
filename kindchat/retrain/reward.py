"""Pairwise reward model with TRL's RewardTrainer, and the scoring every later stage shares.

The RM is a GPT-NeoX sequence classifier with one output, initialised from an LM. A pair is
encoded as `KULLM(prompt) + response + EOS`, truncated as DeepSpeed-Chat does (prompt cut from
the left to half the budget, then the whole sequence cut at `max_length`); the score is read at
the last real token. TRL's trainer would drop over-long pairs, so kindchat pre-tokenizes.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from datasets import Dataset
from transformers import (
    AutoModelForSequenceClassification,
    PreTrainedModel,
    PreTrainedTokenizerBase,
)
from trl import RewardConfig, RewardTrainer

from kindchat.models.generation import position_ids_for
from kindchat.models.presets import Preset, StageBudget
from kindchat.models.template import Message
from kindchat.retrain.common import LoraOptions, check_trainer_fields
from kindchat.retrain.data import example_prompt
from kindchat.retrain.hf_trainer import LogToFile, run_trainer, trainer_arguments
from kindchat.seed import RmPair

logger = logging.getLogger(__name__)


@dataclass
class RmConfig:
    """Hyper-parameters of one reward-model run."""

    epochs: float = 1.0  # the seed: more than one epoch over-fits RMs
    max_steps: int = -1  # optimiser steps; -1 runs `epochs` epochs
    batch_size: int = 8  # pairs per optimiser step
    # LR 3e-4: the tiny preset's (RM and gold RM), so the LR of every recorded run on the demo
    # shape (bootstrap, docs/learning.md); 1e-4 and 2e-4, the earlier defaults, never ran there
    learning_rate: float = 3e-4  # peak LR of the cosine schedule
    max_length: int = 256  # tokens of prompt + response
    center_rewards_coefficient: float | None = 0.01  # keeps scores near 0 (TRL, Eisenstein et al.)
    exclude_eval_prompts: bool = True  # keep rm/*_test.json prompts out of training
    max_records: int | None = None  # use a slice of the pairs (micro runs)
    extra_data: list[Path] = field(default_factory=list)  # more pair files (feedback export)
    seed_data: bool = True  # the seed's RM pairs too; False: only `extra_data` (a warm start)
    lora: LoraOptions = field(default_factory=LoraOptions)
    deepspeed: Path | None = None
    gradient_checkpointing: bool = False  # recompute activations: less memory, more compute
    seed: int = 0

    def __post_init__(self) -> None:
        check_trainer_fields(self, min_length=32)


def rm_config(preset: Preset, budget: StageBudget) -> RmConfig:
    """RmConfig with a preset's stage budget (`preset.rm` or `preset.gold_rm`) at its length."""
    return RmConfig(
        epochs=budget.epochs,
        max_steps=budget.max_steps,
        batch_size=budget.batch_size,
        learning_rate=budget.learning_rate,
        max_length=preset.seq_len,
        max_records=budget.max_records,
        seed=budget.seed,
    )


def encode_response(
    tokenizer: PreTrainedTokenizerBase,
    prompt: str,
    response: str,
    max_length: int,
    context: Sequence[Message] = (),
) -> list[int]:
    """Token ids of `template(context, prompt) + response + EOS`, truncated as the RM sees
    them (a multi-turn prompt drops its oldest turns first)."""
    text = example_prompt(tokenizer, prompt, context, max_length // 2)
    prompt_ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    prompt_ids = prompt_ids[-(max_length // 2) :]
    response_ids = tokenizer(response, add_special_tokens=False)["input_ids"]
    return (prompt_ids + response_ids + [tokenizer.eos_token_id])[:max_length]


def pairs_dataset(
    tokenizer: PreTrainedTokenizerBase, pairs: Sequence[RmPair], max_length: int
) -> Dataset:
    """Pre-tokenized `chosen_ids` / `rejected_ids` for TRL's RewardTrainer."""
    return Dataset.from_dict(
        {
            "chosen_ids": [
                encode_response(tokenizer, p.prompt, p.chosen, max_length, p.context) for p in pairs
            ],
            "rejected_ids": [
                encode_response(tokenizer, p.prompt, p.rejected, max_length, p.context)
                for p in pairs
            ],
        }
    )


def reward_model_from_lm(path: Path, pad_token_id: int, seed: int = 0) -> PreTrainedModel:
    """A one-output sequence classifier whose body is the LM at `path` (its head drawn from
    `seed`: the same RM for the same data, every run)."""
    with torch.random.fork_rng():  # the caller's random state is left as it was
        torch.manual_seed(seed)
        model = AutoModelForSequenceClassification.from_pretrained(
            str(path), num_labels=1, dtype=torch.float32
        )
    model.config.pad_token_id = pad_token_id
    return model


def last_token_index(attention_mask: torch.Tensor) -> torch.Tensor:
    """[B, T] mask → [B] index of each row's last real token (works for left and right padding)."""
    positions = torch.arange(attention_mask.size(1), device=attention_mask.device)
    return (positions * attention_mask).argmax(dim=1)


def token_values(
    model: PreTrainedModel, input_ids: torch.Tensor, attention_mask: torch.Tensor
) -> torch.Tensor:
    """[B, T] the classifier head applied at every position (the critic's values).

    At each row's last real token this is exactly the RM's score for the sequence.
    """
    body = model.base_model
    hidden = body(
        input_ids=input_ids,
        attention_mask=attention_mask,
        position_ids=position_ids_for(attention_mask),
    ).last_hidden_state
    return model.score(hidden).squeeze(-1).float()


@torch.no_grad()
def score_sequences(
    model: PreTrainedModel, input_ids: torch.Tensor, attention_mask: torch.Tensor
) -> torch.Tensor:
    """[B] RM score of each (padded) sequence, read at its last real token."""
    values = token_values(model, input_ids, attention_mask)
    return values.gather(1, last_token_index(attention_mask)[:, None]).squeeze(1)


@torch.no_grad()
def score_texts(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    prompts: Sequence[str],
    responses: Sequence[str],
    max_length: int,
    batch_size: int = 16,
) -> list[float]:
    """RM scores of `(prompt, response)` pairs, batched and right-padded."""
    device = next(model.parameters()).device
    scores: list[float] = []
    for start in range(0, len(prompts), batch_size):
        rows = [
            encode_response(tokenizer, p, r, max_length)
            for p, r in zip(
                prompts[start : start + batch_size],
                responses[start : start + batch_size],
                strict=True,
            )
        ]
        width = max(len(r) for r in rows)
        ids = torch.full((len(rows), width), tokenizer.pad_token_id, dtype=torch.long)
        mask = torch.zeros_like(ids)
        for i, row in enumerate(rows):
            ids[i, : len(row)] = torch.tensor(row)
            mask[i, : len(row)] = 1
        scores.extend(score_sequences(model, ids.to(device), mask.to(device)).tolist())
    return scores


def train_reward_model(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    pairs: Sequence[RmPair],
    config: RmConfig,
    run_dir: Path,
    stage: str = "rm",
) -> tuple[PreTrainedModel, dict[str, Any]]:
    """Train `model` on the pairwise loss −log σ(r_chosen − r_rejected) with RewardTrainer."""
    args = RewardConfig(
        **trainer_arguments(run_dir, config),
        max_length=config.max_length,
        center_rewards_coefficient=config.center_rewards_coefficient,
        dataset_num_proc=None,
    )
    trainer = RewardTrainer(
        model=model,
        args=args,
        train_dataset=pairs_dataset(tokenizer, pairs, config.max_length),
        processing_class=tokenizer,
        peft_config=config.lora.peft_config("SEQ_CLS") if config.lora.enabled else None,
        callbacks=[LogToFile(stage)],
    )
    return run_trainer(trainer, config.lora.enabled, stage)
