"""`kindchat bootstrap`: build the embedded models from the seed data, stage by stage.

tokenizer + base LM → SFT → RM → gold RM (the evaluation's scorer) → PPO → policy evaluation.
Aliases: `base`, `sft`, `rm`, `gold-rm`, `rlhf`. Progress and resume: :mod:`bootstrap_state`.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from kindchat.config import Settings
from kindchat.models.presets import Preset
from kindchat.models.registry import Manifest, Registry
from kindchat.retrain.bootstrap_state import STAGES, BootstrapState, read_state, write_state
from kindchat.retrain.sft import SftConfig, Trainer, train_base, train_sft

logger = logging.getLogger(__name__)


@dataclass
class BootstrapReport:
    preset: str
    versions: dict[str, str] = field(default_factory=dict)  # stage -> version id
    seconds: dict[str, float] = field(default_factory=dict)  # stage -> wall time

    @property
    def total_seconds(self) -> float:
        return sum(self.seconds.values())


def run_bootstrap(
    settings: Settings,
    preset: Preset,
    until: str = "eval",
    *,
    resume: bool = True,
    serve_sft_first: bool = False,
    trainer: Trainer = "trl",
) -> BootstrapReport:
    """Run the stages in order up to and including `until` (base, sft, rm, gold-rm, ppo, eval).

    Progress goes to `$KINDCHAT_HOME/bootstrap/<preset>.json` at every stage boundary. With
    `resume`, stages an earlier run of this preset finished (their versions still registered)
    are skipped, so a bootstrap killed halfway continues where it stopped. Each stage reads the
    versions this run made, never what an alias points at meanwhile. With `serve_sft_first`,
    the served `rlhf` alias moves to the new SFT model as soon as it lands (a better model to
    talk to while RM and PPO train), and to the PPO policy when that lands. `trainer` trains
    the base LM and SFT ("torch": the lean loop of the first visit's models, see `lean`); a run
    that ends at SFT imports nothing of the RM and PPO stages (TRL among them).
    """
    settings.ensure_dirs()
    registry = Registry.for_settings(settings)
    registry.prune_staging()
    stages_all = list(STAGES)
    if until not in stages_all:
        raise ValueError(f"unknown stage {until!r}; choose from {stages_all}")
    earlier = read_state(settings, preset.name) if resume else None
    state = BootstrapState(preset=preset.name, until=until)
    if earlier is not None:
        for name in stages_all:
            version = earlier.versions.get(name)
            if name not in earlier.seconds or (
                version is not None and not registry.is_version(version)
            ):
                break
            state.seconds[name] = earlier.seconds[name]
            if version is not None:
                state.versions[name] = version
    if state.seconds:
        logger.info("bootstrap %s: resuming after %s", preset.name, ", ".join(state.seconds))
    ref = state.versions.get  # this run's versions, stage by stage

    sft = SftConfig.for_preset(preset, trainer=trainer)
    builds: dict[str, tuple[list[str], Callable[[], Manifest | None]]] = {
        "base": (["base"], lambda: train_base(settings, registry, preset, trainer)),
        "sft": (["sft"], lambda: train_sft(settings, registry, ref("base", "base"), sft)),
    }
    if stages_all.index(until) > stages_all.index("sft"):
        builds.update(_later_stages(settings, registry, preset, state))
    if serve_sft_first:
        builds["sft"] = (["sft", "rlhf"], builds["sft"][1])
    try:
        for name in stages_all[: stages_all.index(until) + 1]:
            if name in state.seconds:
                continue
            state.stage, state.stage_started_at = name, time.time()
            write_state(settings, state)
            logger.info("bootstrap stage %s (preset %s)", name, preset.name)
            start = time.perf_counter()
            aliases, build = builds[name]
            manifest = build()
            state.seconds[name] = round(time.perf_counter() - start, 1)
            if manifest is not None:
                state.versions[name] = manifest.version
                for alias in aliases:
                    registry.set_alias(alias, manifest.version)
            write_state(settings, state)
            logger.info("bootstrap stage %s done in %.0f s", name, state.seconds[name])
    except BaseException as err:
        state.status = "stopped" if isinstance(err, KeyboardInterrupt) else "failed"
        state.error = f"{type(err).__name__}: {err}"
        write_state(settings, state)
        raise
    state.status, state.stage = "done", None
    write_state(settings, state)
    return BootstrapReport(preset.name, dict(state.versions), dict(state.seconds))


def _later_stages(
    settings: Settings, registry: Registry, preset: Preset, state: BootstrapState
) -> dict[str, tuple[list[str], Callable[[], Manifest | None]]]:
    """The stages after SFT (RM, gold RM, PPO, evaluation), each reading this run's versions."""
    from kindchat.retrain.ppo import ppo_config, train_ppo
    from kindchat.retrain.reward import rm_config
    from kindchat.retrain.stages import train_rm

    def ref(stage: str) -> str:
        return state.versions.get(stage, stage)

    return {
        "rm": (
            ["rm"],
            lambda: train_rm(settings, registry, ref("base"), rm_config(preset, preset.rm)),
        ),
        "gold-rm": (
            ["gold-rm"],
            lambda: train_rm(
                settings, registry, ref("base"), rm_config(preset, preset.gold_rm), gold=True
            ),
        ),
        "ppo": (
            ["rlhf"],
            lambda: train_ppo(settings, registry, ref("sft"), ref("rm"), ppo_config(preset)),
        ),
        "eval": ([], lambda: _evaluate(settings, registry, preset, state.versions)),
    }


def _evaluate(
    settings: Settings, registry: Registry, preset: Preset, versions: dict[str, str]
) -> None:
    from kindchat.retrain.policy_eval import PolicyEvalConfig
    from kindchat.retrain.stages import eval_policy

    config = PolicyEvalConfig(max_new_tokens=preset.ppo.max_new_tokens)
    eval_policy(
        settings,
        registry,
        versions.get("ppo", "rlhf"),
        versions.get("sft", "sft"),
        versions.get("gold-rm", "gold-rm"),
        config,
    )
