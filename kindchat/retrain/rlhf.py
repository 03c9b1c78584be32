"""The `ppo` preference method: a warm-started reward model, then PPO (DeepSpeed-Chat step 3).

One night:

1. ``rm`` — fine-tune the *current* RM on the night's pairs only (`warm_start`), so that a few
   hundred fresh, on-policy votes are not diluted in the seed's 2,500 pairs; with
   `warm_start=False` a fresh RM is trained from the base LM on seed + feedback, as bootstrap does;
2. ``rm_gate`` — the new RM's accuracy on the seed's held-out pairs may fall at most
   `rm_gate_margin` below the current RM's (it must not forget what it knew);
3. ``ppo`` — PPO from the serving policy against the new RM, the per-token KL penalty anchored
   to SFT (not to yesterday's policy, so drift cannot compound over nights), rollouts on the
   seed's step-3 prompts plus the night's live prompts.

The new RM is promoted together with the policy (alias `rm`).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field, replace

from kindchat.models.presets import Preset
from kindchat.retrain.bootstrap import ppo_config, rm_config
from kindchat.retrain.errors import RetrainError
from kindchat.retrain.gates import rm_gate
from kindchat.retrain.methods import Method, MethodJob, MethodRefusedError, MethodResult
from kindchat.retrain.ppo import PpoConfig
from kindchat.retrain.reward import RmConfig
from kindchat.retrain.rm_eval import accuracy_metrics
from kindchat.retrain.stages import eval_rm, train_ppo, train_rm

logger = logging.getLogger(__name__)

PPO_KEEP = ("reward_start", "reward_end", "kl_end", "steps")
RM_KEEP = ("accuracy", "train_pairs", "loss_first", "loss_last")


@dataclass
class RlhfConfig:
    """One night of RM + PPO."""

    rm: RmConfig = field(default_factory=RmConfig)  # the reward model's run
    ppo: PpoConfig = field(default_factory=PpoConfig)  # the policy's run
    warm_start: bool = True  # fine-tune the current RM on the night's pairs (else base + seed)
    rm_gate_margin: float = 0.02  # new RM accuracy >= current RM accuracy - margin
    rm_alias: str = "rm"  # promoted with the policy

    def __post_init__(self) -> None:
        if not 0 <= self.rm_gate_margin <= 1:
            raise ValueError(f"rm_gate_margin must lie in [0, 1], got {self.rm_gate_margin}")


def night_config(preset: Preset) -> RlhfConfig:
    """The preset's RM budget (one pass over the night's pairs when warm-starting) and PPO."""
    rm = replace(rm_config(preset, preset.rm), max_steps=-1, epochs=1.0, max_records=None)
    return RlhfConfig(rm=rm, ppo=ppo_config(preset))


def current_accuracy(job: MethodJob, max_length: int) -> float | None:
    if job.rm is None:
        return None
    accuracy = job.registry.manifest(job.rm).metrics.get("accuracy")
    if isinstance(accuracy, int | float):
        return float(accuracy)
    results = eval_rm(job.settings, job.registry, job.rm, max_length)
    return float(accuracy_metrics(results)["accuracy"])


def train(job: MethodJob, config: RlhfConfig) -> MethodResult:
    """RM (warm start) → RM gate → PPO from the serving policy, anchored to SFT."""
    if job.data.pairs is None:
        raise RetrainError("ppo needs preference pairs for its reward model; the export has none")
    job.progress.enter("rm")
    warm = config.warm_start and job.rm is not None
    init = job.rm if warm else job.base
    if init is None:
        raise RetrainError("no reward model and no base LM to train one from")
    rm_run = replace(config.rm, extra_data=[job.data.pairs], seed_data=not warm)
    rm = train_rm(job.settings, job.registry, init, rm_run)
    job.progress.produced_version(rm.version)
    job.progress.record(
        "rm",
        {"version": rm.version, "init": init, "warm_start": warm}
        | {k: rm.metrics.get(k) for k in RM_KEEP},
    )

    job.progress.enter("rm_gate")
    before = current_accuracy(job, config.rm.max_length)
    gate = rm_gate(float(rm.metrics["accuracy"]), before, config.rm_gate_margin)
    job.progress.record("rm_gate", gate.as_dict())
    if not gate.passed:
        raise MethodRefusedError("; ".join(gate.reasons))

    job.progress.enter("ppo")
    policy = train_ppo(
        job.settings,
        job.registry,
        job.policy,
        rm.version,
        config.ppo,
        extra_prompts=job.data.prompts,
        run_dir=job.run_dir,
        reference_ref=job.sft,
    )
    metrics = {k: v for k, v in policy.metrics.items() if k in PPO_KEEP}
    metrics["rm"] = rm.version
    return MethodResult(
        policy.version,
        [rm.version, policy.version],
        metrics,
        promote={config.rm_alias: rm.version},
    )


METHOD = Method(
    name="ppo",
    summary="RM warm-started on the night's pairs, then PPO from the serving policy",
    config_type=RlhfConfig,
    default_config=night_config,
    train=train,
)
