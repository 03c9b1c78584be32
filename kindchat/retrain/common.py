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

from transformers import PreTrainedModel, PreTrainedTokenizerBase

from kindchat.models.loading import writer
from kindchat.models.registry import Manifest, ModelKind, Registry

T = TypeVar("T")

logger = logging.getLogger(__name__)


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


def logging_steps(max_steps: int) -> int:
    """Log every 10 steps, or about 10 times in a run shorter than 100 steps."""
    return max(1, min(10, max_steps // 10)) if max_steps > 0 else 10


def check_finite(value: float, what: str) -> float:
    if not math.isfinite(value):
        raise FloatingPointError(f"{what} is {value}; training diverged, nothing was saved")
    return value
