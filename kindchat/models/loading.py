"""Loading causal LMs and reward models from a local directory (embedded tiny or a real KULLM)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from transformers import (
    AutoModelForCausalLM,
    AutoModelForSequenceClassification,
    PreTrainedModel,
    PreTrainedTokenizerBase,
)

from kindchat.models.adapters import NotAdapterError, base_dir, is_adapter, write_base_name
from kindchat.models.registry import Manifest, Registry, UnknownModelError
from kindchat.models.tokenizer import load_tokenizer


def pick_device(device: str | None = None) -> torch.device:
    if device:
        return torch.device(device)
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def pick_dtype(device: torch.device) -> torch.dtype:
    if device.type == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return torch.float32


def load_causal_lm(
    path: Path, device: str | None = None
) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """Model (eval mode, on `device`) and tokenizer from a save_pretrained directory. A LoRA
    adapter version is loaded over its base and merged: one plain model, as a full version."""
    dev = pick_device(device)
    model = AutoModelForCausalLM.from_pretrained(str(base_dir(path)), dtype=pick_dtype(dev))
    if is_adapter(path):
        # lazy: peft only for adapter versions
        from peft import PeftModel

        model = PeftModel.from_pretrained(model, str(path)).merge_and_unload()
    model = model.to(dev)
    model.eval()
    return model, load_tokenizer(path)


def load_reward_model(
    path: Path, device: str | None = None
) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """A sequence-classification model with one output (the reward) and its tokenizer."""
    dev = pick_device(device)
    model = AutoModelForSequenceClassification.from_pretrained(
        str(path), num_labels=1, dtype=pick_dtype(dev)
    ).to(dev)
    model.eval()
    tokenizer = load_tokenizer(path)
    model.config.pad_token_id = tokenizer.pad_token_id
    return model, tokenizer


def is_peft(model: Any) -> bool:
    """Whether `model` carries LoRA adapters (a peft model) rather than plain weights."""
    return hasattr(model, "peft_config") and hasattr(model, "merge_and_unload")


def writer(
    model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, base: str | None = None
) -> Callable[[Path], None]:
    """What `Registry.save` runs to write a version: weights and tokenizer side by side; with
    `base`, the model's LoRA adapter alone, as a standard PEFT directory over that version."""

    def write(path: Path) -> None:
        if base is not None:
            model.save_pretrained(path, safe_serialization=True)
            write_base_name(path, base)
            return
        model.save_pretrained(path)
        tokenizer.save_pretrained(path)

    return write


def merge_adapter(registry: Registry, ref: str, alias: str | None = None) -> Manifest:
    """`kindchat models merge`: the full checkpoint of an adapter version (base + adapter,
    merged: what `load_causal_lm` serves), registered as a new version of the same kind, with
    the adapter and its base as parents; for engines without LoRA."""
    version = registry.version_of(ref)
    if version is None:
        raise UnknownModelError(f"{ref!r} is not a registered version or alias")
    manifest = registry.manifest(version)
    if manifest.base is None:
        raise NotAdapterError(f"{version} is a full checkpoint already; nothing to merge")
    model, tokenizer = load_causal_lm(registry.path(version), device="cpu")
    merged = registry.save(
        manifest.kind,
        writer(model, tokenizer),
        parents=[version, manifest.base],
        config={**manifest.config, "format": "full", "merged_from": version},
        metrics=manifest.metrics,
        data_fingerprint=manifest.data_fingerprint,
    )
    if alias:
        registry.set_alias(alias, merged.version)
    return merged
