"""One person, one voice in what trains: anomalous sessions left out, every session capped.

Votes are 👍/👎 ratings and arena verdicts, each with its session. A session is *anomalous*
(its votes are left out of training, and of a challenger's record) when it votes like a script:

| reason      | rule (a session with at least `min_votes` votes)                                    |
| ----------- | ----------------------------------------------------------------------------------- |
| `too_fast`  | at least `too_fast_share` of its votes came sooner than a person reads their answer |
|             | (`len(answer) / read_chars_per_s` s, ≥ `min_read_s`), timed from when it was shown   |
|             | to the session or from the session's previous vote, whichever is later (:func:`too_fast`) |
| `one_sided` | at least `one_sided_min_votes` votes, `one_sided_share` of them the same (always 👍, |
|             | always 👎, or always the same model in the arena)                                    |
| `burst`     | its busiest `burst_window_s` holds ≥ `burst_min` votes and ≥ `burst_factor` × the   |
|             | median busiest window over *origins* (which the sessions of one address cannot move: |
|             | they are one origin; what they give together is held by the origin cap)              |

The *cap* (:func:`cap_rows`): no session may account for more than
`max(cap_share × rows, cap_min)` of the night's feedback rows, and no *origin* (all sessions
minted for one client address: :func:`origin_of`) more than
`max(origin_cap_share × rows, origin_cap_min)`. A row is charged to every session and origin
whose votes made it, and kept only while all of them have room (earliest rows first).

An answer is shown to a session when it starts to stream to it (stored time minus latency):
answers stream only to their own session, and a session rates only its own answers.
"""

from __future__ import annotations

import math
import statistics
from collections import Counter, defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any, Protocol, TypeVar

from sqlmodel import Session, col, select

from kindchat.feedback.errors import InvalidValueError
from kindchat.feedback.models import Battle, Message, Rating, as_utc

REASONS = ("too_fast", "one_sided", "burst")


def origin_of(session_id: str) -> str:
    """Where a session came from: `addr:<tag>` for a session minted for a client address
    (`s-<tag>-<random>`, the tag a keyed hash of the address), else the session itself (an API
    key, a session a key minted, an id from before sessions were signed)."""
    parts = session_id.split("-")
    if len(parts) == 3 and parts[0] == "s" and parts[1] and parts[2]:
        return f"addr:{parts[1]}"
    return session_id


@dataclass(frozen=True)
class InfluenceConfig:
    """The thresholds (every one recorded in the export manifest)."""

    cap_share: float = 0.02  # one session's share of a night's feedback rows, at most …
    cap_min: int = 20  # … or this many rows, whichever is larger
    origin_cap_share: float = 0.1  # all sessions of one address together, at most …
    origin_cap_min: int = 100  # … or this many rows
    anomaly_filter: bool = True  # leave anomalous sessions' votes out
    read_chars_per_s: float = 60.0  # faster than this is faster than a person reads
    min_read_s: float = 0.5  # even an empty answer takes this long to judge
    min_votes: int = 10  # a session's pattern is judged from this many votes on
    too_fast_share: float = 0.5
    one_sided_min_votes: int = 20
    one_sided_share: float = 0.98
    burst_window_s: float = 60.0
    burst_min: int = 20
    burst_factor: float = 10.0

    def __post_init__(self) -> None:
        checks = [
            (0 <= self.cap_share <= 1, "cap_share", "lie in [0, 1]"),
            (self.cap_min >= 1, "cap_min", "be ≥ 1"),
            (0 <= self.origin_cap_share <= 1, "origin_cap_share", "lie in [0, 1]"),
            (self.origin_cap_min >= 1, "origin_cap_min", "be ≥ 1"),
            (self.read_chars_per_s > 0, "read_chars_per_s", "be > 0"),
            (self.min_votes >= 2, "min_votes", "be ≥ 2"),
            (0 < self.too_fast_share <= 1, "too_fast_share", "lie in (0, 1]"),
            (0.5 < self.one_sided_share <= 1, "one_sided_share", "lie in (0.5, 1]"),
            (self.burst_window_s > 0, "burst_window_s", "be > 0"),
            (self.burst_factor > 1, "burst_factor", "be > 1"),
        ]
        for ok, name, rule in checks:
            if not ok:
                raise InvalidValueError(
                    f"{name} must {rule}, got {getattr(self, name)!r}", field=name
                )

    @classmethod
    def from_settings(cls, settings: Any) -> InfluenceConfig:
        return cls(
            cap_share=settings.influence_cap_share,
            cap_min=settings.influence_cap_min,
            origin_cap_share=settings.influence_origin_cap_share,
            origin_cap_min=settings.influence_origin_cap_min,
            anomaly_filter=settings.anomaly_filter,
            read_chars_per_s=settings.anomaly_read_chars_per_s,
            min_votes=settings.anomaly_min_votes,
        )


@dataclass(frozen=True)
class Vote:
    """One vote: who, when, how long after its answer(s) were ready, and which way."""

    session_id: str
    at: datetime
    shown_at: datetime
    chars: int  # characters there were to read
    side: str  # "1"/"-1" for thumbs; the version voted for, "tie" or "both_bad" in the arena


@dataclass
class Anomalies:
    """Sessions judged anomalous, with their reasons, and the votes that are left out."""

    sessions: dict[str, list[str]] = field(default_factory=dict)
    votes: int = 0  # votes judged
    excluded_votes: int = 0

    def by_reason(self) -> dict[str, int]:
        counts = Counter(reason for reasons in self.sessions.values() for reason in reasons)
        return {reason: counts.get(reason, 0) for reason in REASONS}

    def as_dict(self) -> dict[str, Any]:
        return {
            "sessions": len(self.sessions),
            "by_reason": self.by_reason(),
            "votes_judged": self.votes,
            "votes_excluded": self.excluded_votes,
        }


def read_votes(session: Session, since: datetime | None = None) -> list[Vote]:
    """Every rating and arena verdict (since `since`, by vote time), oldest first."""
    since = as_utc(since) if since is not None else None
    votes: list[Vote] = []
    rating_query = select(
        Rating.session_id,
        Rating.created_at,
        Rating.value,
        Message.created_at,
        Message.latency_ms,
        Message.content,
    ).join(Message, col(Message.id) == col(Rating.message_id))
    if since is not None:
        rating_query = rating_query.where(col(Rating.created_at) >= since)
    for session_id, at, value, stored, latency, content in session.exec(rating_query):
        shown = stored - timedelta(milliseconds=latency or 0)  # it streamed from there
        votes.append(Vote(session_id, at, shown, len(content or ""), str(value)))
    battles = select(Battle).where(col(Battle.voted_at).isnot(None))
    if since is not None:
        battles = battles.where(col(Battle.voted_at) >= since)
    rows = list(session.exec(battles))
    ids = {m for b in rows for m in (b.message_a_id, b.message_b_id)}
    messages = {
        m_id: (content, latency)
        for m_id, content, latency in session.exec(
            select(Message.id, Message.content, Message.latency_ms).where(col(Message.id).in_(ids))
        ).all()
    }
    for battle in rows:
        winner = str(battle.winner)
        side = (
            (battle.version_a or battle.model_a or "a")
            if winner == "a"
            else (battle.version_b or battle.model_b or "b")
            if winner == "b"
            else winner
        )
        sides = [messages.get(m, ("", 0)) for m in (battle.message_a_id, battle.message_b_id)]
        chars = sum(len(content or "") for content, _ in sides)
        streamed = max(latency or 0 for _, latency in sides)
        shown = battle.created_at - timedelta(milliseconds=streamed)
        votes.append(
            Vote(battle.session_id, battle.voted_at or battle.created_at, shown, chars, side)
        )
    votes.sort(key=lambda v: as_utc(v.at))
    return votes


def _peak(times: Sequence[float], window_s: float) -> int:
    """The most votes in any window of `window_s` seconds (times sorted)."""
    best, start = 0, 0
    for end, t in enumerate(times):
        while t - times[start] > window_s:
            start += 1
        best = max(best, end - start + 1)
    return best


def too_fast(votes: Sequence[Vote], config: InfluenceConfig) -> int:
    """How many of one session's votes (oldest first) came sooner than a person reads. A
    person reads one thing at a time: a vote's reading clock starts when its answer was shown
    (streamed to that session) or when the session's previous vote was cast, whichever is
    later — so answers gathered first and voted on later in a rush are still too fast."""
    fast, previous = 0, None
    for vote in sorted(votes, key=lambda v: as_utc(v.at)):
        start = as_utc(vote.shown_at)
        if previous is not None and previous > start:
            start = previous
        need = max(config.min_read_s, vote.chars / config.read_chars_per_s)
        fast += (as_utc(vote.at) - start).total_seconds() < need
        previous = as_utc(vote.at)
    return fast


def find_anomalies(votes: Iterable[Vote], config: InfluenceConfig) -> Anomalies:
    """The sessions that vote like a script (module docstring), with their reasons."""
    by_session: dict[str, list[Vote]] = defaultdict(list)
    for vote in votes:
        by_session[vote.session_id].append(vote)
    out = Anomalies(votes=sum(len(v) for v in by_session.values()))
    if not config.anomaly_filter:
        return out
    by_origin: dict[str, list[float]] = defaultdict(list)
    for sid, mine in by_session.items():
        by_origin[origin_of(sid)].extend(as_utc(v.at).timestamp() for v in mine)
    origin_peaks = {
        o: _peak(sorted(times), config.burst_window_s) for o, times in by_origin.items()
    }
    # The baseline is the median over *origins*: an attacker's many sessions from one address
    # are one origin, so they cannot raise it; it never drops below one vote a window.
    baseline = max(1.0, statistics.median(origin_peaks.values())) if origin_peaks else 1.0
    for sid, mine in by_session.items():
        reasons: list[str] = []
        if len(mine) >= config.min_votes:
            if too_fast(mine, config) >= config.too_fast_share * len(mine):
                reasons.append("too_fast")
            if len(mine) >= config.one_sided_min_votes:
                _, top = Counter(v.side for v in mine).most_common(1)[0]
                if top >= config.one_sided_share * len(mine):
                    reasons.append("one_sided")
        peak = _peak(sorted(as_utc(v.at).timestamp() for v in mine), config.burst_window_s)
        if peak >= config.burst_min and peak >= config.burst_factor * baseline:
            reasons.append("burst")
        if reasons:
            out.sessions[sid] = reasons
            out.excluded_votes += len(mine)
    return out


class Attributed(Protocol):
    @property
    def sessions(self) -> tuple[str, ...]: ...

    @property
    def at(self) -> datetime | None: ...

    @property
    def id(self) -> str: ...


A = TypeVar("A", bound=Attributed)


@dataclass
class CapReport:
    cap: int
    origin_cap: int
    rows: int  # feedback rows before the cap
    sessions: int
    origins: int
    capped_sessions: int
    capped_origins: int
    dropped: int
    largest: int  # the most rows one session kept
    largest_origin: int

    def as_dict(self, config: InfluenceConfig) -> dict[str, Any]:
        kept = self.rows - self.dropped
        return {
            "cap_share": config.cap_share,
            "cap_min": config.cap_min,
            "cap": self.cap,
            "origin_cap": self.origin_cap,
            "rows": self.rows,
            "sessions": self.sessions,
            "origins": self.origins,
            "capped_sessions": self.capped_sessions,
            "capped_origins": self.capped_origins,
            "dropped_by_cap": self.dropped,
            "largest_session_rows": self.largest,
            "largest_session_share": round(self.largest / kept, 4) if kept else 0.0,
            "largest_origin_rows": self.largest_origin,
        }


def cap_rows(groups: Sequence[list[A]], config: InfluenceConfig) -> tuple[list[list[A]], CapReport]:
    """Each group (pairs, unpaired, demonstrations) without the rows over a session's or an
    origin's cap; rows without a session (the seed) pass. Earliest rows are kept first."""
    attributed = [(g, row) for g, rows in enumerate(groups) for row in rows if row.sessions]
    n = len(attributed)
    cap = max(math.ceil(config.cap_share * n), config.cap_min)
    origin_cap = max(math.ceil(config.origin_cap_share * n), config.origin_cap_min)
    per_session: Counter[str] = Counter()
    per_origin: Counter[str] = Counter()
    dropped: set[tuple[int, str]] = set()
    capped: set[str] = set()
    capped_origins: set[str] = set()
    order = sorted(attributed, key=lambda item: (item[1].at is None, item[1].at, item[1].id))
    for g, row in order:
        sessions = set(row.sessions)
        origins = {origin_of(sid) for sid in sessions}
        full = {sid for sid in sessions if per_session[sid] >= cap}
        full_origins = {o for o in origins if per_origin[o] >= origin_cap}
        if full or full_origins:
            dropped.add((g, row.id))
            capped.update(full)
            capped_origins.update(full_origins)
            continue
        per_session.update(sessions)
        per_origin.update(origins)
    out = [[row for row in rows if (g, row.id) not in dropped] for g, rows in enumerate(groups)]
    everyone = {sid for _, row in attributed for sid in row.sessions}
    report = CapReport(
        cap=cap,
        origin_cap=origin_cap,
        rows=n,
        sessions=len(everyone),
        origins=len({origin_of(sid) for sid in everyone}),
        capped_sessions=len(capped),
        capped_origins=len(capped_origins),
        dropped=len(dropped),
        largest=max(per_session.values(), default=0),
        largest_origin=max(per_origin.values(), default=0),
    )
    return out, report
