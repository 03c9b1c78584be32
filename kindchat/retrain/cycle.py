"""One retrain cycle, orchestrated: the day's feedback becomes training data, then a new policy,
gated. Its configuration is :mod:`~kindchat.retrain.loop_config`, its gates are pure functions in
:mod:`~kindchat.retrain.gates`, its record is :mod:`~kindchat.retrain.recorder`.

Stages, in order (each recorded on the run in the feedback store, with its metrics):

1. ``feedback`` — count the training rows of the night's window (:mod:`~kindchat.retrain.window`:
   the last `window_days` days of feedback, anomalous sessions left out, as the export will):
   pairs, plus single 👍/👎 when the method learns from them; fewer than `min_new_pairs`, or
   no vote since the last cycle trained on the window: `skipped`;
2. ``export`` — the training data from that same window (kindchat.feedback.export): pairs,
   unpaired thumbs, better answers, each with its conversation;
3. ``judge`` — optional: re-rank the feedback pairs with the G-Eval judge (KINDCHAT_JUDGE_*);
4. the preference method chosen by name (`kindchat.retrain.methods`: ``ppo``, ``dpo``, ``kto``)
   trains a new policy from the serving one on the window's data, anchored to SFT; it records
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
processes and hosts: the retrain lock (:mod:`kindchat.retrain.locks`). A cycle that takes the
lock marks runs left `running` by a killed process as failed and removes their half-written
registry versions.
"""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

from sqlalchemy import Engine

from kindchat.config import Settings
from kindchat.feedback import challenges, run_records
from kindchat.feedback.db import init_db, session_scope
from kindchat.feedback.export import ExportConfig, export_reward_data
from kindchat.feedback.influence import InfluenceConfig, find_anomalies, read_votes
from kindchat.feedback.judge import JudgeCache, JudgeConfig, judge_file
from kindchat.feedback.llm import ChatClient, EndpointConfig
from kindchat.feedback.models import RetrainRunPublic, as_utc
from kindchat.feedback.moderation import load_moderator
from kindchat.feedback.pairs import mine_feedback
from kindchat.models.presets import get_preset
from kindchat.models.registry import Registry
from kindchat.retrain.challenger import (
    CHALLENGING,
    ChallengerConfig,
    challenge_summary,
    open_challenge,
)
from kindchat.retrain.errors import (
    PromotionError,
    RetrainBusyError,
    RetrainError,
    RetrainFailedError,
)
from kindchat.retrain.gates import GateResult, guard_gate, policy_gate
from kindchat.retrain.locks import cycle_lock
from kindchat.retrain.loop_config import RetrainConfig, gold_rm_skill
from kindchat.retrain.methods import (
    Method,
    MethodJob,
    MethodRefusedError,
    MethodResult,
    PreferenceData,
    get_method,
)
from kindchat.retrain.recorder import (
    RunRecorder,
    StageHook,
    fail_stale_runs,
    mark_run_dir,
    run_dir,
    start_run,
)
from kindchat.retrain.window import training_window

logger = logging.getLogger(__name__)


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

        self.settings = settings
        self.config = config
        self.engine = engine
        self.registry = registry
        self.rec = recorder
        self.preset = get_preset(config.preset)
        self.dir = run_dir(settings, recorder.run_id)
        # one window for the check, the anomaly judgement and the export, fixed at the start
        self.window = training_window(config.window_days)

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

        self.rec.enter("feedback")
        with session_scope(self.engine) as session:
            pending = challenges.get_open(session=session)
        if pending is not None:
            return (
                f"challenger {pending.challenger_version} of run {pending.run_id} is still being "
                "judged in the arena; the next cycle waits for the users' decision"
            )
        window = self.window
        with session_scope(self.engine) as session:
            # the rows the export will train on: anomalous sessions' votes left out here too
            votes = read_votes(session, window.since)
            influence = InfluenceConfig.from_settings(self.settings)
            anomalous = find_anomalies(votes, influence).sessions
            mined = mine_feedback(session=session, since=window.since, exclude=anomalous)
            trained = [
                r.started_at
                for status in ("succeeded", "refused", CHALLENGING)
                for r in run_records.list_runs(session=session, status=status, limit=1)
                if r.started_at is not None and r.id != self.rec.run_id
            ]
        last = max(trained) if trained else None
        fresh = sum(1 for v in votes if last is None or as_utc(v.at) >= as_utc(last))
        usable = len(mined.pairs) + (len(mined.unpaired) if method.uses_unpaired else 0)
        self.rec.record(
            "feedback",
            {
                "window": window.as_dict(),
                "rows": usable,
                "pairs": len(mined.pairs),
                "unpaired": len(mined.unpaired),
                "signals": dict(mined.signals),
                "votes_since_last_cycle": fresh,
                "last_cycle": last,
                "min_new_pairs": self.config.min_new_pairs,
                "method": method.name,
            },
        )
        since = window.since.isoformat() if window.since else "the start"
        if usable < self.config.min_new_pairs:
            kinds = "pairs and single thumbs" if method.uses_unpaired else "preference pairs"
            return (
                f"too little feedback for {method.name}: {usable} {kinds} since {since}, "
                f"{self.config.min_new_pairs} needed"
            )
        if fresh == 0 and self.config.min_new_pairs > 0:  # (a forced run sets 0)
            return (
                f"no vote since the last cycle ({last.isoformat() if last else '?'}): the "
                "window's feedback trained it already"
            )
        return None

    def export(self) -> PreferenceData:
        """Training data from the night's window (no seed pairs: a night learns from its
        users)."""

        self.rec.enter("export")
        out = self.dir / "data"
        with session_scope(self.engine) as session:
            report = export_reward_data(
                session=session,
                since=self.window.since,
                data_dir=self.settings.data_dir,
                out_dir=out,
                config=ExportConfig(
                    include_seed=False, influence=InfluenceConfig.from_settings(self.settings)
                ),
                moderator=load_moderator(self.settings.moderation_lexicon),
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
                "influence": report.influence,
                "personal_data": report.personal_data,
                "fingerprint": report.fingerprint,
                "prompts": len(data.prompts),
            },
        )
        return data

    def judge(self, pairs: Path) -> Path:
        """Re-rank the feedback pairs with the G-Eval judge; its ranking replaces the users'."""

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
        # lazy: the server imports this module
        from kindchat.models.adapters import wants_adapter

        init = refs.served if self.config.policy_init == "policy" and refs.served else refs.sft
        adapter = wants_adapter(self.config.adapter, self.registry.resolve(init))
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
            adapter=adapter,
        )
        result = method.train(job, method_config)
        for version in result.produced:
            if version not in self.rec.produced:
                self.rec.produced_version(version)
        self.rec.record(
            method.name,
            {
                "version": result.policy,
                "init": init,
                "reference": refs.sft,
                # what was registered (a method without adapters, PPO, registers a full copy)
                "format": "lora" if self.registry.manifest(result.policy).base else "full",
                **result.metrics,
            },
        )
        return result

    def evaluate(self, stage: str, refs: Refs, policy: str) -> list[Any]:
        """Enter `stage` and compare `policy` with the serving one under the gold RM on the
        unseen prompts: one `PolicySetResult` per seed subset, then `overall`."""
        # lazy: evaluation and training stages pull in TRL; the server imports this module
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
        skill = gold_rm_skill(self.registry.manifest(refs.gold).metrics, "hatespeech")
        applies = skill is not None and skill > 0.5
        gate = guard_gate(results[-1], hatespeech if applies else None, self.config)
        sets = {r.name: r.as_dict() for r in results[:-1]}
        self.rec.record(
            "guards",
            {
                **gate.as_dict(),
                "baseline": refs.baseline,
                "gold_rm": refs.gold,
                "hatespeech_guard": "applied"
                if applies
                else (
                    "not applied: the gold RM's held-out hate-speech accuracy is not shown above "
                    f"chance (95% low end {skill})"
                ),
                "sets": sets,
            },
        )
        return gate

    def challenge(self, refs: Refs, result: MethodResult) -> None:
        """Register the policy as the challenger of the serving one; the users decide."""
        self.rec.enter("challenger")
        challenge = open_challenge(
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
        self.rec.record("challenger", challenge_summary(challenge))

    def gate_policy(self, refs: Refs, policy: str) -> GateResult:
        """The offline-promotion gate: win rate over the serving policy under the gold RM."""
        results = self.evaluate("policy_gate", refs, policy)
        gate = policy_gate(results[-1], self.config)
        sets = {r.name: r.as_dict() for r in results[:-1]}
        self.rec.record(
            "policy_gate",
            {**gate.as_dict(), "baseline": refs.baseline, "gold_rm": refs.gold, "sets": sets},
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
                run_records.update_run(
                    session=session, run_id=run_id, status="skipped", error=str(err)
                )
        raise
