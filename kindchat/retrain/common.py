"""What every training stage shares: run directories, HF trainer arguments, LoRA, logging."""

from __future__ import annotations

import json
import logging
import math
import os
import shutil
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, is_dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TypeVar

import torch
from transformers import PreTrainedModel, PreTrainedTokenizerBase, TrainerCallback

from kindchat.logs import STEPS_LOGGER
from kindchat.models.loading import is_peft, writer
from kindchat.models.registry import Manifest, ModelKind, Registry

T = TypeVar("T")

logger = logging.getLogger(__name__)
steps_logger = logging.getLogger(STEPS_LOGGER)


@dataclass
class LoraOptions:
    """Optional LoRA (peft) on a stage's trainable model; merged before the version is saved."""

    enabled: bool = False
    r: int = 8  # rank of the update matrices
    alpha: int = 16  # scaling numerator (update scaled by alpha / r)
    dropout: float = 0.05

    def __post_init__(self) -> None:
        if self.r < 1:
            raise ValueError(f"lora r must be >= 1, got {self.r}")

    def peft_config(self, task_type: str) -> Any:
        # lazy: peft only when LoRA is on
        from peft import LoraConfig

        return LoraConfig(
            r=self.r,
            lora_alpha=self.alpha,
            lora_dropout=self.dropout,
            # Every linear layer but the output head, whatever the architecture (peft finds
            # them: GPT-NeoX's query_key_value/dense…, Llama's q/k/v/o and gate/up/down).
            target_modules="all-linear",
            task_type=task_type,
        )


def check_trainer_fields(config: Any, min_length: int = 16) -> None:
    """The checks every trainer-based stage config shares (SFT, RM, DPO)."""
    if config.epochs <= 0 and config.max_steps <= 0:
        raise ValueError("set epochs > 0 or max_steps > 0")
    if config.batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {config.batch_size}")
    if not 0 < config.learning_rate < 1:
        raise ValueError(f"learning_rate must lie in (0, 1), got {config.learning_rate}")
    if config.max_length < min_length:
        raise ValueError(f"max_length must be >= {min_length}, got {config.max_length}")


def load_adapter_policy(
    registry: Registry, version: str, lora: LoraOptions
) -> tuple[Any, PreTrainedTokenizerBase, str]:
    """A trainable LoRA policy for a night: (peft model, tokenizer, base version).

    From an adapter version: its base with that adapter, trainable again (the night goes on
    from the serving policy, and the result is again one adapter over the same base). From a
    full version: that version as the base, with a fresh adapter (`lora`'s rank and alpha)
    whose update starts at zero, so the policy starts exactly where it serves.
    """
    # lazy: peft and transformers only for training
    from peft import PeftModel, get_peft_model

    from kindchat.models.adapters import adapter_base_version, is_adapter
    from kindchat.models.loading import load_causal_lm

    path = registry.resolve(version)
    version_id = registry.version_of(version) or version
    if is_adapter(path):
        base = adapter_base_version(path)
        if base is None:  # pragma: no cover - written by kindchat, always named
            raise ValueError(f"adapter {version_id} names no base version")
        base_path = registry.resolve(base)
        model, tokenizer = load_causal_lm(base_path)
        model = PeftModel.from_pretrained(model, str(path), is_trainable=True)
        # the adapter config names the base by version id; peft reads the base's config from
        # this field when it saves, so it names the base's directory while the model lives
        for adapter_config in model.peft_config.values():
            adapter_config.base_model_name_or_path = str(base_path)
    else:
        base = version_id
        model, tokenizer = load_causal_lm(path)
        model = get_peft_model(model, lora.peft_config("CAUSAL_LM"))
    model.train()
    return model, tokenizer, base


def distributed_rank() -> tuple[int, int]:
    """(rank, world size) as a launcher (`deepspeed`, `torchrun`) set them; (0, 1) alone."""
    return int(os.environ.get("RANK", "0")), int(os.environ.get("WORLD_SIZE", "1"))


def _process_group() -> Any:
    """`torch.distributed`, its group started as DeepSpeed starts it for the launcher's
    processes (gloo on CPU, NCCL on GPUs) — the trainers join the same group later."""
    # lazy: only under a launcher (several processes); DeepSpeed is heavy to import
    import torch.distributed as dist

    if not dist.is_initialized():
        import deepspeed

        deepspeed.init_distributed()
    return dist


def _from_rank_zero(make: Callable[[], T]) -> T:
    """`make()` on rank 0 only; every rank of a distributed run gets rank 0's result."""
    rank, world = distributed_rank()
    if world == 1:
        return make()
    dist = _process_group()
    box = [make() if rank == 0 else None]
    dist.broadcast_object_list(box, src=0)
    return box[0]  # type: ignore[return-value]


def new_run_dir(runs_dir: Path, stage: str) -> Path:
    """A fresh `runs/<stage>-<time>`; under a launcher, the one rank 0 made, on every rank."""

    def make() -> Path:
        stamp = datetime.now(UTC).strftime("%Y%m%d-%H%M%S-%f")
        path = runs_dir / f"{stage}-{stamp}"
        path.mkdir(parents=True, exist_ok=False)
        return path

    path = _from_rank_zero(make)
    path.mkdir(parents=True, exist_ok=True)  # other nodes' disks
    return path


def register_once(save: Callable[[], Manifest]) -> Manifest:
    """Register a trained model once: rank 0 saves (as HF trainers save from the main process
    only) and the other ranks of a distributed run get its manifest."""
    return _from_rank_zero(save)


def register_model(
    registry: Registry,
    kind: ModelKind,
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    *,
    parents: Sequence[str | None],
    config: dict[str, Any],
    metrics: dict[str, Any],
    data_fingerprint: str,
    extra_files: Sequence[Path] = (),
    base: str | None = None,
) -> Manifest:
    """The one way a trained model becomes a registered version: weights, tokenizer and
    `extra_files` (e.g. PPO's step log) written side by side, once (:func:`register_once`).
    With `base`, `model` is a peft model and only its adapter is written, over that version.
    `parents` may hold None (a directory, not a version) and repeats; both are dropped."""

    def write(path: Path) -> None:
        writer(model, tokenizer, base)(path)
        for extra in extra_files:
            shutil.copy(extra, path / extra.name)

    return register_once(
        lambda: registry.save(
            kind,
            write,
            parents=list(dict.fromkeys(p for p in parents if p)),
            config=config,
            metrics=metrics,
            data_fingerprint=data_fingerprint,
            base=base,
        )
    )


def config_dict(config: Any) -> dict[str, Any]:
    """A stage config as JSON-ready data for the manifest."""
    data = asdict(config) if is_dataclass(config) else dict(config)
    return json.loads(json.dumps(data, default=str))


def ensure_distributed_env() -> None:
    """DeepSpeed wants a process group even for one process: set single-process defaults."""
    for key, value in (
        ("RANK", "0"),
        ("LOCAL_RANK", "0"),
        ("WORLD_SIZE", "1"),
        ("MASTER_ADDR", "127.0.0.1"),
        ("MASTER_PORT", os.environ.get("MASTER_PORT", "29511")),
    ):
        os.environ.setdefault(key, value)


def check_zero_stage(path: Path) -> None:
    """ZeRO-3 partitions the weights across processes, and kindchat saves from rank 0: refuse it
    under a launcher rather than register a model with missing weights."""
    try:
        stage = json.loads(path.read_text(encoding="utf-8")).get("zero_optimization", {})
    except ValueError as err:
        raise ValueError(f"DeepSpeed config {path} is not JSON: {err}") from None
    if distributed_rank()[1] > 1 and int(stage.get("stage", 0)) >= 3:
        raise ValueError(
            f"{path}: ZeRO stage 3 under several processes is not supported (the weights are "
            "partitioned, and rank 0 saves the model); use stage 2"
        )


def trainer_arguments(run_dir: Path, config: Any, warmup_ratio: float = 0.05) -> dict[str, Any]:
    """Keyword arguments shared by every HF/TRL trainer config kindchat builds, from the fields
    every stage config has (`batch_size`, `learning_rate`, `epochs`, `max_steps`, `seed`,
    `deepspeed`, `gradient_checkpointing`: the fields :func:`check_trainer_fields` checks).

    Logs every 10 steps, or about 10 times in a short run, so loss curves exist for both.
    """
    batch_size, max_steps = config.batch_size, config.max_steps
    deepspeed: Path | None = config.deepspeed
    logging_steps = max(1, min(10, max_steps // 10)) if max_steps > 0 else 10
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
        "logging_steps": logging_steps,
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


def check_finite(value: float, what: str) -> float:
    if not math.isfinite(value):
        raise FloatingPointError(f"{what} is {value}; training diverged, nothing was saved")
    return value
