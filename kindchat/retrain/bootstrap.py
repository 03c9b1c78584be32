"""`kindchat bootstrap`: build the embedded models from the seed data, stage by stage.

tokenizer + base LM → SFT → RM → gold RM (the evaluation judge) → PPO → policy evaluation.
Aliases: `base`, `sft`, `rm`, `gold-rm`, `rlhf`.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from kindchat.config import Settings
from kindchat.models.presets import Preset, StageBudget
from kindchat.models.registry import Manifest, Registry
from kindchat.retrain.policy_eval import PolicyEvalConfig
from kindchat.retrain.ppo import PpoConfig
from kindchat.retrain.reward import RmConfig
from kindchat.retrain.sft import SftConfig
from kindchat.retrain.stages import eval_policy, train_base, train_ppo, train_rm, train_sft

logger = logging.getLogger(__name__)


@dataclass
class BootstrapReport:
    preset: str
    versions: dict[str, str] = field(default_factory=dict)  # stage -> version id
    seconds: dict[str, float] = field(default_factory=dict)  # stage -> wall time

    @property
    def total_seconds(self) -> float:
        return sum(self.seconds.values())


def rm_config(preset: Preset, budget: StageBudget) -> RmConfig:
    return RmConfig(
        epochs=budget.epochs,
        max_steps=budget.max_steps,
        batch_size=budget.batch_size,
        learning_rate=budget.learning_rate,
        max_length=preset.seq_len,
        max_records=budget.max_records,
        seed=budget.seed,
    )


def ppo_config(preset: Preset) -> PpoConfig:
    b = preset.ppo
    return PpoConfig(
        steps=b.steps,
        batch_size=b.batch_size,
        mini_batch_size=b.mini_batch_size,
        max_new_tokens=b.max_new_tokens,
        max_prompt_tokens=preset.seq_len - b.max_new_tokens,
        actor_lr=b.actor_lr,
        critic_lr=b.critic_lr,
    )


def run_bootstrap(settings: Settings, preset: Preset, until: str = "eval") -> BootstrapReport:
    """Run the stages in order up to and including `until` (base, sft, rm, gold-rm, ppo, eval)."""
    settings.ensure_dirs()
    registry = Registry.for_settings(settings)
    registry.prune_staging()
    report = BootstrapReport(preset.name)

    def stage(name: str, alias: str | None, build: Callable[[], Manifest | None]) -> None:
        logger.info("bootstrap stage %s (preset %s)", name, preset.name)
        start = time.perf_counter()
        manifest = build()
        report.seconds[name] = round(time.perf_counter() - start, 1)
        if manifest is not None:
            report.versions[name] = manifest.version
            if alias:
                registry.set_alias(alias, manifest.version)
        logger.info("bootstrap stage %s done in %.0f s", name, report.seconds[name])

    sft = SftConfig(
        epochs=preset.sft.epochs,
        max_steps=preset.sft.max_steps,
        batch_size=preset.sft.batch_size,
        learning_rate=preset.sft.learning_rate,
        max_length=preset.seq_len,
        max_records=preset.sft.max_records,
    )
    stages: list[tuple[str, str | None, Callable[[], Manifest | None]]] = [
        ("base", "base", lambda: train_base(settings, registry, preset)),
        ("sft", "sft", lambda: train_sft(settings, registry, "base", sft)),
        ("rm", "rm", lambda: train_rm(settings, registry, "base", rm_config(preset, preset.rm))),
        (
            "gold-rm",
            "gold-rm",
            lambda: train_rm(
                settings, registry, "base", rm_config(preset, preset.gold_rm), gold=True
            ),
        ),
        ("ppo", "rlhf", lambda: train_ppo(settings, registry, "sft", "rm", ppo_config(preset))),
        ("eval", None, lambda: _evaluate(settings, registry, preset)),
    ]
    names = [name for name, _, _ in stages]
    if until not in names:
        raise ValueError(f"unknown stage {until!r}; choose from {names}")
    for name, alias, build in stages[: names.index(until) + 1]:
        stage(name, alias, build)
    return report


def _evaluate(settings: Settings, registry: Registry, preset: Preset) -> None:
    config = PolicyEvalConfig(max_new_tokens=preset.ppo.max_new_tokens)
    eval_policy(settings, registry, "rlhf", "sft", "gold-rm", config)
