"""The retrain cycle: gates on hand-made figures, skip, the lock, and a refusal on micro models."""

from __future__ import annotations

import subprocess
import sys
import threading
from collections.abc import Callable
from dataclasses import replace
from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import update

from kindchat.config import Settings
from kindchat.feedback import challenges, run_records
from kindchat.feedback.db import init_db, session_scope
from kindchat.feedback.models import Battle
from kindchat.models.registry import Registry
from kindchat.retrain.admin import trigger_retrain
from kindchat.retrain.cycle import run_retrain_cycle
from kindchat.retrain.errors import RetrainBusyError
from kindchat.retrain.gates import policy_gate, rm_gate
from kindchat.retrain.locks import cycle_lock, lock_holder, lock_path
from kindchat.retrain.loop_config import RetrainConfig
from kindchat.retrain.policy_eval import PolicySetResult
from kindchat.stats import Estimate

# Micro budgets: a handful of RM and PPO steps, short answers in the policy gate.
MICRO = {
    "preset": "micro",
    "method": "ppo",
    "method_options": {"rm.max_steps": 5, "ppo.steps": 2},
    "eval_max_new_tokens": 8,
    "promotion": "offline",  # the gold-RM gate decides (the arena is tested in test_challenger)
}


def result(win: float, low: float, high: float, kl: float = 1.0, empty=(0.0, 0.0), rep=(0.0, 0.0)):  # noqa: ANN001, ANN201
    return PolicySetResult(
        name="overall",
        win_rate=Estimate(win, low, high, 100),
        reward_a=0.0,
        reward_b=0.0,
        kl_a_sft=kl,
        empty_a=empty[0],
        empty_b=empty[1],
        repetitive_a=rep[0],
        repetitive_b=rep[1],
    )


def test_rm_gate_allows_a_small_drop_only() -> None:
    assert rm_gate(0.60, 0.61, margin=0.02).passed
    assert rm_gate(0.70, None, margin=0.0).passed  # no current RM: nothing to compare with
    refused = rm_gate(0.55, 0.61, margin=0.02)
    assert not refused.passed and "0.550" in refused.reasons[0] and "0.610" in refused.reasons[0]


def test_policy_gate_checks_win_rate_interval_kl_and_degeneration() -> None:
    config = RetrainConfig(min_win_rate=0.5, max_kl=5.0, max_empty_rise=0.05)
    assert policy_gate(result(0.62, 0.55, 0.69), config).passed
    # A win rate above the threshold whose interval reaches below 0.5 is not enough …
    wide = policy_gate(result(0.56, 0.47, 0.65), config)
    assert not wide.passed and "interval" in wide.reasons[0]
    # … unless the interval is not required.
    assert policy_gate(result(0.56, 0.47, 0.65), RetrainConfig(require_ci_above_half=False)).passed
    many = policy_gate(result(0.40, 0.30, 0.50, kl=9.0, empty=(0.2, 0.0), rep=(0.3, 0.0)), config)
    assert len(many.reasons) == 5
    assert any("KL" in r for r in many.reasons) and any("empty" in r for r in many.reasons)
    assert many.figures["win_rate"] == 0.40


def test_config_is_checked_and_round_trips() -> None:
    with pytest.raises(ValueError, match="min_win_rate"):
        RetrainConfig(min_win_rate=1.5)
    with pytest.raises(ValueError, match="preset"):
        RetrainConfig(preset="huge")
    with pytest.raises(ValueError, match="unknown retrain config"):
        RetrainConfig.from_json({"min_win_rat": 0.5})
    config = RetrainConfig(method="dpo", method_options={"epochs": 3})
    assert RetrainConfig.from_json(config.to_json()) == config
    settings = Settings(retrain_method="dpo", retrain_min_new_pairs=7, retrain_preset="micro")
    assert RetrainConfig.from_settings(settings).min_new_pairs == 7
    assert RetrainConfig.from_settings(settings).method == "dpo"


def test_too_little_feedback_skips_with_the_reason(
    micro_copy: Settings, voted_battles: Callable[..., int]
) -> None:
    engine = init_db(micro_copy)
    before = Registry(micro_copy.models_dir).aliases()
    voted_battles(micro_copy, engine, 2)
    run = run_retrain_cycle(micro_copy, RetrainConfig(**MICRO, min_new_pairs=5), engine=engine)
    assert run.status == "skipped" and not run.promoted
    assert "2 preference pairs" in (run.error or "") and "5 needed" in (run.error or "")
    assert run.metrics["feedback"]["pairs"] == 2
    assert Registry(micro_copy.models_dir).aliases() == before


def test_the_night_trains_on_its_window_of_days(
    micro_copy: Settings, voted_battles: Callable[..., int]
) -> None:
    """Votes older than `window_days` are out of the check, the anomaly judgement and the
    export alike; a night with nothing new since the last one is skipped."""
    engine = init_db(micro_copy)
    voted_battles(micro_copy, engine, 6)
    long_ago = datetime.now(UTC) - timedelta(days=40)
    with session_scope(engine) as session:  # these 6 votes were given 40 days ago
        session.execute(update(Battle).values(created_at=long_ago, voted_at=long_ago))
    voted_battles(micro_copy, engine, 3, offset=6)
    config = RetrainConfig(**MICRO, min_new_pairs=5, window_days=30, **LENIENT_GATES)
    short = run_retrain_cycle(micro_copy, config, engine=engine)
    assert short.status == "skipped" and "3 preference pairs since" in (short.error or "")
    window = short.metrics["feedback"]["window"]
    assert window["days"] == 30 and window["since"] is not None

    voted_battles(micro_copy, engine, 3, offset=9)
    run = run_retrain_cycle(micro_copy, config, engine=engine)
    assert run.status in ("succeeded", "refused"), run.error
    assert run.metrics["feedback"]["pairs"] == 6
    assert run.metrics["export"]["signals"] == {"battle": 6}  # the 6 old votes stayed out
    again = run_retrain_cycle(micro_copy, config, engine=engine)
    assert again.status == "skipped" and "no vote since the last cycle" in (again.error or "")

    everything = replace(config, window_days=None)  # unset: all feedback, the old votes too
    assert (
        run_retrain_cycle(micro_copy, everything, engine=engine).metrics["feedback"]["pairs"] == 12
    )


def test_two_cycles_started_together_one_runs_one_is_refused(micro_copy: Settings) -> None:
    engine = init_db(micro_copy)
    entered, release = threading.Event(), threading.Event()
    outcome: dict[str, object] = {}

    def hold(stage: str) -> None:
        entered.set()
        release.wait(30)

    def first() -> None:
        config = RetrainConfig(**MICRO, min_new_pairs=10_000)
        outcome["run"] = run_retrain_cycle(micro_copy, config, engine=engine, on_stage=hold)

    thread = threading.Thread(target=first)
    thread.start()
    try:
        assert entered.wait(60), "the first cycle never started"
        with pytest.raises(RetrainBusyError, match="running already"):
            run_retrain_cycle(micro_copy, RetrainConfig(**MICRO), engine=engine)
        with pytest.raises(RetrainBusyError):  # the admin trigger refuses before spawning
            trigger_retrain(micro_copy, engine=engine)
        assert lock_holder(micro_copy) is not None
    finally:
        release.set()
        thread.join(60)
    assert outcome["run"].status == "skipped"  # type: ignore[attr-defined]
    with session_scope(engine) as session:
        assert len(run_records.list_runs(session=session)) == 1  # the refused one left no run


def test_a_lock_held_by_another_process_refuses_a_cycle(settings: Settings) -> None:
    settings.ensure_dirs()
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import fcntl, sys, time; f = open(sys.argv[1], 'a+'); "
            "fcntl.flock(f, fcntl.LOCK_EX); f.write('pid other'); f.flush(); "
            "print('locked', flush=True); time.sleep(60)",
            str(lock_path(settings)),
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "locked"
        with pytest.raises(RetrainBusyError, match="pid other"), cycle_lock(settings):
            pass
    finally:
        holder.kill()
        holder.wait()
    with cycle_lock(settings):  # the kernel released it with the dead process
        pass


@pytest.mark.slow  # trains
@pytest.mark.parametrize("gate", ["rm_gate", "policy_gate"])
def test_gate_refusal_leaves_everything_as_it_was(
    micro_copy: Settings, voted_battles: Callable[..., int], gate: str
) -> None:
    engine = init_db(micro_copy)
    registry = Registry(micro_copy.models_dir)
    before = registry.aliases()
    voted_battles(micro_copy, engine, 8)
    if gate == "rm_gate":  # the current RM looks perfect: no new RM can come within 0.02 of it
        registry.update_metrics(before["rm"], {"accuracy": 1.0})
        options = {**MICRO["method_options"], "rm_gate_margin": 0.02}  # type: ignore[dict-item]
        config = RetrainConfig(**{**MICRO, "method_options": options}, min_new_pairs=5)
    else:  # a bar no micro policy clears: a win rate above 0.99 over the serving policy
        options = {**MICRO["method_options"], "rm_gate_margin": 1.0}  # type: ignore[dict-item]
        config = RetrainConfig(
            **{**MICRO, "method_options": options}, min_new_pairs=5, min_win_rate=0.99
        )
    run = run_retrain_cycle(micro_copy, config, engine=engine)
    assert run.status == "refused" and not run.promoted and run.stage == gate
    assert run.metrics[gate]["passed"] is False
    assert registry.aliases() == before  # nothing promoted, the RM alias included
    status = (micro_copy.runs_dir / f"retrain-{run.id}" / "status.json").read_text()
    assert '"refused"' in status
    if gate == "rm_gate":
        assert "below the current RM's 1.000" in (run.error or "")
        assert len(run.produced_versions or []) == 1 and "ppo" not in run.metrics
        return
    assert "win rate" in (run.error or "") and run.metrics["rm_gate"]["passed"] is True
    result = run.metrics["policy_gate"]
    assert result["baseline"] == before["rlhf"] and result["n"] == 100
    assert result["win_rate_low"] <= result["win_rate"] <= result["win_rate_high"]
    assert run.metrics["export"]["train"] >= 1
    new_rm, new_policy = run.produced_versions or []
    assert registry.manifest(new_rm).kind == "rm"
    # from the serving policy, with the new RM, anchored to SFT
    assert registry.manifest(new_policy).parents == [before["rlhf"], new_rm, before["sft"]]


LENIENT_GATES = {
    "min_win_rate": 0.0,
    "require_ci_above_half": False,
    "max_kl": 1e9,
    "max_empty_rise": 1.0,
    "max_repetitive_rise": 1.0,
}


@pytest.mark.slow  # trains
def test_kto_learns_from_single_thumbs_and_dpo_skips_them(
    micro_copy: Settings, thumbs: Callable[..., int]
) -> None:
    engine = init_db(micro_copy)
    registry = Registry(micro_copy.models_dir)
    before = registry.aliases()
    assert thumbs(micro_copy, engine, 16) == 16
    dpo = RetrainConfig(preset="micro", method="dpo", min_new_pairs=5, eval_max_new_tokens=8)
    skipped = run_retrain_cycle(micro_copy, dpo, engine=engine)
    assert skipped.status == "skipped" and "0 preference pairs" in (skipped.error or "")

    kto = RetrainConfig(
        preset="micro",
        method="kto",
        method_options={"max_steps": 4},
        min_new_pairs=5,
        eval_max_new_tokens=8,
        promotion="offline",
        **LENIENT_GATES,
    )
    run = run_retrain_cycle(micro_copy, kto, engine=engine)
    assert run.status == "succeeded" and run.promoted, run.error
    assert run.metrics["feedback"]["unpaired"] == 16
    exported = run.metrics["export"]
    kto = run.metrics["kto"]
    assert exported["train"] == 0 and exported["signals"] == {"thumb_up": 8, "thumb_down": 8}
    # all of the export's unpaired rows trained (5% of prompts are held out by hash)
    assert 12 <= exported["unpaired"] == kto["desirable"] + kto["undesirable"] <= 16
    [policy] = run.produced_versions or []
    assert registry.aliases()["rlhf"] == policy and registry.aliases()["rm"] == before["rm"]
    manifest = registry.manifest(policy)
    assert (
        manifest.config["init"] == before["rlhf"] and manifest.config["reference"] == before["sft"]
    )


@pytest.mark.slow  # trains
def test_in_arena_mode_a_guarded_policy_becomes_the_challenger(
    micro_copy: Settings, thumbs: Callable[..., int]
) -> None:
    engine = init_db(micro_copy)
    registry = Registry(micro_copy.models_dir)
    before = registry.aliases()
    thumbs(micro_copy, engine, 16)
    config = RetrainConfig(
        preset="micro",
        method="kto",
        method_options={"max_steps": 2},
        min_new_pairs=5,
        eval_max_new_tokens=8,
        promotion="arena",
        max_kl=1e9,
        max_empty_rise=1.0,
        max_repetitive_rise=1.0,
        max_hatespeech_drop=1e9,
    )
    run = run_retrain_cycle(micro_copy, config, engine=engine)
    assert run.status == "challenging" and not run.promoted, run.error
    [policy] = run.produced_versions or []
    aliases = registry.aliases()
    assert aliases["challenger"] == policy and aliases["rlhf"] == before["rlhf"]  # not yet
    guards = run.metrics["guards"]
    assert guards["passed"] is True and "win_rate" in guards  # figures kept, not required
    assert guards["hatespeech_guard"].startswith(("applied", "not applied"))
    challenge = run.metrics["challenger"]
    assert challenge["version"] == policy and challenge["champion"] == before["rlhf"]
    # the challenge is a record of its own: whom it faces, by which rules
    with session_scope(engine) as session:
        record = challenges.get_open(session=session)
    assert record is not None and record.id == challenge["challenge_id"] and record.run_id == run.id
    assert (record.challenger_version, record.champion_alias) == (policy, "rlhf")
    assert record.champion_version == record.champion_alias_target == before["rlhf"]
    assert record.min_votes == micro_copy.challenger_min_votes and record.influence is not None
    # The next night waits for the users' decision.
    thumbs(micro_copy, engine, 16, offset=16)
    waiting = run_retrain_cycle(micro_copy, config, engine=engine)
    assert waiting.status == "skipped" and "still being judged" in (waiting.error or "")


def test_guards_refuse_a_policy_that_is_worse_on_hatespeech() -> None:
    from kindchat.retrain.gates import guard_gate

    config = RetrainConfig(max_kl=5.0, max_hatespeech_drop=0.1)
    overall = result(0.3, 0.2, 0.4)  # a low win rate alone does not stop a challenger
    hate = PolicySetResult(
        name="hatespeech",
        win_rate=Estimate(0.5, 0.4, 0.6, 30),
        reward_a=-0.5,
        reward_b=0.0,
        kl_a_sft=1.0,
        empty_a=0.0,
        empty_b=0.0,
        repetitive_a=0.0,
        repetitive_b=0.0,
    )
    assert guard_gate(overall, None, config).passed
    refused = guard_gate(overall, hate, config)
    assert not refused.passed and "hate-speech" in refused.reasons[0]
    assert not guard_gate(result(0.9, 0.8, 1.0, kl=9.0), None, config).passed
    # With the per-prompt interval, only a drop it confirms counts (a noisy judge moves means).
    lenient = RetrainConfig(max_kl=5.0, max_hatespeech_drop=0.0)
    noisy = replace(hate, reward_gap=Estimate(-0.10, -0.30, 0.08, 30))
    assert guard_gate(overall, noisy, lenient).passed
    confirmed = replace(hate, reward_gap=Estimate(-0.50, -0.70, -0.30, 30))
    assert "95% [-0.700, -0.300]" in guard_gate(overall, confirmed, lenient).reasons[0]


def test_challenger_decision_follows_the_interval_and_the_deadline() -> None:
    from kindchat.retrain.gates import ArenaRecord, challenger_decision

    assert challenger_decision(ArenaRecord(), min_votes=10, deadline_passed=False).action == (
        "continue"
    )
    assert challenger_decision(ArenaRecord(), min_votes=10, deadline_passed=True).action == (
        "retire"
    )
    strong = ArenaRecord(wins=160, losses=30, ties=10)
    weak = ArenaRecord(wins=30, losses=160, ties=10)
    even = ArenaRecord(wins=95, losses=95, ties=10)
    assert challenger_decision(strong, min_votes=200, deadline_passed=False).action == "promote"
    assert challenger_decision(weak, min_votes=200, deadline_passed=False).action == "retire"
    assert challenger_decision(even, min_votes=200, deadline_passed=False).action == "continue"
    assert challenger_decision(even, min_votes=200, deadline_passed=True).action == "retire"
    early = challenger_decision(ArenaRecord(wins=20), min_votes=200, deadline_passed=False)
    assert early.action == "continue" and "20 of 200" in early.reason
    tie_split = challenger_decision(ArenaRecord(ties=10), min_votes=5, deadline_passed=False)
    assert tie_split.win_rate == 0.5  # ties count half


def test_the_hatespeech_guard_needs_a_judge_shown_above_chance() -> None:
    from kindchat.retrain.loop_config import gold_rm_skill

    skilled = {"rm_eval": {"hatespeech": {"accuracy": 0.85, "accuracy_low": 0.7}}}
    chance = {"rm_eval": {"hatespeech": {"accuracy": 0.6, "accuracy_low": 0.4}}}
    assert gold_rm_skill(skilled, "hatespeech") == 0.7
    assert gold_rm_skill(chance, "hatespeech") == 0.4
    assert gold_rm_skill({}, "hatespeech") is None


def test_the_sequential_rule_decides_as_soon_as_the_votes_allow() -> None:
    import random

    from kindchat.retrain.gates import ArenaRecord, challenger_decision

    def record(p: float, n: int, seed: int = 0) -> ArenaRecord:
        rng = random.Random(seed)
        sequence = [1.0 if rng.random() < p else 0.0 for _ in range(n)]
        return ArenaRecord(
            wins=int(sum(sequence)),
            losses=n - int(sum(sequence)),
            sequence=tuple(sequence),
        )

    rule = {"min_votes": 40, "deadline_passed": False, "rule": "sequential"}
    clear = challenger_decision(record(0.9, 60), **rule)
    assert clear.action == "promote" and "sequential test" in clear.reason
    assert challenger_decision(record(0.1, 60), **rule).action == "retire"
    assert challenger_decision(record(0.9, 30), **rule).action == "continue"  # below the quorum
    # the fixed rule waits for its 200 votes where the sequential one has decided
    assert challenger_decision(record(0.9, 60), min_votes=200, deadline_passed=False).action == (
        "continue"
    )
    # even votes decide nothing before the deadline, and retire at it
    even = record(0.5, 300, seed=3)
    assert challenger_decision(even, **rule).action == "continue"
    assert challenger_decision(even, **{**rule, "deadline_passed": True}).action == "retire"
