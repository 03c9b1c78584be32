"""What every HF/TRL trainer run of kindchat shares: the trainer arguments built from a stage's
config, the log lines mirrored into kindchat's log, the run and its metrics, and the path DPO and
KTO share. (Apart from `common`: `transformers.TrainerCallback` imports the trainer's module and
peft, which the first visit's lean loop does without.)
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import torch
from transformers import PreTrainedModel, PreTrainedTokenizerBase, TrainerCallback

from kindchat.logs import STEPS_LOGGER
from kindchat.models.loading import is_peft
from kindchat.retrain.common import (
    check_finite,
    check_zero_stage,
    distributed_rank,
    ensure_distributed_env,
    logging_steps,
)

logger = logging.getLogger(__name__)
steps_logger = logging.getLogger(STEPS_LOGGER)


def trainer_arguments(run_dir: Path, config: Any, warmup_ratio: float = 0.05) -> dict[str, Any]:
    """Keyword arguments shared by every HF/TRL trainer config kindchat builds, from the fields
    every stage config has (`batch_size`, `learning_rate`, `epochs`, `max_steps`, `seed`,
    `deepspeed`, `gradient_checkpointing`: the fields :func:`check_trainer_fields` checks).

    Logs every 10 steps, or about 10 times in a short run, so loss curves exist for both.
    """
    batch_size, max_steps = config.batch_size, config.max_steps
    deepspeed: Path | None = config.deepspeed
    if deepspeed is not None:
        if not Path(deepspeed).is_file():
            raise FileNotFoundError(f"DeepSpeed config {deepspeed} does not exist")
        ensure_distributed_env()
        check_zero_stage(Path(deepspeed))
        rank, world = distributed_rank()
        logger.info("deepspeed %s: rank %d of %d, run dir %s", deepspeed, rank, world, run_dir)
    return {
        "output_dir": str(run_dir),
        "per_device_train_batch_size": batch_size,
        "per_device_eval_batch_size": batch_size,
        "learning_rate": config.learning_rate,
        "num_train_epochs": config.epochs,
        "max_steps": max_steps,
        "lr_scheduler_type": "cosine",
        "warmup_steps": warmup_ratio,
        "weight_decay": 0.0,
        "logging_steps": logging_steps(max_steps),
        "save_strategy": "no",
        "report_to": [],
        "seed": config.seed,
        "use_cpu": not torch.cuda.is_available(),
        # transformers 5 turns bf16 autocast on by default, CPU included; keep fp32 on CPU.
        "bf16": torch.cuda.is_available() and torch.cuda.is_bf16_supported(),
        "fp16": False,
        # TRL turns activation checkpointing on by default: memory for ~30% more compute.
        "gradient_checkpointing": config.gradient_checkpointing,
        "dataloader_num_workers": 0,
        "deepspeed": str(deepspeed) if deepspeed is not None else None,
        "disable_tqdm": False,
    }


class LogToFile(TrainerCallback):
    """Mirror the trainer's log lines into kindchat's logger (and so into the log file)."""

    def __init__(self, stage: str) -> None:
        self.stage = stage

    def on_log(
        self, args: Any, state: Any, control: Any, logs: dict | None = None, **kw: Any
    ) -> None:
        if logs:
            steps_logger.info("%s step %d: %s", self.stage, state.global_step, json.dumps(logs))


def loss_curve(log_history: list[dict[str, Any]]) -> dict[str, float]:
    """First and last logged training loss of an HF trainer run (empty if none was logged)."""
    losses = [row["loss"] for row in log_history if "loss" in row]
    return {"loss_first": losses[0], "loss_last": losses[-1]} if losses else {}


def run_trainer(trainer: Any, lora: bool, stage: str) -> tuple[Any, dict[str, Any]]:
    """Train with an HF/TRL trainer; return the model (LoRA merged when `lora`, else as it
    is: an adapter policy stays a peft model; fp32 on CPU, eval mode) and its metrics. A
    non-finite training loss raises before anything can be saved."""
    result = trainer.train()
    check_finite(result.training_loss, f"{stage} training loss")
    trained = trainer.model.merge_and_unload() if lora else trainer.model
    if trained.device.type == "cpu":
        trained = trained.to(torch.float32)
    trained.eval()
    metrics: dict[str, Any] = {
        "train_loss": result.training_loss,
        "train_steps": result.global_step,
        **loss_curve(trainer.state.log_history),
    }
    logger.info("%s finished: %s", stage, metrics)
    return trained, metrics


def train_against_reference(
    trainer_type: type,
    args_type: type,
    *,
    model: PreTrainedModel,
    reference: PreTrainedModel | None,
    tokenizer: PreTrainedTokenizerBase,
    dataset: Any,
    config: Any,
    run_dir: Path,
    stage: str,
    **arguments: Any,
) -> tuple[PreTrainedModel, dict[str, Any], list[dict[str, Any]]]:
    """Train `model` with a TRL preference trainer (`DPOTrainer`/`DPOConfig`,
    `KTOTrainer`/`KTOConfig`) against the frozen `reference`: the path DPO and KTO share.

    `config` is the method's (its `beta`, `max_length`, `lora` and the fields of
    :func:`trainer_arguments`); `arguments` are the trainer's own extra settings. With LoRA the
    reference is the policy with its adapters off (TRL's way: one model in memory), so
    `reference` is not passed. An adapter policy (`model` already a peft model, from
    :func:`load_adapter_policy`, `reference` None) is anchored the same way, to its base, and
    comes back unmerged. Returns the model (LoRA merged unless an adapter policy), its
    metrics, and the trainer's log history for the method's own figures.
    """
    adapter = is_peft(model)
    lora = config.lora.enabled and not adapter
    args = args_type(
        **trainer_arguments(run_dir, config),
        beta=config.beta,
        max_length=config.max_length,
        dataset_num_proc=None,
        **arguments,
    )
    trainer = trainer_type(
        model=model,
        ref_model=None if lora or adapter else reference,
        args=args,
        train_dataset=dataset,
        processing_class=tokenizer,
        peft_config=config.lora.peft_config("CAUSAL_LM") if lora else None,
        callbacks=[LogToFile(stage)],
    )
    trained, metrics = run_trainer(trainer, lora, stage)
    return trained, metrics, list(trainer.state.log_history)
