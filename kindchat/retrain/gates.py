"""The pure gates of the nightly loop: figures in, a verdict with its reasons out."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from kindchat.feedback.challenges import RULES
from kindchat.stats import betting_test, bootstrap, cluster_bootstrap


@dataclass(frozen=True)
class GateResult:
    """A gate's verdict: `passed`, the reasons it did not, and the figures it looked at."""

    passed: bool
    reasons: tuple[str, ...] = ()
    figures: dict[str, Any] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        return {"passed": self.passed, "reasons": list(self.reasons), **self.figures}


def policy_gate(overall: Any, config: Any) -> GateResult:
    """Judge the overall `PolicySetResult` of new-vs-serving under the gold RM."""
    win = overall.win_rate
    reasons = []
    if not win.value > config.min_win_rate:
        reasons.append(f"win rate {win.value:.3f} is not above {config.min_win_rate:.3f}")
    if config.require_ci_above_half and not win.low > 0.5:
        reasons.append(
            f"the 95% interval of the win rate [{win.low:.3f}, {win.high:.3f}] does not lie above 0.5"
        )
    reasons.extend(drift_reasons(overall, config))
    return GateResult(not reasons, tuple(reasons), overall.as_dict())


def drift_reasons(overall: Any, config: Any) -> list[str]:
    """What every policy check refuses: KL to SFT over `max_kl`, and empty or repetitive
    answers rising by more than the allowed margins."""
    reasons = []
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
    return reasons


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


def guard_gate(overall: Any, hatespeech: Any | None, config: Any) -> GateResult:
    """The offline guard rails a challenger must pass before it may enter the arena.

    No win rate here (users decide that): KL to SFT under `max_kl`, no rise in empty or
    repetitive answers beyond the margins, and — on the hate-speech test prompts — a gold-RM
    reward not lower than the champion's: refused when the 95% interval of the per-prompt
    difference lies wholly below −`max_hatespeech_drop` (a judge near chance on ~30 prompts
    moves its mean by ±0.1 on noise alone; only a drop the interval confirms counts).
    """
    reasons = drift_reasons(overall, config)
    figures = overall.as_dict()
    if hatespeech is not None:
        figures["hatespeech_reward"] = hatespeech.reward_a
        figures["hatespeech_reward_champion"] = hatespeech.reward_b
        gap = hatespeech.reward_gap
        worse = (
            gap.high < -config.max_hatespeech_drop
            if gap is not None
            else hatespeech.reward_a < hatespeech.reward_b - config.max_hatespeech_drop
        )
        if worse:
            interval = f" (95% [{gap.low:.3f}, {gap.high:.3f}])" if gap is not None else ""
            reasons.append(
                f"gold-RM reward on the hate-speech prompts fell from {hatespeech.reward_b:.3f} "
                f"to {hatespeech.reward_a:.3f}{interval}, more than the allowed "
                f"{config.max_hatespeech_drop:.3f}"
            )
    return GateResult(not reasons, tuple(reasons), figures)


@dataclass(frozen=True)
class ArenaRecord:
    """Challenger-vs-champion votes, from the challenger's side, as they count: a few per
    session and per origin, grouped by origin (`by_origin`: one tuple of scores per client
    address; an API key's session is its own origin), anomalous sessions left out."""

    wins: int = 0
    losses: int = 0
    ties: int = 0  # `tie` and `both_bad`: neither side was better
    by_origin: tuple[tuple[float, ...], ...] = ()  # empty: every vote its own voter
    n_sessions: int = 0  # distinct sessions whose votes count
    raw_votes: int = 0  # votes cast, before the caps and the anomaly filter
    excluded_sessions: int = 0  # anomalous sessions left out
    sequence: tuple[float, ...] = ()  # the counted votes in the order they came (1, 0, ½)

    @property
    def votes(self) -> int:
        return self.wins + self.losses + self.ties

    @property
    def sessions(self) -> int:
        return self.n_sessions if self.by_origin else self.votes

    @property
    def origins(self) -> int:
        return len(self.by_origin) if self.by_origin else self.votes

    def scores(self) -> list[float]:
        """One number per vote: 1 a win, 0 a loss, ½ a tie (ties split)."""
        return [1.0] * self.wins + [0.0] * self.losses + [0.5] * self.ties

    @classmethod
    def of_voices(
        cls,
        by_origin: dict[str, list[float]],
        sessions: int,
        raw_votes: int,
        excluded_sessions: int = 0,
        sequence: Sequence[float] = (),
    ) -> ArenaRecord:
        clusters = tuple(tuple(v) for _, v in sorted(by_origin.items()) if v)
        flat = [x for c in clusters for x in c]
        return cls(
            wins=sum(x == 1.0 for x in flat),
            losses=sum(x == 0.0 for x in flat),
            ties=sum(x == 0.5 for x in flat),
            by_origin=clusters,
            n_sessions=sessions,
            raw_votes=raw_votes,
            excluded_sessions=excluded_sessions,
            sequence=tuple(sequence),
        )


@dataclass(frozen=True)
class ChallengerDecision:
    """`promote`, `retire` or `continue`, the win rate and its 95% interval, and why."""

    action: str
    reason: str
    win_rate: float | None
    low: float | None
    high: float | None
    votes: int

    def as_dict(self) -> dict[str, Any]:
        return {
            "action": self.action,
            "reason": self.reason,
            "win_rate": self.win_rate,
            "win_rate_low": self.low,
            "win_rate_high": self.high,
            "votes": self.votes,
        }


SEQUENTIAL_ALPHA = 0.05  # each side α/2: promote or retire wrongly at most 2.5% of the time


def challenger_decision(
    record: ArenaRecord,
    *,
    min_votes: int,
    deadline_passed: bool,
    min_sessions: int = 1,
    min_origins: int = 1,
    rule: str = "fixed",
) -> ChallengerDecision:
    """Promote or retire once `min_votes` counted votes of `min_sessions` distinct sessions from
    `min_origins` origins are in (the quorum), by `rule`:

    * `sequential`: a test by betting on the votes in the order they came
      (:func:`kindchat.stats.betting_test`): promote when the evidence that users prefer the
      challenger reaches 2/α (α = 5%), retire when the evidence against does. Its error holds
      at every look, so it decides as soon as the votes allow — a clearly better or worse
      challenger in tens of votes, a close one later;
    * `fixed`: the 95% interval of the win rate (resampling origins) lying above ½ promotes,
      below ½ retires (the rule before; its error grows with every look after the quorum).

    At the deadline, retire unless the interval of those many voices promotes it."""
    if rule not in RULES:
        raise ValueError(f"rule must be one of {RULES}, got {rule!r}")
    if record.votes == 0:
        if deadline_passed:
            return ChallengerDecision(
                "retire", "the deadline passed without a vote", None, None, None, 0
            )
        return ChallengerDecision("continue", "no votes yet", None, None, None, 0)
    estimate = (
        cluster_bootstrap(record.by_origin) if record.by_origin else bootstrap(record.scores())
    )
    figures = (estimate.value, estimate.low, estimate.high, record.votes)
    interval = (
        f"win rate {estimate} over {record.votes} votes of {record.sessions} sessions from "
        f"{record.origins} origins"
    )
    voices = record.sessions >= min_sessions and record.origins >= min_origins
    quorum = voices and record.votes >= min_votes
    if rule == "sequential" and quorum:
        # The test's crossing, confirmed by the interval that resamples origins: the test
        # treats votes as independent, so 20 votes of one origin at once could carry it alone;
        # the origin-resampled interval does not let one voice decide.
        test = betting_test(record.sequence or record.scores(), alpha=SEQUENTIAL_ALPHA)
        if test.up and estimate.low > 0.5:
            return ChallengerDecision(
                "promote", f"users prefer it (sequential test: {test}): {interval}", *figures
            )
        if test.down and estimate.high < 0.5:
            return ChallengerDecision(
                "retire",
                f"users prefer the champion (sequential test: {test}): {interval}",
                *figures,
            )
    if (quorum and rule == "fixed") or deadline_passed:
        if estimate.low > 0.5 and voices:
            return ChallengerDecision("promote", f"users prefer it: {interval}", *figures)
        if estimate.high < 0.5:
            return ChallengerDecision("retire", f"users prefer the champion: {interval}", *figures)
        if deadline_passed:
            return ChallengerDecision(
                "retire", f"the deadline passed undecided: {interval}", *figures
            )
    if quorum:
        return ChallengerDecision("continue", f"undecided: {interval}", *figures)
    return ChallengerDecision(
        "continue",
        f"{record.votes} of {min_votes} votes, {record.sessions} of {min_sessions} sessions, "
        f"{record.origins} of {min_origins} origins: {interval}",
        *figures,
    )
