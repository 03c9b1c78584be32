"""One retrain cycle: the day's feedback becomes training data, then a new policy, gated.

Stages, in order (each recorded on the run in the feedback store, with its metrics):

1. ``feedback`` — count training rows given since the last cycle that used its data (succeeded
   or refused): pairs, plus single 👍/👎 when the method learns from them; fewer than
   `min_new_pairs`: the run is `skipped` with the reason;
2. ``export`` — rebuild the training data from all feedback (kindchat.feedback.export): pairs,
   unpaired thumbs, better answers, each with its conversation;
3. ``judge`` — optional: re-rank the feedback pairs with the G-Eval judge (KINDCHAT_JUDGE_*);
4. the preference method chosen by name (`kindchat.retrain.methods`: ``ppo``, ``dpo``, ``kto``)
   trains a new policy from the serving one (online, on-policy), anchored to SFT; it records
   its own stages (``ppo`` records ``rm``, ``rm_gate``, ``ppo``) and may refuse;
5. ``policy_gate`` — evaluate it against the serving policy under the gold RM: win rate above
   `min_win_rate` (and the 95% interval above 0.5), KL to SFT under `max_kl`, no rise in empty or
   repetitive answers beyond the allowed margins;
6. ``promote`` — atomic alias swaps (`rlhf`, then what the method adds, e.g. `rm`); the server
   hot-swaps on its own.

A gate that says no ends the run as `refused`; an exception as `failed`. Either way no alias
moves: versions produced on the way stay registered, unaliased, listed on the run. Everything a
cycle writes outside the registry lives in `$KINDCHAT_HOME/runs/retrain-<run id>/`, which gets a
`status.json` at the end; PPO checkpoints are removed there. One cycle at a time, across
processes: an exclusive non-blocking `flock` on `$KINDCHAT_HOME/retrain.lock` (released by the
kernel if the process dies). A cycle that takes the lock marks runs left `running` by a killed
process as failed and removes their half-written registry versions.
"""

from __future__ import annotations

import json
import logging
import shutil
import time
from collections.abc import Callable
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
from kindchat.retrain.challenger import CHALLENGING, ChallengerConfig, open_challenge
from kindchat.retrain.errors import (
    PromotionError,
    RetrainBusyError,
    RetrainError,
    RetrainFailedError,
)
from kindchat.retrain.gates import GateResult, guard_gate, policy_gate
from kindchat.retrain.locks import cycle_lock
from kindchat.retrain.methods import (
    Method,
    MethodJob,
    MethodRefusedError,
    MethodResult,
    PreferenceData,
    check_method_name,
    get_method,
)

logger = logging.getLogger(__name__)

RUN_DIR_PREFIX = "retrain-"
STATUS_FILE = "status.json"
STALE_QUEUED = timedelta(minutes=10)  # a queued run whose worker never started is given up
StageHook = Callable[[str], None]


# ---- configuration --------------------------------------------------------------------------
@dataclass(frozen=True)
class RetrainConfig:
    """What one cycle trains and what it takes to promote (budgets default to the preset's)."""

    preset: str = "tiny"  # model budgets: kindchat.models.presets (micro, tiny)
    method: str = "kto"  # the preference method (kindchat.retrain.methods): ppo, dpo, kto
    method_options: dict[str, Any] = field(default_factory=dict)  # the method's config fields
    min_new_pairs: int = 50  # new training rows since the last cycle, else skip
    judge: bool = False  # re-rank feedback pairs with the G-Eval judge before training
    policy_init: Literal["policy", "sft"] = "policy"  # train from the serving policy, or SFT
    promotion: Literal["arena", "offline"] = "arena"  # users decide (challenger) or gold-RM gate
    # guard: refused when the 95% interval of the hate-speech reward change lies below -this
    max_hatespeech_drop: float = 0.0
    min_win_rate: float = 0.5  # the new policy's win rate over the serving one must exceed this
    require_ci_above_half: bool = True  # … and the low end of its 95% interval must exceed 0.5
    max_kl: float = 20.0  # KL(new ‖ SFT) in nats per answer, at most
    max_empty_rise: float = 0.05  # empty-answer rate may rise by at most this much
    max_repetitive_rise: float = 0.05  # repetitive-answer rate may rise by at most this much
    eval_max_new_tokens: int | None = None  # answer budget in the policy gate (None: PPO's)
    served_alias: str = "rlhf"  # the alias promoted (and the baseline of the policy gate)
    rm_alias: str = "rm"
    sft_alias: str = "sft"
    base_alias: str = "base"
    gold_alias: str = "gold-rm"  # the judge of the policy gate (never trained on by PPO)

    def __post_init__(self) -> None:
        from kindchat.models.presets import PRESETS

        check_method_name(self.method)
        checks = [
            (
                self.preset in PRESETS,
                f"preset must be one of {sorted(PRESETS)}, got {self.preset!r}",
            ),
            (
                isinstance(self.method_options, dict),
                f"method_options must be a dict, got {self.method_options!r}",
            ),
            (
                self.promotion in ("arena", "offline"),
                f"promotion must be arena or offline, got {self.promotion!r}",
            ),
            (
                self.max_hatespeech_drop >= 0,
                f"max_hatespeech_drop must be >= 0, got {self.max_hatespeech_drop}",
            ),
            (
                self.policy_init in ("policy", "sft"),
                f"policy_init must be policy or sft, got {self.policy_init!r}",
            ),
            (self.min_new_pairs >= 0, f"min_new_pairs must be >= 0, got {self.min_new_pairs}"),
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
            (
                self.eval_max_new_tokens is None or self.eval_max_new_tokens >= 1,
                f"eval_max_new_tokens must be >= 1 or unset, got {self.eval_max_new_tokens}",
            ),
        ]
        for ok, message in checks:
            if not ok:
                raise ValueError(message)

    @classmethod
    def from_settings(cls, settings: Settings, **overrides: Any) -> RetrainConfig:
        """The cycle `settings` describe (KINDCHAT_RETRAIN_*), with `overrides` applied."""
        values: dict[str, Any] = {
            "preset": settings.retrain_preset,
            "method": settings.retrain_method,
            "promotion": settings.promotion,
            "min_new_pairs": settings.retrain_min_new_pairs,
            "judge": settings.retrain_judge,
        }
        return cls(**{**values, **overrides})

    def method_config(self) -> Any:
        """The method's config for this cycle: the preset's, with `method_options` applied.
        Imports the method (torch, TRL); raises RetrainError on an unknown option."""
        from kindchat.models.presets import get_preset

        return get_method(self.method).config(get_preset(self.preset), **self.method_options)

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> RetrainConfig:
        names = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - names)
        if unknown:
            raise ValueError(f"unknown retrain config field(s) {unknown}; known: {sorted(names)}")
        return cls(**data)


def judge_skill(metrics: dict[str, Any], subset: str) -> float | None:
    """The low end of a judge RM's 95% held-out accuracy on one seed subset (None: unknown).

    A guard is only as good as its judge: the hate-speech guard applies when this is above ½.
    """
    value = ((metrics.get("rm_eval") or {}).get(subset) or {}).get("accuracy_low")
    return float(value) if isinstance(value, int | float) else None


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
        for alias, how in (
            (
                config.sft_alias,
                f"`kindchat models import DIR --kind sft --alias {config.sft_alias}`",
            ),
            (
                config.gold_alias,
                f"`kindchat train rm --init {config.sft_alias} --gold --alias {config.gold_alias}`",
            ),
        ):
            if alias not in aliases:
                raise RetrainError(
                    f"alias {alias!r} is missing; run `kindchat bootstrap` before retraining, "
                    f"or for a model of your own {how}"
                )
        refs = cls(
            sft=aliases[config.sft_alias],
            gold=aliases[config.gold_alias],
            served=aliases.get(config.served_alias),
            rm=aliases.get(config.rm_alias),
            base=aliases.get(config.base_alias),
        )
        if refs.rm is None and refs.base is None:
            raise RetrainError(
                f"neither {config.rm_alias!r} nor {config.base_alias!r} exists; for a model of "
                f"your own, `kindchat train rm --init {config.sft_alias} --alias {config.rm_alias}`"
            )
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
        method = get_method(self.config.method)
        method_config = method.config(self.preset, **self.config.method_options)
        self.rec.record("start", {"refs": asdict(refs), "config": self.config.to_json()})
        skip = self.check_feedback(method)
        if skip is not None:
            return self.finish("skipped", skip)
        self.dir.mkdir(parents=True, exist_ok=True)
        data = self.export()
        if self.config.judge and data.pairs is not None:
            data = replace(data, pairs=self.judge(data.pairs))
        try:
            result = self.train_policy(refs, method, method_config, data)
        except MethodRefusedError as refusal:
            return self.finish("refused", str(refusal))
        if self.config.promotion == "offline":
            gate = self.gate_policy(refs, result.policy)
            if not gate.passed:
                return self.finish("refused", "; ".join(gate.reasons))
            self.promote(refs, result)
            return self.finish("succeeded", None, promoted=True)
        gate = self.guard(refs, result.policy)
        if not gate.passed:
            return self.finish("refused", "; ".join(gate.reasons))
        self.challenge(refs, result)
        return self.finish(CHALLENGING, None)

    def finish(self, status: str, reason: str | None, promoted: bool = False) -> RetrainRunPublic:
        if reason:
            logger.info("retrain run %s %s: %s", self.rec.run_id, status, reason)
        run = self.rec.finish(status, error=reason, promoted=promoted)
        mark_run_dir(self.dir, status, reason)
        return run

    # ---- stages ------------------------------------------------------------------------------
    def check_feedback(self, method: Method) -> str | None:
        """The reason to skip, or None when enough new feedback came in."""
        from kindchat.feedback.pairs import mine_feedback

        self.rec.enter("feedback")
        with session_scope(self.engine) as session:
            pending = store.list_runs(session=session, status=CHALLENGING, limit=1)
        if pending:
            challenger = ((pending[0].metrics or {}).get("challenger") or {}).get("version")
            return (
                f"challenger {challenger} of run {pending[0].id} is still being judged in the "
                "arena; the next cycle waits for the users' decision"
            )
        with session_scope(self.engine) as session:
            consumed = [
                r.started_at
                for status in ("succeeded", "refused")
                for r in store.list_runs(session=session, status=status, limit=1)
                if r.started_at is not None
            ]
            since = max(consumed) if consumed else None
            mined = mine_feedback(session=session, since=since)
        usable = len(mined.pairs) + (len(mined.unpaired) if method.uses_unpaired else 0)
        self.rec.record(
            "feedback",
            {
                "new_rows": usable,
                "new_pairs": len(mined.pairs),
                "new_unpaired": len(mined.unpaired),
                "signals": dict(mined.signals),
                "since": since,
                "min_new_pairs": self.config.min_new_pairs,
                "method": method.name,
            },
        )
        if usable < self.config.min_new_pairs:
            kinds = "pairs and single thumbs" if method.uses_unpaired else "preference pairs"
            return (
                f"too little new feedback for {method.name}: {usable} {kinds} since "
                f"{since.isoformat() if since else 'the start'}, {self.config.min_new_pairs} needed"
            )
        return None

    def export(self) -> PreferenceData:
        """Training data from all feedback (no seed pairs: a night learns from its users)."""
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
        data = PreferenceData.from_export(out)
        self.rec.record(
            "export",
            {
                "train": report.train,
                "test": report.test,
                "unpaired": report.unpaired,
                "demonstrations": report.demonstrations,
                "signals": report.signals,
                "dropped": report.dropped,
                "fingerprint": report.fingerprint,
                "prompts": len(data.prompts),
            },
        )
        return data

    def judge(self, pairs: Path) -> Path:
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
        return ranked

    def train_policy(
        self, refs: Refs, method: Method, method_config: Any, data: PreferenceData
    ) -> MethodResult:
        init = refs.served if self.config.policy_init == "policy" and refs.served else refs.sft
        job = MethodJob(
            settings=self.settings,
            registry=self.registry,
            policy=init,
            sft=refs.sft,
            rm=refs.rm,
            base=refs.base,
            data=data,
            run_dir=self.dir / method.name,
            progress=self.rec,
        )
        result = method.train(job, method_config)
        for version in result.produced:
            if version not in self.rec.produced:
                self.rec.produced_version(version)
        self.rec.record(
            method.name,
            {"version": result.policy, "init": init, "reference": refs.sft, **result.metrics},
        )
        return result

    def evaluate(self, stage: str, refs: Refs, policy: str) -> list[Any]:
        """Enter `stage` and compare `policy` with the serving one under the gold RM on the
        unseen prompts: one `PolicySetResult` per seed subset, then `overall`."""
        from kindchat.retrain.policy_eval import PolicyEvalConfig
        from kindchat.retrain.stages import eval_policy

        self.rec.enter(stage)
        config = PolicyEvalConfig(
            max_new_tokens=self.config.eval_max_new_tokens or self.preset.ppo.max_new_tokens
        )
        return eval_policy(
            self.settings, self.registry, policy, refs.baseline, refs.gold, config, refs.sft
        )

    def guard(self, refs: Refs, policy: str) -> GateResult:
        """The offline guard rails before the arena (no win rate: the users decide that)."""
        results = self.evaluate("guards", refs, policy)
        hatespeech = next((r for r in results if r.name == "hatespeech"), None)
        skill = judge_skill(self.registry.manifest(refs.gold).metrics, "hatespeech")
        applies = skill is not None and skill > 0.5
        gate = guard_gate(results[-1], hatespeech if applies else None, self.config)
        sets = {r.name: r.as_dict() for r in results[:-1]}
        self.rec.record(
            "guards",
            {
                **gate.as_dict(),
                "baseline": refs.baseline,
                "judge": refs.gold,
                "hatespeech_guard": "applied"
                if applies
                else (
                    "not applied: the judge's held-out hate-speech accuracy is not shown above "
                    f"chance (95% low end {skill})"
                ),
                "sets": sets,
            },
        )
        return gate

    def challenge(self, refs: Refs, result: MethodResult) -> None:
        """Register the policy as the challenger of the serving one; the users decide."""
        self.rec.enter("challenger")
        figures = open_challenge(
            engine=self.engine,
            registry=self.registry,
            run_id=self.rec.run_id,
            version=result.policy,
            champion=refs.baseline,
            champion_alias=self.config.served_alias,
            champion_alias_target=refs.served,
            promote_with=result.promote,
            config=ChallengerConfig.from_settings(self.settings),
        )
        self.rec.record("challenger", figures)

    def gate_policy(self, refs: Refs, policy: str) -> GateResult:
        """The offline-promotion gate: win rate over the serving policy under the gold RM."""
        results = self.evaluate("policy_gate", refs, policy)
        gate = policy_gate(results[-1], self.config)
        sets = {r.name: r.as_dict() for r in results[:-1]}
        self.rec.record(
            "policy_gate",
            {**gate.as_dict(), "baseline": refs.baseline, "judge": refs.gold, "sets": sets},
        )
        return gate

    def promote(self, refs: Refs, result: MethodResult) -> None:
        self.rec.enter("promote")
        served = self.registry.aliases().get(self.config.served_alias)
        if served != refs.served:
            raise PromotionError(
                f"alias {self.config.served_alias!r} moved from {refs.served} to {served} while "
                "the cycle trained; not promoting over a manual change"
            )
        previous = self.registry.set_alias(self.config.served_alias, result.policy)
        for alias, version in result.promote.items():
            self.registry.set_alias(alias, version)
        self.rec.record(
            "promote",
            {self.config.served_alias: result.policy, **result.promote, "previous": previous},
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
    registry = registry or Registry.for_settings(settings)
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
