"""The challenger phase: the users, not a proxy judge, decide whether a retrained model serves.

A policy that passed a cycle's offline guard rails is not promoted at once: it becomes the alias
`challenger` and takes part in a share of new arena battles (`challenger_share`), always
against the champion it was opened against, sides random, identities hidden until the vote.
Its record is read from the stored votes of those battles (ties and both-bad split), and
:func:`kindchat.retrain.gates.challenger_decision` decides, by a sequential test valid at every
look (`challenger_rule`), as soon as `challenger_min_votes` votes
(at most `challenger_votes_per_session` of each session and `challenger_votes_per_origin` of each
origin) of `challenger_min_sessions` distinct sessions from `challenger_min_origins` origins are
in, sessions that vote like a script left out, or the deadline passes: promote
(atomic alias swap; servers hot-swap), retire (the alias goes, nothing else moves), or keep
collecting.

The challenge is a record of its own (:class:`kindchat.feedback.models.Challenge`): whom the
challenger faces (the champion alias, what it pointed at, and the version the battles are
fought against), the rules fixed when it opened, its status (`open`, then `promoted`,
`retired` or `abandoned`) and its outcome. This module is its one writer, and moves the
registry aliases in the same steps:

- :func:`open_challenge` records the challenge, then moves the `challenger` alias, then marks
  the run `challenging` (its run row exists first); if the alias cannot move, the record is
  abandoned and the run failed.
- :func:`close_challenge` promotes or retires: moves the champion alias, closes the record and
  finishes the run (one commit), removes the `challenger` alias; :func:`decide_challenge`
  calls it under the retrain lock when the votes (or the deadline) decide.
- :func:`recover_challenges` (called by stale-run recovery) abandons an open challenge whose
  run is over, and clears a `challenger` alias no open challenge accounts for.

The arena draws its pair with :func:`challenge_pair`: the challenger against the recorded
champion version, under a name the model manager serves (the champion alias when it is served
and still points there, another served name on that version, or the version itself, which
:func:`arena_versions` has the manager load for the arena alone). So the champion is never
"whatever the first served alias is".

State lives where it survives a restart: the aliases in the registry, the challenge in its
table, the votes in the battles table. Opening, deciding and recovering take the retrain lock
(non-blocking for deciding), so two servers, or a server and the nightly job, never decide
twice.
"""

from __future__ import annotations

import logging
import random
from collections import defaultdict
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any

from sqlalchemy import Engine

from kindchat.config import Settings
from kindchat.feedback import challenges, run_records, statistics
from kindchat.feedback.db import session_scope
from kindchat.feedback.errors import StateConflictError
from kindchat.feedback.influence import InfluenceConfig, find_anomalies, origin_of, read_votes
from kindchat.feedback.models import (
    TERMINAL_RUN_STATUSES,
    ChallengeOutcome,
    ChallengePublic,
    utcnow,
)
from kindchat.models.registry import CHALLENGER_ALIAS, Registry
from kindchat.retrain.errors import RetrainBusyError, RetrainError
from kindchat.retrain.gates import ArenaRecord, ChallengerDecision, challenger_decision
from kindchat.retrain.locks import cycle_lock

if TYPE_CHECKING:
    from kindchat.models.manager import ModelManager

logger = logging.getLogger(__name__)

CHALLENGING = "challenging"  # the run's status while its challenger is in the arena
# a closed challenge's status -> the action its history row shows
ACTIONS = {"promoted": "promote", "retired": "retire", "abandoned": "abandon"}


class ChallengeError(RetrainError):
    """A challenge cannot start (another is running, the version is no policy, …)."""


@dataclass(frozen=True)
class ChallengerConfig:
    """How much of the arena a challenger gets and what it takes to decide."""

    share: float = 0.5  # of new arena battles, challenger vs champion
    min_votes: int = 40  # decide from this many counted votes on …
    rule: str = "sequential"  # … by a test valid at every look (or "fixed": the interval)
    deadline_hours: float = 24.0  # retire an undecided challenger after this long
    min_sessions: int = 20  # … cast by this many distinct sessions …
    votes_per_session: int = 5  # votes of one session that count, at most
    min_origins: int = 10  # … from this many distinct origins (client addresses)
    votes_per_origin: int = 20  # votes of one origin (all its sessions) that count, at most
    influence: InfluenceConfig = field(default_factory=InfluenceConfig)  # anomalous sessions

    def __post_init__(self) -> None:
        if not 0 <= self.share <= 1:
            raise ValueError(f"challenger share must lie in [0, 1], got {self.share}")
        if self.min_votes < 1:
            raise ValueError(f"challenger min_votes must be >= 1, got {self.min_votes}")
        if self.deadline_hours <= 0:
            raise ValueError(f"challenger deadline must be > 0 h, got {self.deadline_hours}")

    @classmethod
    def from_settings(cls, settings: Settings) -> ChallengerConfig:
        return cls(
            share=settings.challenger_share,
            min_votes=settings.challenger_min_votes,
            rule=settings.challenger_rule,
            deadline_hours=settings.challenger_deadline_hours,
            min_sessions=settings.challenger_min_sessions,
            votes_per_session=settings.challenger_votes_per_session,
            min_origins=settings.challenger_min_origins,
            votes_per_origin=settings.challenger_votes_per_origin,
            influence=InfluenceConfig.from_settings(settings),
        )


@dataclass(frozen=True)
class ChallengerState:
    """The challenge in progress: who, against whom, since when, its record and what would be
    decided now."""

    challenge_id: str
    run_id: str
    version: str
    champion: str  # the version the challenger faces
    champion_alias: str
    champion_alias_target: str | None
    started_at: datetime
    deadline: datetime
    min_votes: int
    record: ArenaRecord
    decision: ChallengerDecision
    rule: str  # sequential or fixed, as the challenge opened
    promote_with: dict[str, str] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        return {
            "challenge_id": self.challenge_id,
            "run_id": self.run_id,
            "version": self.version,
            "champion": self.champion,
            "champion_alias": self.champion_alias,
            "started_at": self.started_at.isoformat(),
            "deadline": self.deadline.isoformat(),
            "min_votes": self.min_votes,
            "rule": self.rule,
            "wins": self.record.wins,
            "losses": self.record.losses,
            "ties": self.record.ties,
            "sessions": self.record.sessions,
            "origins": self.record.origins,
            "raw_votes": self.record.raw_votes,
            "excluded_sessions": self.record.excluded_sessions,
            **{f"now_{k}": v for k, v in self.decision.as_dict().items()},
        }


# ---- the one writer ------------------------------------------------------------------------


def open_challenge(
    *,
    engine: Engine,
    registry: Registry,
    run_id: str,
    version: str,
    champion: str,
    champion_alias: str,
    champion_alias_target: str | None,
    promote_with: dict[str, str],
    config: ChallengerConfig,
) -> ChallengePublic:
    """Make `version` the challenger of `champion` (the version it faces; `champion_alias`
    pointed at `champion_alias_target`) for run `run_id`, which must exist and be running.

    In this order: the challenge is recorded (open, with `config`'s rules and a deadline
    `config.deadline_hours` from now), the `challenger` alias moves, the run becomes
    `challenging`. If a step after the record fails, the challenge is abandoned (alias removed,
    run failed) and the error raised. Call it under the retrain lock. Raises
    :class:`ChallengeError` when `version` is no policy, another challenge is open, or the
    champion alias no longer points at `champion_alias_target`.
    """
    kind = registry.manifest(version).kind
    if kind != "policy":
        raise ChallengeError(f"{version} is a {kind}, not a policy")
    served = registry.aliases().get(champion_alias)
    if served != champion_alias_target:
        raise ChallengeError(
            f"alias {champion_alias!r} moved from {champion_alias_target} to {served}; not "
            f"opening a challenge against a champion it no longer serves"
        )
    with session_scope(engine) as session:
        try:
            challenge = challenges.create_challenge(
                session=session,
                run_id=run_id,
                challenger_version=version,
                champion_alias=champion_alias,
                champion_alias_target=champion_alias_target,
                champion_version=champion,
                promote_with=dict(promote_with),
                share=config.share,
                min_votes=config.min_votes,
                rule=config.rule,
                min_sessions=config.min_sessions,
                votes_per_session=config.votes_per_session,
                min_origins=config.min_origins,
                votes_per_origin=config.votes_per_origin,
                influence=config.influence,
                deadline=utcnow() + timedelta(hours=config.deadline_hours),
            )
        except StateConflictError as err:
            raise ChallengeError(str(err)) from err
        session.commit()
    try:
        registry.set_alias(CHALLENGER_ALIAS, version)
        with session_scope(engine) as session:
            run_records.update_run(
                session=session, run_id=run_id, status=CHALLENGING, stage="challenger"
            )
            session.commit()
    except BaseException as err:
        try:
            abandon_challenge(
                engine=engine,
                registry=registry,
                challenge=challenge,
                reason=f"it could not open: {type(err).__name__}: {err}",
            )
        except Exception:  # the error that stopped the opening is the one to raise
            logger.exception("could not abandon challenge %s", challenge.id)
        raise
    logger.info("challenger %s enters the arena against %s (run %s)", version, champion, run_id)
    return challenge


def close_challenge(
    *, engine: Engine, registry: Registry, state: ChallengerState
) -> ChallengerDecision:
    """Carry out `state.decision` (promote or retire) and close the challenge; the decision
    taken.

    Promote: the champion alias (and `promote_with`'s) move to the challenger first, unless the
    champion alias moved elsewhere meanwhile (then it retires: not over a manual change).
    Then the record closes (`promoted` / `retired`, with its record and the reason) and the
    run finishes (`succeeded`, promoted / `refused`) in one commit, and the `challenger` alias
    goes. A promotion interrupted after its alias moved is finished by the next call. A
    challenge whose run is over already is abandoned instead (action `abandon`). Call it
    under the retrain lock.
    """
    decision = state.decision
    if decision.action not in ("promote", "retire"):
        raise ValueError(f"only promote or retire close a challenge, not {decision.action!r}")
    with session_scope(engine) as session:
        challenge = challenges.get_challenge(session=session, challenge_id=state.challenge_id)
        run = run_records.get_run(session=session, run_id=state.run_id)
    if run.status in TERMINAL_RUN_STATUSES:
        reason = f"its run {run.id} ended as {run.status!r} while the challenge was open"
        abandon_challenge(engine=engine, registry=registry, challenge=challenge, reason=reason)
        return ChallengerDecision("abandon", reason, *_figures(decision))
    served = registry.aliases().get(state.champion_alias)
    # `served == version`: a promotion interrupted after its alias moved; finish it
    if decision.action == "promote" and served not in (state.champion_alias_target, state.version):
        decision = ChallengerDecision(
            "retire",
            f"the champion alias {state.champion_alias!r} moved to {served} during the challenge",
            *_figures(decision),
        )
    promoted = decision.action == "promote"
    if promoted:
        registry.set_alias(state.champion_alias, state.version)
        for alias, version in state.promote_with.items():
            registry.set_alias(alias, version)
    with session_scope(engine) as session:
        challenges.close_challenge(
            session=session,
            challenge_id=state.challenge_id,
            status="promoted" if promoted else "retired",
            reason=decision.reason,
            outcome=_outcome(state.record, decision),
        )
        run_records.update_run(
            session=session,
            run_id=state.run_id,
            status="succeeded" if promoted else "refused",
            stage="promote" if promoted else "challenger",
            error=None if promoted else f"challenger retired: {decision.reason}",
            promoted=promoted,
        )
        session.commit()
    # last: a server reloading on this change finds the challenge closed (a crash before it
    # leaves a stray alias, which stale-run recovery removes)
    registry.remove_alias(CHALLENGER_ALIAS, expected=state.version)
    logger.info("challenger %s: %s (%s)", state.version, decision.action, decision.reason)
    return decision


def abandon_challenge(
    *, engine: Engine, registry: Registry, challenge: ChallengePublic, reason: str
) -> None:
    """End an open challenge that cannot go on: the record closes as `abandoned` with
    `reason` and its run, if not over yet, is failed (one commit); then the `challenger` alias
    goes (if it still points at its version). Nothing is promoted."""
    with session_scope(engine) as session:
        challenges.close_challenge(
            session=session, challenge_id=challenge.id, status="abandoned", reason=reason
        )
        run = run_records.get_run(session=session, run_id=challenge.run_id)
        if run.status not in TERMINAL_RUN_STATUSES:
            run_records.update_run(
                session=session,
                run_id=run.id,
                status="failed",
                error=f"challenge abandoned: {reason}",
            )
        session.commit()
    registry.remove_alias(CHALLENGER_ALIAS, expected=challenge.challenger_version)
    logger.warning("challenger %s abandoned: %s", challenge.challenger_version, reason)


def recover_challenges(settings: Settings, engine: Engine, registry: Registry) -> int:
    """Stale-run recovery's part (with the retrain lock held, after stale runs were failed):
    abandon the open challenge when its run is over (a process died between opening and
    finishing), and remove a `challenger` alias that no open challenge accounts for. Returns
    how many challenges were abandoned."""
    with session_scope(engine) as session:
        challenge = challenges.get_open(session=session)
        run = (
            None
            if challenge is None
            else run_records.get_run(session=session, run_id=challenge.run_id)
        )
    if challenge is not None and run is not None:
        if run.status not in TERMINAL_RUN_STATUSES:
            return 0
        reason = f"its run {run.id} ended as {run.status!r} ({run.error or 'no error'})"
        abandon_challenge(engine=engine, registry=registry, challenge=challenge, reason=reason)
        return 1
    orphan = registry.aliases().get(CHALLENGER_ALIAS)
    if orphan is not None and CHALLENGER_ALIAS not in settings.serve_aliases:
        registry.remove_alias(CHALLENGER_ALIAS, expected=orphan)
        logger.warning("removed the alias %s -> %s: no open challenge", CHALLENGER_ALIAS, orphan)
    return 0


def _figures(decision: ChallengerDecision) -> tuple[float | None, float | None, float | None, int]:
    return decision.win_rate, decision.low, decision.high, decision.votes


def _outcome(record: ArenaRecord, decision: ChallengerDecision) -> ChallengeOutcome:
    return ChallengeOutcome(
        wins=record.wins,
        losses=record.losses,
        ties=record.ties,
        votes=decision.votes,
        sessions=record.sessions,
        origins=record.origins,
        raw_votes=record.raw_votes,
        excluded_sessions=record.excluded_sessions,
        win_rate=decision.win_rate,
        win_rate_low=decision.low,
        win_rate_high=decision.high,
    )


def challenge_summary(challenge: ChallengePublic) -> dict[str, Any]:
    """What a run's metrics keep of the challenge it opened (the record holds the rest)."""
    return {
        "challenge_id": challenge.id,
        "version": challenge.challenger_version,
        "champion": challenge.champion_version,
        "champion_alias": challenge.champion_alias,
        "deadline": challenge.deadline.isoformat(),
    }


# ---- the arena -----------------------------------------------------------------------------


def challenge_pair(
    engine: Engine, manager: ModelManager, *, share: float
) -> tuple[str, str] | None:
    """The pair of a challenger battle, (challenger name, champion name), for a share `share`
    of the battles drawn while a challenge is open and its challenger is loaded; else None.

    The champion is the version recorded on the challenge, served under the champion alias
    when that is served and still answers with it, else another served name on that version,
    else the version itself (loaded for the arena: :func:`arena_versions`). None too when no
    served name answers with it yet (the manager is loading it).
    """
    challenger = manager.challenger()
    if challenger is None or random.random() >= share:
        return None
    with session_scope(engine) as session:
        challenge = challenges.get_open(session=session)
    if challenge is None or challenge.challenger_version != challenger.version:
        return None
    champion = manager.arena_name(challenge.champion_version, alias=challenge.champion_alias)
    if champion is None:
        logger.warning(
            "champion %s of the open challenge is not loaded; an ordinary battle instead",
            challenge.champion_version,
        )
        return None
    return challenger.name, champion


def arena_versions(engine: Engine) -> list[str]:
    """Versions the arena needs loaded beside the served aliases: the open challenge's
    champion (:attr:`ModelManager.arena_versions` asks this at every reload)."""
    with session_scope(engine) as session:
        challenge = challenges.get_open(session=session)
    return [] if challenge is None else [challenge.champion_version]


def arena_record(
    engine: Engine,
    challenger: str,
    champion: str,
    since: datetime,
    *,
    votes_per_session: int = 1_000_000,
    votes_per_origin: int = 1_000_000,
    influence: InfluenceConfig | None = None,
) -> ArenaRecord:
    """The challenger's record in voted battles against the champion since `since`: each
    session's first `votes_per_session` votes and each origin's first `votes_per_origin`
    (:func:`kindchat.feedback.influence.origin_of`); sessions that vote like a script (judged
    over all their votes since `since`) left out. Votes are grouped by origin (one voice)."""
    by_origin: dict[str, list[float]] = defaultdict(list)
    sequence: list[float] = []
    per_session: dict[str, int] = defaultdict(int)
    raw = 0
    with session_scope(engine) as session:
        anomalous = (
            find_anomalies(read_votes(session, since), influence).sessions if influence else {}
        )
        outcomes = statistics.battle_outcomes(session=session, since=since)
    excluded: set[str] = set()
    for outcome in outcomes:
        sides = (outcome.model_a, outcome.model_b)
        if set(sides) != {challenger, champion}:
            continue
        raw += 1
        voter = outcome.session_id or "unknown"
        if voter in anomalous:
            excluded.add(voter)
            continue
        origin = origin_of(voter)
        if per_session[voter] >= votes_per_session or len(by_origin[origin]) >= votes_per_origin:
            continue
        if outcome.winner in ("tie", "both_bad"):
            score = 0.5
        elif sides[0 if outcome.winner == "a" else 1] == challenger:
            score = 1.0
        else:
            score = 0.0
        per_session[voter] += 1
        by_origin[origin].append(score)
        sequence.append(score)
    return ArenaRecord.of_voices(by_origin, len(per_session), raw, len(excluded), sequence)


def current_challenge(
    engine: Engine, registry: Registry, now: datetime | None = None
) -> ChallengerState | None:
    """The open challenge with its record so far and what the votes decide now, or None."""
    with session_scope(engine) as session:
        challenge = challenges.get_open(session=session)
    if challenge is None:
        return None
    # The rule is the one the challenge opened with.
    record = arena_record(
        engine,
        challenge.challenger_version,
        challenge.champion_version,
        challenge.opened_at,
        votes_per_session=challenge.votes_per_session,
        votes_per_origin=challenge.votes_per_origin,
        influence=challenges.influence_config(challenge),
    )
    now = now or utcnow()
    decision = challenger_decision(
        record,
        min_votes=challenge.min_votes,
        deadline_passed=now >= challenge.deadline,
        min_sessions=challenge.min_sessions,
        min_origins=challenge.min_origins,
        rule=challenge.rule,
    )
    return ChallengerState(
        challenge_id=challenge.id,
        run_id=challenge.run_id,
        version=challenge.challenger_version,
        champion=challenge.champion_version,
        champion_alias=challenge.champion_alias,
        champion_alias_target=challenge.champion_alias_target,
        started_at=challenge.opened_at,
        deadline=challenge.deadline,
        min_votes=challenge.min_votes,
        record=record,
        decision=decision,
        rule=challenge.rule,
        promote_with=dict(challenge.promote_with),
    )


def decide_challenge(
    settings: Settings,
    engine: Engine,
    registry: Registry,
    now: datetime | None = None,
) -> ChallengerDecision | None:
    """Apply the decision the votes support now (promote or retire), under the retrain lock.

    Returns the decision taken, or None when there is no challenge, it is still undecided, or
    another process holds the lock (it will decide).
    """
    try:
        with cycle_lock(settings):
            state = current_challenge(engine, registry, now)
            if state is None or state.decision.action == "continue":
                return None
            return close_challenge(engine=engine, registry=registry, state=state)
    except RetrainBusyError:
        return None


def challenge_history(engine: Engine, limit: int = 20) -> list[dict[str, Any]]:
    """Closed challenges, newest first: version, champion, rules, record, action (`promote`,
    `retire`, `abandon`) and reason."""
    with session_scope(engine) as session:
        closed = challenges.list_challenges(session=session, status="closed", limit=limit)
    return [
        {
            "challenge_id": c.id,
            "run_id": c.run_id,
            "version": c.challenger_version,
            "champion": c.champion_version,
            "champion_alias": c.champion_alias,
            "status": c.status,
            "action": ACTIONS[c.status],
            "reason": c.reason,
            "started_at": c.opened_at.isoformat(),
            "deadline": c.deadline.isoformat(),
            "decided_at": c.decided_at.isoformat() if c.decided_at else None,
            "min_votes": c.min_votes,
            **{name: getattr(c, name) for name in ChallengeOutcome.model_fields},
        }
        for c in closed
    ]


def challenge_version(
    settings: Settings,
    engine: Engine,
    registry: Registry,
    version: str,
    *,
    champion_alias: str = "rlhf",
    promote_with: dict[str, str] | None = None,
) -> str:
    """Put a registered policy into the arena by hand (an imported model, say); the run id.

    The same phase a nightly cycle opens, recorded on a run of its own (created first, failed
    if the challenge cannot open). It faces what `champion_alias` points at, or SFT while that
    points at nothing. Refused while another challenger is being judged or a cycle holds the
    lock.
    """
    kind = registry.manifest(version).kind
    if kind != "policy":
        raise ChallengeError(f"{version} is a {kind}, not a policy")
    with cycle_lock(settings):
        with session_scope(engine) as session:
            if challenges.get_open(session=session) is not None:
                raise ChallengeError("a challenger is being judged already; wait for its decision")
        aliases = registry.aliases()
        champion_target = aliases.get(champion_alias)
        champion = champion_target or aliases.get("sft")
        if champion is None:
            raise ChallengeError(f"no {champion_alias!r} (nor sft) to challenge")
        with session_scope(engine) as session:
            run = run_records.create_run(session=session, status="running", stage="challenger")
            run_records.update_run(session=session, run_id=run.id, produced_versions=[version])
            session.commit()
        try:
            challenge = open_challenge(
                engine=engine,
                registry=registry,
                run_id=run.id,
                version=version,
                champion=champion,
                champion_alias=champion_alias,
                champion_alias_target=champion_target,
                promote_with=dict(promote_with or {}),
                config=ChallengerConfig.from_settings(settings),
            )
        except BaseException as err:
            with session_scope(engine) as session:
                if run_records.get_run(session=session, run_id=run.id).status == "running":
                    run_records.update_run(
                        session=session, run_id=run.id, status="failed", error=str(err)
                    )
                    session.commit()
            raise
        with session_scope(engine) as session:
            run_records.update_run(
                session=session, run_id=run.id, metrics={"challenger": challenge_summary(challenge)}
            )
            session.commit()
        return run.id
