"""One retrain cycle: the day's feedback becomes reward data, then a new RM and policy, gated.

Stages, in order (each recorded on the run in the feedback store, with its metrics):

1. ``feedback`` — count preference pairs given since the last cycle that used its data
   (succeeded or refused); fewer than `min_new_pairs`: the run is `skipped` with the reason;
2. ``export`` — rebuild the reward data from all feedback (kindchat.feedback.export);
3. ``judge`` — optional: re-rank the feedback pairs with the G-Eval judge (KINDCHAT_JUDGE_*);
4. ``rm`` — train a new RM from the previous RM (or base) on seed + feedback pairs;
5. ``rm_gate`` — its held-out accuracy may fall at most `rm_gate_margin` below the current RM's;
6. ``ppo`` / ``dpo`` — train a policy from the serving policy (or SFT) with the new RM;
7. ``policy_gate`` — evaluate it against the serving policy under the gold RM: win rate above
   `min_win_rate` (and the 95% interval above 0.5), KL to SFT under `max_kl`, no rise in empty or
   repetitive answers beyond the allowed margins;
8. ``promote`` — atomic alias swaps (`rlhf`, then `rm`); the server hot-swaps on its own.

A gate that says no ends the run as `refused`; an exception as `failed`. Either way no alias
moves: versions produced on the way stay registered, unaliased, listed on the run. Everything a
cycle writes outside the registry lives in `$KINDCHAT_HOME/runs/retrain-<run id>/`, which gets a
`status.json` at the end; PPO checkpoints are removed there. One cycle at a time, across
processes: an exclusive non-blocking `flock` on `$KINDCHAT_HOME/retrain.lock` (released by the
kernel if the process dies). A cycle that takes the lock marks runs left `running` by a killed
process as failed and removes their half-written registry versions.
"""

from __future__ import annotations

import fcntl
import json
import logging
import os
import shutil
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field, fields, replace
from datetime import timedelta
from pathlib import Path
from typing import Any, Literal

from sqlalchemy import Engine
from sqlmodel import col, select

from kindchat.config import Settings
from kindchat.feedback import store
from kindchat.feedback.db import init_db, session_scope
from kindchat.feedback.models import RetrainRun, RetrainRunPublic, as_utc, utcnow
from kindchat.models.registry import Registry
from kindchat.retrain.errors import (
    PromotionError,
    RetrainBusyError,
    RetrainError,
    RetrainFailedError,
)

logger = logging.getLogger(__name__)

LOCK_FILE = "retrain.lock"
RUN_DIR_PREFIX = "retrain-"
STATUS_FILE = "status.json"
STALE_QUEUED = timedelta(minutes=10)  # a queued run whose worker never started is given up
StageHook = Callable[[str], None]


# ---- configuration --------------------------------------------------------------------------
@dataclass(frozen=True)
class RetrainConfig:
    """What one cycle trains and what it takes to promote (budgets default to the preset's)."""

    preset: str = "tiny"  # model budgets: kindchat.models.presets (micro, tiny)
    algorithm: Literal["ppo", "dpo"] = "ppo"  # how the new policy is trained
    min_new_pairs: int = 50  # new feedback pairs since the last cycle, else skip
    judge: bool = False  # re-rank feedback pairs with the G-Eval judge before training
    rm_init: Literal["rm", "base"] = "rm"  # new RM from the current RM, or afresh from base
    policy_init: Literal["policy", "sft"] = "policy"  # train from the serving policy, or SFT
    rm_gate_margin: float = 0.02  # new RM accuracy ≥ current RM accuracy − margin
    min_win_rate: float = 0.5  # the new policy's win rate over the serving one must exceed this
    require_ci_above_half: bool = True  # … and the low end of its 95% interval must exceed 0.5
    max_kl: float = 20.0  # KL(new ‖ SFT) in nats per answer, at most
    max_empty_rise: float = 0.05  # empty-answer rate may rise by at most this much
    max_repetitive_rise: float = 0.05  # repetitive-answer rate may rise by at most this much
    rm_max_steps: int | None = None  # RM optimiser steps (None: the preset's)
    rm_max_records: int | None = None  # RM training pairs, at most (None: the preset's)
    ppo_steps: int | None = None  # PPO rollout batches (None: the preset's)
    ppo_checkpoint_every: int = 10  # PPO checkpoint interval in steps (0: none)
    dpo_max_steps: int | None = None  # DPO optimiser steps (None: the preset's RM steps)
    dpo_learning_rate: float = 5e-5
    dpo_beta: float = 0.1
    eval_max_new_tokens: int | None = None  # answer budget in the policy gate (None: PPO's)
    served_alias: str = "rlhf"  # the alias promoted (and the baseline of the policy gate)
    rm_alias: str = "rm"
    sft_alias: str = "sft"
    base_alias: str = "base"
    gold_alias: str = "gold-rm"  # the judge of the policy gate (never trained on by PPO)

    def __post_init__(self) -> None:
        from kindchat.models.presets import PRESETS

        checks = [
            (
                self.preset in PRESETS,
                f"preset must be one of {sorted(PRESETS)}, got {self.preset!r}",
            ),
            (
                self.algorithm in ("ppo", "dpo"),
                f"algorithm must be ppo or dpo, got {self.algorithm!r}",
            ),
            (self.rm_init in ("rm", "base"), f"rm_init must be rm or base, got {self.rm_init!r}"),
            (
                self.policy_init in ("policy", "sft"),
                f"policy_init must be policy or sft, got {self.policy_init!r}",
            ),
            (self.min_new_pairs >= 0, f"min_new_pairs must be >= 0, got {self.min_new_pairs}"),
            (
                0 <= self.rm_gate_margin <= 1,
                f"rm_gate_margin must lie in [0, 1], got {self.rm_gate_margin}",
            ),
            (
                0 <= self.min_win_rate < 1,
                f"min_win_rate must lie in [0, 1), got {self.min_win_rate}",
            ),
            (self.max_kl > 0, f"max_kl must be > 0, got {self.max_kl}"),
            (self.max_empty_rise >= 0, f"max_empty_rise must be >= 0, got {self.max_empty_rise}"),
            (
                self.max_repetitive_rise >= 0,
                f"max_repetitive_rise must be >= 0, got {self.max_repetitive_rise}",
            ),
            (self.ppo_checkpoint_every >= 0, "ppo_checkpoint_every must be >= 0"),
            (0 < self.dpo_learning_rate < 1, "dpo_learning_rate must lie in (0, 1)"),
            (self.dpo_beta > 0, f"dpo_beta must be > 0, got {self.dpo_beta}"),
        ]
        for name in (
            "rm_max_steps",
            "rm_max_records",
            "ppo_steps",
            "dpo_max_steps",
            "eval_max_new_tokens",
        ):
            value = getattr(self, name)
            checks.append(
                (value is None or value >= 1, f"{name} must be >= 1 or unset, got {value}")
            )
        for ok, message in checks:
            if not ok:
                raise ValueError(message)

    @classmethod
    def from_settings(cls, settings: Settings, **overrides: Any) -> RetrainConfig:
        """The cycle `settings` describe (KINDCHAT_RETRAIN_*), with `overrides` applied."""
        values: dict[str, Any] = {
            "preset": settings.retrain_preset,
            "algorithm": settings.retrain_algorithm,
            "min_new_pairs": settings.retrain_min_new_pairs,
            "judge": settings.retrain_judge,
        }
        return cls(**{**values, **overrides})

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> RetrainConfig:
        names = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - names)
        if unknown:
            raise ValueError(f"unknown retrain config field(s) {unknown}; known: {sorted(names)}")
        return cls(**data)


# ---- gates (pure) ---------------------------------------------------------------------------
@dataclass(frozen=True)
class GateResult:
    """A gate's verdict: `passed`, the reasons it did not, and the figures it looked at."""

    passed: bool
    reasons: tuple[str, ...] = ()
    figures: dict[str, Any] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        return {"passed": self.passed, "reasons": list(self.reasons), **self.figures}


def rm_gate(new_accuracy: float, current_accuracy: float | None, margin: float) -> GateResult:
    """The new RM's held-out accuracy may be at most `margin` below the current RM's."""
    figures = {"accuracy": new_accuracy, "current_accuracy": current_accuracy, "margin": margin}
    if current_accuracy is None or new_accuracy >= current_accuracy - margin:
        return GateResult(True, (), figures)
    reason = (
        f"new RM accuracy {new_accuracy:.3f} is below the current RM's {current_accuracy:.3f} "
        f"by more than {margin:.3f}"
    )
    return GateResult(False, (reason,), figures)


def policy_gate(overall: Any, config: RetrainConfig) -> GateResult:
    """Judge the overall `PolicySetResult` of new-vs-serving under the gold RM."""
    win = overall.win_rate
    reasons = []
    if not win.value > config.min_win_rate:
        reasons.append(f"win rate {win.value:.3f} is not above {config.min_win_rate:.3f}")
    if config.require_ci_above_half and not win.low > 0.5:
        reasons.append(
            f"the 95% interval of the win rate [{win.low:.3f}, {win.high:.3f}] does not lie above 0.5"
        )
    if not overall.kl_a_sft <= config.max_kl:
        reasons.append(f"KL to SFT {overall.kl_a_sft:.2f} is over the bound {config.max_kl:.2f}")
    for what, new, old, allowed in (
        ("empty", overall.empty_a, overall.empty_b, config.max_empty_rise),
        ("repetitive", overall.repetitive_a, overall.repetitive_b, config.max_repetitive_rise),
    ):
        if new - old > allowed:
            reasons.append(
                f"{what} answers rose from {old:.3f} to {new:.3f} (allowed +{allowed:.3f})"
            )
    return GateResult(not reasons, tuple(reasons), overall.as_dict())


# ---- the cross-process lock -----------------------------------------------------------------
def lock_path(settings: Settings) -> Path:
    return settings.home / LOCK_FILE


@contextmanager
def cycle_lock(settings: Settings) -> Iterator[None]:
    """Hold the retrain lock, or raise :class:`RetrainBusyError` at once if someone else does."""
    settings.home.mkdir(parents=True, exist_ok=True)
    with lock_path(settings).open("a+", encoding="utf-8") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.seek(0)
            holder = handle.read().strip() or "another process"
            raise RetrainBusyError(
                f"a retrain cycle is running already ({holder}); wait for it to finish"
            ) from None
        try:
            handle.seek(0)
            handle.truncate()
            handle.write(f"pid {os.getpid()}")
            handle.flush()
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def lock_holder(settings: Settings) -> str | None:
    """Who holds the retrain lock now (`pid …`), or None when it is free."""
    try:
        with cycle_lock(settings):
            return None
    except RetrainBusyError as err:
        return str(err)


# ---- recording ------------------------------------------------------------------------------
class RunRecorder:
    """Writes a run's stage, metrics and produced versions to the store as the cycle goes."""

    def __init__(self, engine: Engine, run_id: str, on_stage: StageHook | None = None) -> None:
        self.engine = engine
        self.run_id = run_id
        self.on_stage = on_stage
        self.stage: str | None = None
        self.metrics: dict[str, Any] = {}
        self.produced: list[str] = []
        self._started = time.perf_counter()

    def _update(self, **changes: Any) -> RetrainRunPublic:
        with session_scope(self.engine) as session:
            return store.update_run(session=session, run_id=self.run_id, **changes)

    def enter(self, stage: str) -> None:
        self._close_stage()
        self.stage = stage
        self._started = time.perf_counter()
        logger.info("retrain run %s: stage %s", self.run_id, stage)
        self._update(stage=stage)
        if self.on_stage is not None:
            self.on_stage(stage)

    def _close_stage(self) -> None:
        if self.stage is not None:
            entry = self.metrics.setdefault(self.stage, {})
            entry.setdefault("seconds", round(time.perf_counter() - self._started, 1))

    def record(self, stage: str, values: dict[str, Any]) -> None:
        self.metrics.setdefault(stage, {}).update(json.loads(json.dumps(values, default=str)))
        self._update(metrics=self.metrics)

    def produced_version(self, version: str) -> None:
        self.produced.append(version)
        self._update(produced_versions=self.produced)

    def finish(
        self, status: str, *, error: str | None = None, promoted: bool = False
    ) -> RetrainRunPublic:
        self._close_stage()
        return self._update(status=status, metrics=self.metrics, error=error, promoted=promoted)


def start_run(engine: Engine, run_id: str | None) -> RetrainRunPublic:
    """Move a queued run (made by `trigger_retrain`) to running, or create a running one."""
    with session_scope(engine) as session:
        if run_id is None:
            return store.create_run(session=session, status="running", stage="feedback")
        return store.update_run(session=session, run_id=run_id, status="running", stage="feedback")


def fail_stale_runs(
    settings: Settings, engine: Engine, registry: Registry, keep: str | None
) -> int:
    """With the lock held, runs still `running` belong to a dead process: mark them failed.

    Also gives up `queued` runs older than 10 minutes and removes half-written registry
    versions (`.staging`). Returns how many runs were marked.
    """
    removed = registry.prune_staging()
    if removed:
        logger.warning("removed %d half-written model version(s) of an interrupted run", removed)
    now = utcnow()
    with session_scope(engine) as session:
        rows = session.exec(
            select(RetrainRun).where(col(RetrainRun.status).in_(["running", "queued"]))
        ).all()
        stale = [
            r
            for r in rows
            if r.id != keep and (r.status == "running" or now - as_utc(r.created_at) > STALE_QUEUED)
        ]
        for row in stale:
            reason = (
                f"interrupted: the process running stage {row.stage!r} died (no promotion)"
                if row.status == "running"
                else "its worker never started"
            )
            store.update_run(session=session, run_id=row.id, status="failed", error=reason)
            mark_run_dir(run_dir(settings, row.id), "failed", reason)
            logger.warning("retrain run %s marked failed: %s", row.id, reason)
    return len(stale)


def run_dir(settings: Settings, run_id: str) -> Path:
    return settings.runs_dir / f"{RUN_DIR_PREFIX}{run_id}"


def mark_run_dir(path: Path, status: str, error: str | None) -> None:
    """Write `status.json` in a cycle's directory; drop its PPO checkpoints (resume-only data)."""
    if not path.is_dir():
        return
    for checkpoint in path.glob("ppo/*checkpoint*"):
        shutil.rmtree(checkpoint, ignore_errors=True)
    data = {"status": status, "error": error, "at": utcnow().isoformat()}
    (path / STATUS_FILE).write_text(json.dumps(data, ensure_ascii=False), encoding="utf-8")


# ---- the cycle ------------------------------------------------------------------------------
@dataclass
class Refs:
    """Version ids the cycle starts from (aliases resolved once, at the start)."""

    sft: str
    gold: str
    served: str | None
    rm: str | None
    base: str | None

    @classmethod
    def resolve(cls, registry: Registry, config: RetrainConfig) -> Refs:
        aliases = registry.aliases()
        for alias in (config.sft_alias, config.gold_alias):
            if alias not in aliases:
                raise RetrainError(
                    f"alias {alias!r} is missing; run `kindchat bootstrap` before retraining"
                )
        refs = cls(
            sft=aliases[config.sft_alias],
            gold=aliases[config.gold_alias],
            served=aliases.get(config.served_alias),
            rm=aliases.get(config.rm_alias),
            base=aliases.get(config.base_alias),
        )
        if refs.rm is None and refs.base is None:
            raise RetrainError(f"neither {config.rm_alias!r} nor {config.base_alias!r} exists")
        return refs

    @property
    def baseline(self) -> str:
        """The policy the new one must beat: the serving one (SFT before the first promotion)."""
        return self.served or self.sft


class Cycle:
    """The stages of one run; :meth:`run` returns the finished run."""

    def __init__(
        self,
        settings: Settings,
        config: RetrainConfig,
        engine: Engine,
        registry: Registry,
        recorder: RunRecorder,
    ) -> None:
        from kindchat.models.presets import get_preset

        self.settings = settings
        self.config = config
        self.engine = engine
        self.registry = registry
        self.rec = recorder
        self.preset = get_preset(config.preset)
        self.dir = run_dir(settings, recorder.run_id)

    def run(self) -> RetrainRunPublic:
        refs = Refs.resolve(self.registry, self.config)
        self.rec.record("start", {"refs": asdict(refs), "config": self.config.to_json()})
        skip = self.check_feedback()
        if skip is not None:
            return self.finish("skipped", skip)
        self.dir.mkdir(parents=True, exist_ok=True)
        pair_files, prompts = self.export()
        if self.config.judge:
            pair_files = self.judge(pair_files[0])
        rm_version = self.train_rm(refs, pair_files)
        gate = self.gate_rm(refs, rm_version)
        if not gate.passed:
            return self.finish("refused", "; ".join(gate.reasons))
        policy = self.train_policy(refs, rm_version, pair_files, prompts)
        gate = self.gate_policy(refs, policy)
        if not gate.passed:
            return self.finish("refused", "; ".join(gate.reasons))
        self.promote(refs, policy, rm_version)
        return self.finish("succeeded", None, promoted=True)

    def finish(self, status: str, reason: str | None, promoted: bool = False) -> RetrainRunPublic:
        if reason:
            logger.info("retrain run %s %s: %s", self.rec.run_id, status, reason)
        run = self.rec.finish(status, error=reason, promoted=promoted)
        mark_run_dir(self.dir, status, reason)
        return run

    # ---- stages ------------------------------------------------------------------------------
    def check_feedback(self) -> str | None:
        """The reason to skip, or None when enough new feedback came in."""
        self.rec.enter("feedback")
        with session_scope(self.engine) as session:
            consumed = [
                r.started_at
                for status in ("succeeded", "refused")
                for r in store.list_runs(session=session, status=status, limit=1)
                if r.started_at is not None
            ]
            since = max(consumed) if consumed else None
            new_pairs = sum(1 for _ in store.iter_pairs(session=session, since=since))
        self.rec.record(
            "feedback",
            {"new_pairs": new_pairs, "since": since, "min_new_pairs": self.config.min_new_pairs},
        )
        if new_pairs < self.config.min_new_pairs:
            return (
                f"too little new feedback: {new_pairs} preference pair(s) since "
                f"{since.isoformat() if since else 'the start'}, {self.config.min_new_pairs} needed"
            )
        return None

    def export(self) -> tuple[list[Path], list[str]]:
        """Reward data from all feedback (the seed pairs are added by the RM stage itself)."""
        from kindchat.feedback.export import ExportConfig, export_reward_data

        self.rec.enter("export")
        out = self.dir / "data"
        with session_scope(self.engine) as session:
            report = export_reward_data(
                session=session,
                data_dir=self.settings.data_dir,
                out_dir=out,
                config=ExportConfig(include_seed=False),
            )
        rows = json.loads((out / "train.json").read_text(encoding="utf-8"))
        prompts = list(dict.fromkeys(row["prompt"] for row in rows))
        self.rec.record(
            "export",
            {
                "train": report.train,
                "test": report.test,
                "dropped": report.dropped,
                "fingerprint": report.fingerprint,
                "prompts": len(prompts),
            },
        )
        return [out / "train.json"], prompts

    def judge(self, pairs: Path) -> list[Path]:
        """Re-rank the feedback pairs with the G-Eval judge; its ranking replaces the users'."""
        from kindchat.feedback.judge import JudgeCache, JudgeConfig, judge_file
        from kindchat.feedback.llm import ChatClient, EndpointConfig

        self.rec.enter("judge")
        ranked = self.dir / "data" / "judged_pairs.json"
        report = judge_file(
            in_path=pairs,
            out_path=self.dir / "data" / "judged_scores.json",
            client=ChatClient(EndpointConfig.from_settings(self.settings)),
            config=JudgeConfig(concurrency=self.settings.judge_concurrency),
            cache=JudgeCache(self.settings.home / "cache" / "judge"),
            pairs_out=ranked,
            progress=False,
        )
        self.rec.record("judge", asdict(report))
        return [ranked]

    def train_rm(self, refs: Refs, pair_files: list[Path]) -> str:
        from kindchat.retrain.bootstrap import rm_config
        from kindchat.retrain.stages import train_rm

        self.rec.enter("rm")
        budget = self.preset.rm
        overrides = {
            k: v
            for k, v in (
                ("max_steps", self.config.rm_max_steps),
                ("max_records", self.config.rm_max_records),
            )
            if v is not None
        }
        config = replace(
            rm_config(self.preset, replace(budget, **overrides)), extra_data=pair_files
        )
        init = refs.rm if self.config.rm_init == "rm" and refs.rm else refs.base
        if init is None:
            raise RetrainError(f"no {self.config.base_alias!r} model to train a fresh RM from")
        manifest = train_rm(self.settings, self.registry, init, config)
        self.rec.produced_version(manifest.version)
        m = manifest.metrics
        self.rec.record(
            "rm",
            {
                "version": manifest.version,
                "init": init,
                **{k: m.get(k) for k in ("accuracy", "train_pairs", "loss_first", "loss_last")},
            },
        )
        return manifest.version

    def current_rm_accuracy(self, refs: Refs) -> float | None:
        if refs.rm is None:
            return None
        accuracy = self.registry.manifest(refs.rm).metrics.get("accuracy")
        if isinstance(accuracy, int | float):
            return float(accuracy)
        from kindchat.retrain.rm_eval import accuracy_metrics
        from kindchat.retrain.stages import eval_rm

        results = eval_rm(self.settings, self.registry, refs.rm, self.preset.seq_len)
        return float(accuracy_metrics(results)["accuracy"])

    def gate_rm(self, refs: Refs, rm_version: str) -> GateResult:
        self.rec.enter("rm_gate")
        new = float(self.registry.manifest(rm_version).metrics["accuracy"])
        gate = rm_gate(new, self.current_rm_accuracy(refs), self.config.rm_gate_margin)
        self.rec.record("rm_gate", gate.as_dict())
        return gate

    def train_policy(
        self, refs: Refs, rm_version: str, pair_files: list[Path], prompts: list[str]
    ) -> str:
        init = refs.served if self.config.policy_init == "policy" and refs.served else refs.sft
        if self.config.algorithm == "dpo":
            manifest = self._train_dpo(init, pair_files)
        else:
            manifest = self._train_ppo(init, rm_version, prompts)
        self.rec.produced_version(manifest.version)
        keep = (
            "reward_start",
            "reward_end",
            "kl_end",
            "steps",
            "train_loss",
            "loss_first",
            "loss_last",
        )
        self.rec.record(
            self.config.algorithm,
            {
                "version": manifest.version,
                "init": init,
                **{k: v for k, v in manifest.metrics.items() if k in keep},
            },
        )
        return manifest.version

    def _train_ppo(self, init: str, rm_version: str, prompts: list[str]) -> Any:
        from kindchat.retrain.bootstrap import ppo_config
        from kindchat.retrain.stages import train_ppo

        self.rec.enter("ppo")
        config = replace(
            ppo_config(self.preset),
            steps=self.config.ppo_steps or self.preset.ppo.steps,
            checkpoint_every=self.config.ppo_checkpoint_every,
        )
        return train_ppo(
            self.settings,
            self.registry,
            init,
            rm_version,
            config,
            extra_prompts=prompts,
            run_dir=self.dir / "ppo",
        )

    def _train_dpo(self, init: str, pair_files: list[Path]) -> Any:
        from kindchat.retrain.dpo import DpoConfig
        from kindchat.retrain.stages import train_dpo

        self.rec.enter("dpo")
        budget = self.preset.rm
        config = DpoConfig(
            epochs=budget.epochs,
            max_steps=self.config.dpo_max_steps or budget.max_steps,
            batch_size=budget.batch_size,
            learning_rate=self.config.dpo_learning_rate,
            beta=self.config.dpo_beta,
            max_length=self.preset.seq_len,
            max_records=self.config.rm_max_records or budget.max_records,
            extra_data=pair_files,
            seed=budget.seed,
        )
        return train_dpo(self.settings, self.registry, init, config)

    def gate_policy(self, refs: Refs, policy: str) -> GateResult:
        from kindchat.retrain.policy_eval import PolicyEvalConfig
        from kindchat.retrain.stages import eval_policy

        self.rec.enter("policy_gate")
        config = PolicyEvalConfig(
            max_new_tokens=self.config.eval_max_new_tokens or self.preset.ppo.max_new_tokens
        )
        results = eval_policy(
            self.settings, self.registry, policy, refs.baseline, refs.gold, config, refs.sft
        )
        gate = policy_gate(results[-1], self.config)
        sets = {r.name: r.as_dict() for r in results[:-1]}
        self.rec.record(
            "policy_gate",
            {**gate.as_dict(), "baseline": refs.baseline, "judge": refs.gold, "sets": sets},
        )
        return gate

    def promote(self, refs: Refs, policy: str, rm_version: str) -> None:
        self.rec.enter("promote")
        served = self.registry.aliases().get(self.config.served_alias)
        if served != refs.served:
            raise PromotionError(
                f"alias {self.config.served_alias!r} moved from {refs.served} to {served} while "
                "the cycle trained; not promoting over a manual change"
            )
        previous = self.registry.set_alias(self.config.served_alias, policy)
        self.registry.set_alias(self.config.rm_alias, rm_version)
        self.rec.record(
            "promote",
            {
                self.config.served_alias: policy,
                self.config.rm_alias: rm_version,
                "previous": previous,
            },
        )


def run_retrain_cycle(
    settings: Settings,
    config: RetrainConfig | None = None,
    *,
    engine: Engine | None = None,
    registry: Registry | None = None,
    run_id: str | None = None,
    on_stage: StageHook | None = None,
) -> RetrainRunPublic:
    """Run one cycle under the retrain lock and return its finished run.

    Outcomes: `succeeded` (promoted), `refused` (a gate said no), `skipped` (too little new
    feedback). Raises :class:`RetrainBusyError` when another cycle holds the lock (a queued
    `run_id` is then marked skipped) and :class:`RetrainFailedError` when a stage raised (the
    run is recorded as failed first; aliases never move). `on_stage(name)` is called as each
    stage starts.
    """
    config = config or RetrainConfig.from_settings(settings)
    settings.ensure_dirs()
    engine = engine or init_db(settings)
    registry = registry or Registry(settings.models_dir)
    try:
        with cycle_lock(settings):
            fail_stale_runs(settings, engine, registry, keep=run_id)
            run = start_run(engine, run_id)
            recorder = RunRecorder(engine, run.id, on_stage)
            try:
                return Cycle(settings, config, engine, registry, recorder).run()
            except BaseException as err:
                message = f"{type(err).__name__}: {err}"
                logger.error(
                    "retrain run %s failed in stage %s: %s", run.id, recorder.stage, message
                )
                recorder.finish("failed", error=message)
                mark_run_dir(run_dir(settings, run.id), "failed", message)
                if not isinstance(err, Exception):
                    raise
                raise RetrainFailedError(
                    f"retrain run {run.id} failed in stage {recorder.stage}: {message}",
                    run_id=run.id,
                    stage=recorder.stage,
                ) from err
    except RetrainBusyError as err:
        if run_id is not None:
            with session_scope(engine) as session:
                store.update_run(session=session, run_id=run_id, status="skipped", error=str(err))
        raise
