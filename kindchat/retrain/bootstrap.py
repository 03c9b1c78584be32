"""`kindchat bootstrap`: build the embedded models from the seed data, stage by stage."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from kindchat.config import Settings
from kindchat.models.presets import Preset
from kindchat.models.registry import Manifest, Registry
from kindchat.retrain.sft import SftConfig
from kindchat.retrain.stages import train_base, train_sft

logger = logging.getLogger(__name__)


@dataclass
class BootstrapReport:
    preset: str
    versions: dict[str, str] = field(default_factory=dict)  # stage -> version id
    seconds: dict[str, float] = field(default_factory=dict)  # stage -> wall time

    @property
    def total_seconds(self) -> float:
        return sum(self.seconds.values())


def run_bootstrap(settings: Settings, preset: Preset) -> BootstrapReport:
    """tokenizer + base LM → SFT; sets aliases `base` and `sft`."""
    settings.ensure_dirs()
    registry = Registry(settings.models_dir)
    registry.prune_staging()
    report = BootstrapReport(preset.name)

    def stage(name: str, alias: str, build: Callable[[], Manifest]) -> Manifest:
        logger.info("bootstrap stage %s (preset %s)", name, preset.name)
        start = time.perf_counter()
        manifest = build()
        report.seconds[name] = round(time.perf_counter() - start, 1)
        report.versions[name] = manifest.version
        registry.set_alias(alias, manifest.version)
        logger.info(
            "bootstrap stage %s done in %.0f s: %s", name, report.seconds[name], manifest.version
        )
        return manifest

    base = stage("base", "base", lambda: train_base(settings, registry, preset))
    sft_config = SftConfig(
        epochs=preset.sft.epochs,
        max_steps=preset.sft.max_steps,
        batch_size=preset.sft.batch_size,
        learning_rate=preset.sft.learning_rate,
        max_length=preset.seq_len,
        max_records=preset.sft.max_records,
    )
    stage("sft", "sft", lambda: train_sft(settings, registry, base.version, sft_config))
    return report
