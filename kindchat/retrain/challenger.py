"""The challenger phase: the users, not a proxy judge, decide whether a retrained model serves.

A policy that passed a cycle's offline guard rails is not promoted at once: it becomes the alias
`challenger` and takes part in a share of new arena battles (`challenger_share`), always
against the champion (the served alias, `rlhf`), sides random, identities hidden until the
vote. Its record is read from the stored votes of those battles (ties and both-bad split), and
:func:`kindchat.retrain.gates.challenger_decision` decides once `challenger_min_votes` votes
(at most `challenger_votes_per_session` of each session and `challenger_votes_per_origin` of each
origin) of `challenger_min_sessions` distinct sessions from `challenger_min_origins` origins are
in, sessions that vote like a script left out, or the deadline passes: promote
(atomic alias swap; servers hot-swap), retire (the alias goes, nothing else moves), or keep
collecting.

State lives where it survives a restart: the alias in the registry, the votes in the battles
table, and the phase on its retrain run (status `challenging`, metrics `challenger`). Deciding
takes the retrain lock (non-blocking), so two servers, or a server and the nightly job, never
decide twice.
"""

from __future__ import annotations

import logging
from collections import defaultdict
from dataclasses import asdict, dataclass, field
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import Engine

from kindchat.config import Settings
from kindchat.feedback import run_records, statistics
from kindchat.feedback.db import session_scope
from kindchat.feedback.influence import InfluenceConfig, find_anomalies, origin_of, read_votes
from kindchat.feedback.models import as_utc, utcnow
from kindchat.models.registry import CHALLENGER_ALIAS, Registry
from kindchat.retrain.errors import RetrainBusyError, RetrainError
from kindchat.retrain.gates import ArenaRecord, ChallengerDecision, challenger_decision
from kindchat.retrain.locks import cycle_lock

logger = logging.getLogger(__name__)

CHALLENGING = "challenging"  # the run's status while its challenger is in the arena


class ChallengeError(RetrainError):
    """A challenge cannot start (another is running, the version is no policy, …)."""


@dataclass(frozen=True)
class ChallengerConfig:
    """How much of the arena a challenger gets and what it takes to decide."""

    share: float = 0.5  # of new arena battles, challenger vs champion
    min_votes: int = 200  # decide from this many counted votes on …
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
            deadline_hours=settings.challenger_deadline_hours,
            min_sessions=settings.challenger_min_sessions,
            votes_per_session=settings.challenger_votes_per_session,
            min_origins=settings.challenger_min_origins,
            votes_per_origin=settings.challenger_votes_per_origin,
            influence=InfluenceConfig.from_settings(settings),
        )


@dataclass(frozen=True)
class ChallengerState:
    """The challenge in progress: who, since when, its record and what would be decided now."""

    run_id: str
    version: str
    champion: str
    champion_alias: str
    champion_alias_target: str | None
    started_at: datetime
    deadline: datetime
    min_votes: int
    record: ArenaRecord
    decision: ChallengerDecision
    promote_with: dict[str, str]

    def as_dict(self) -> dict[str, Any]:
        return {
            "run_id": self.run_id,
            "version": self.version,
            "champion": self.champion,
            "champion_alias": self.champion_alias,
            "started_at": self.started_at.isoformat(),
            "deadline": self.deadline.isoformat(),
            "min_votes": self.min_votes,
            "wins": self.record.wins,
            "losses": self.record.losses,
            "ties": self.record.ties,
            "sessions": self.record.sessions,
            "origins": self.record.origins,
            "raw_votes": self.record.raw_votes,
            "excluded_sessions": self.record.excluded_sessions,
            **{f"now_{k}": v for k, v in self.decision.as_dict().items()},
        }


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
) -> dict[str, Any]:
    """Make `version` the challenger of `champion` for run `run_id`; the recorded figures."""
    now = utcnow()
    figures = {
        "version": version,
        "champion": champion,
        "champion_alias": champion_alias,
        "champion_alias_target": champion_alias_target,  # what the alias pointed at (or None)
        "started_at": now.isoformat(),
        "deadline": (now + timedelta(hours=config.deadline_hours)).isoformat(),
        "min_votes": config.min_votes,
        "min_sessions": config.min_sessions,
        "votes_per_session": config.votes_per_session,
        "min_origins": config.min_origins,
        "votes_per_origin": config.votes_per_origin,
        "influence": asdict(config.influence),
        "share": config.share,
        "promote_with": promote_with,
    }
    registry.set_alias(CHALLENGER_ALIAS, version)
    logger.info("challenger %s enters the arena against %s (run %s)", version, champion, run_id)
    return figures


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
    return ArenaRecord.of_voices(by_origin, len(per_session), raw, len(excluded))


def current_challenge(
    engine: Engine, registry: Registry, now: datetime | None = None
) -> ChallengerState | None:
    """The challenge in progress (its run is `challenging`), or None."""
    with session_scope(engine) as session:
        runs = run_records.list_runs(session=session, status=CHALLENGING, limit=1)
    if not runs:
        return None
    run = runs[0]
    figures = (run.metrics or {}).get("challenger") or {}
    if "version" not in figures:
        return None
    started = as_utc(datetime.fromisoformat(figures["started_at"]))
    deadline = as_utc(datetime.fromisoformat(figures["deadline"]))
    # The rule is the one the challenge opened with (older records: one vote, one voter).
    influence = figures.get("influence")
    record = arena_record(
        engine,
        figures["version"],
        figures["champion"],
        started,
        votes_per_session=int(figures.get("votes_per_session", 1_000_000)),
        votes_per_origin=int(figures.get("votes_per_origin", 1_000_000)),
        influence=InfluenceConfig(**influence) if influence else None,
    )
    now = now or utcnow()
    decision = challenger_decision(
        record,
        min_votes=int(figures["min_votes"]),
        deadline_passed=now >= deadline,
        min_sessions=int(figures.get("min_sessions", 1)),
        min_origins=int(figures.get("min_origins", 1)),
    )
    return ChallengerState(
        run_id=run.id,
        version=figures["version"],
        champion=figures["champion"],
        champion_alias=figures["champion_alias"],
        champion_alias_target=figures.get("champion_alias_target"),
        started_at=started,
        deadline=deadline,
        min_votes=int(figures["min_votes"]),
        record=record,
        decision=decision,
        promote_with=dict(figures.get("promote_with") or {}),
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
            return _apply(engine, registry, state)
    except RetrainBusyError:
        return None


def _apply(engine: Engine, registry: Registry, state: ChallengerState) -> ChallengerDecision:
    decision = state.decision
    served = registry.aliases().get(state.champion_alias)
    if decision.action == "promote" and served != state.champion_alias_target:
        decision = ChallengerDecision(
            "retire",
            f"the champion alias {state.champion_alias!r} moved to {served} during the challenge",
            decision.win_rate,
            decision.low,
            decision.high,
            decision.votes,
        )
    if decision.action == "promote":
        registry.set_alias(state.champion_alias, state.version)
        for alias, version in state.promote_with.items():
            registry.set_alias(alias, version)
    registry.remove_alias(CHALLENGER_ALIAS, expected=state.version)
    with session_scope(engine) as session:
        run = run_records.get_run(session=session, run_id=state.run_id)
        metrics = dict(run.metrics or {})
        metrics["challenger"] = {
            **metrics.get("challenger", {}),
            "wins": state.record.wins,
            "losses": state.record.losses,
            "ties": state.record.ties,
            "sessions": state.record.sessions,
            "origins": state.record.origins,
            "raw_votes": state.record.raw_votes,
            "excluded_sessions": state.record.excluded_sessions,
            **decision.as_dict(),
            "decided_at": utcnow().isoformat(),
        }
        promoted = decision.action == "promote"
        run_records.update_run(
            session=session,
            run_id=state.run_id,
            status="succeeded" if promoted else "refused",
            stage="promote" if promoted else "challenger",
            metrics=metrics,
            error=None if promoted else f"challenger retired: {decision.reason}",
            promoted=promoted,
        )
    logger.info("challenger %s: %s (%s)", state.version, decision.action, decision.reason)
    return decision


def challenge_history(engine: Engine, limit: int = 20) -> list[dict[str, Any]]:
    """Decided challenges, newest first: version, champion, record, decision, reason."""
    out = []
    with session_scope(engine) as session:
        runs = run_records.list_runs(session=session, limit=200)
    for run in runs:
        figures = (run.metrics or {}).get("challenger") or {}
        if "decided_at" in figures:
            out.append({"run_id": run.id, **figures})
        if len(out) >= limit:
            break
    return out


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

    The same phase a nightly cycle opens, recorded on a run of its own. Refused while another
    challenger is being judged or a cycle holds the lock.
    """
    if registry.manifest(version).kind != "policy":
        raise ChallengeError(f"{version} is a {registry.manifest(version).kind}, not a policy")
    with cycle_lock(settings):
        if current_challenge(engine, registry) is not None:
            raise ChallengeError("a challenger is being judged already; wait for its decision")
        aliases = registry.aliases()
        champion_target = aliases.get(champion_alias)
        champion = champion_target or aliases.get("sft")
        if champion is None:
            raise ChallengeError(f"no {champion_alias!r} (nor sft) to challenge")
        figures = open_challenge(
            engine=engine,
            registry=registry,
            run_id="manual",
            version=version,
            champion=champion,
            champion_alias=champion_alias,
            champion_alias_target=champion_target,
            promote_with=dict(promote_with or {}),
            config=ChallengerConfig.from_settings(settings),
        )
        with session_scope(engine) as session:
            run = run_records.create_run(session=session, status="running", stage="challenger")
            run_records.update_run(
                session=session,
                run_id=run.id,
                status=CHALLENGING,
                metrics={"challenger": figures},
                produced_versions=[version],
            )
        return run.id
