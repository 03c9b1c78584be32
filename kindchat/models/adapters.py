"""LoRA adapter versions: a night's policy as a standard PEFT directory over a registered base.

An adapter version holds what `PeftModel.save_pretrained` writes (`adapter_config.json`,
`adapter_model.safetensors`, the PEFT model card) and kindchat's manifest, whose `base` names
the registered version the adapter applies to (also written into `adapter_config.json` as
`base_model_name_or_path`). Nothing else: the tokenizer, chat template and config are the
base's. The base is a parent in the manifest's lineage, so `models gc` keeps it while any kept
adapter needs it.

Why: a night that copies the whole model costs a full checkpoint per version (a 10.7B base in
bf16: ~21 GB each) and, for the arena, a full copy in memory per version served; an adapter of
rank 16 on every linear layer of that base is ~0.1 GB, and an engine with LoRA (vLLM's
`--enable-lora`) serves it over the one base it already holds (:mod:`kindchat.models.vllm`).
`kindchat models merge` (:func:`kindchat.models.loading.merge_adapter`) writes a full
checkpoint for engines without LoRA.

This module is torch-free until a model is loaded (peft and transformers are imported lazily).
"""

from __future__ import annotations

import json
import math
from pathlib import Path

from kindchat.errors import InvalidError
from kindchat.models.registry import UnknownModelError

ADAPTER_CONFIG = "adapter_config.json"
ADAPTER_WEIGHTS = "adapter_model.safetensors"

# Above this many parameters, `KINDCHAT_ADAPTER=auto` trains adapters: at 1B parameters a full
# copy is ~2 GB per night in bf16 (4 GB in fp32) and one more full model in memory per arena
# side, while LoRA's update is a few MB; below it (the embedded tiny and micro models, a few MB
# each) a full copy costs less than the adapter's bookkeeping, and engines without LoRA serve it.
ADAPTER_AUTO_MIN_PARAMS = 1_000_000_000


class NotAdapterError(InvalidError):
    """An adapter operation on a full checkpoint."""


def is_adapter(path: Path | str) -> bool:
    """Whether `path` is a PEFT adapter directory (not a full model)."""
    return (Path(path) / ADAPTER_CONFIG).is_file()


def adapter_base_version(path: Path) -> str | None:
    """The base an adapter directory names in its adapter config (for a registered adapter,
    the base version id: :func:`write_base_name`); None for a full model."""
    if not is_adapter(path):
        return None
    named = json.loads((path / ADAPTER_CONFIG).read_text(encoding="utf-8"))
    return named.get("base_model_name_or_path") or None


def base_dir(path: Path | str) -> Path:
    """The full model directory behind `path`: itself for a full model; for an adapter, its base
    (a sibling version in the registry, or the directory its adapter config names)."""
    path = Path(path)
    if not is_adapter(path):
        return path
    named = adapter_base_version(path)
    if named:
        for candidate in (path.parent / named, Path(named).expanduser()):
            if (candidate / "config.json").is_file():
                return candidate
    raise UnknownModelError(
        f"adapter {path.name}: its base {named!r} is not in the registry (removed by hand?); "
        "restore the base version or register the adapter again"
    )


def write_base_name(path: Path, base_version: str) -> None:
    """Name the base version in a saved adapter's `adapter_config.json` (PEFT's field)."""
    config_path = path / ADAPTER_CONFIG
    config = json.loads(config_path.read_text(encoding="utf-8"))
    config["base_model_name_or_path"] = base_version
    config["inference_mode"] = True
    config_path.write_text(json.dumps(config, indent=2, sort_keys=True), encoding="utf-8")


def model_params(path: Path) -> int:
    """Parameters of the full model behind `path`, read from its safetensors headers (the
    tensors' shapes; nothing is loaded)."""
    from safetensors import safe_open  # lazy: only `auto` asks

    total = 0
    for weights in sorted(base_dir(path).glob("*.safetensors")):
        with safe_open(str(weights), framework="np") as handle:
            total += sum(math.prod(handle.get_slice(k).get_shape()) for k in handle.keys())  # noqa: SIM118
    return total


def wants_adapter(setting: str, policy_dir: Path) -> bool:
    """Whether a night trains an adapter: `lora` always, `full` never, `auto` when the policy
    is already an adapter or its base has at least :data:`ADAPTER_AUTO_MIN_PARAMS`."""
    if setting == "lora":
        return True
    if setting == "full":
        return False
    return is_adapter(policy_dir) or model_params(policy_dir) >= ADAPTER_AUTO_MIN_PARAMS
