"""One person, one voice: scripted sessions are left out of the export, and no session holds
more than its cap of the rows, whatever else it does; honest sessions keep every row."""

from __future__ import annotations

import json
import math
from datetime import timedelta
from pathlib import Path

import pytest
from sqlalchemy import Engine
from sqlmodel import Session, update

from kindchat.config import Settings
from kindchat.feedback import store
from kindchat.feedback.db import init_db, session_scope
from kindchat.feedback.export import ExportConfig, export_reward_data
from kindchat.feedback.influence import InfluenceConfig, find_anomalies, read_votes
from kindchat.feedback.models import Message, Rating, utcnow

T0 = utcnow() - timedelta(days=1)
ANSWER = "좋은 질문이에요! 천천히 같이 생각해 봐요. 먼저 무엇이 궁금한지 말해 줄래요?"


def answered(session: Session, who: str, i: int, at: float) -> str:
    """A question of `who` and its answer, the answer ready `at` seconds after T0."""
    conversation = store.create_conversation(session=session, session_id=who)
    question = store.record_message(
        session=session,
        conversation_id=conversation.id,
        role="user",
        content=f"{who}의 {i}번째 질문: 주말에 뭐 할까요?",
        session_id=who,
    )
    message = store.record_message(
        session=session,
        conversation_id=conversation.id,
        role="assistant",
        content=f"{ANSWER} ({who} {i})",
        session_id=who,
    )
    for row, seconds in ((question, at - 5), (message, at)):
        session.exec(
            update(Message)
            .where(Message.id == row.id)  # type: ignore[arg-type]
            .values(created_at=T0 + timedelta(seconds=seconds))
        )
    session.commit()
    return message.id


def rate(session: Session, who: str, message_id: str, value: int, at: float) -> None:
    """`who` rates `message_id` `at` seconds after T0."""
    store.rate(session=session, message_id=message_id, session_id=who, value=value)
    when = T0 + timedelta(seconds=at)
    session.exec(
        update(Rating)
        .where(Rating.message_id == message_id, Rating.session_id == who)  # type: ignore[arg-type]
        .values(created_at=when, updated_at=when)
    )
    session.commit()


def honest(engine: Engine, people: int, each: int) -> None:
    """People who read (10 s per answer), vote both ways, now and then."""
    with session_scope(engine) as session:
        for p in range(people):
            for i in range(each):
                start = p * 7 + i * 300.0
                message = answered(session, f"person-{p}", i, start)
                rate(session, f"person-{p}", message, 1 if (p + i) % 3 else -1, start + 10)


def scripted(
    engine: Engine, who: str, n: int, *, gap: float, read: float, value: int, offset: float = 0
) -> None:
    """One session voting `n` times, `gap` seconds apart, `read` seconds after each answer."""
    with session_scope(engine) as session:
        for i in range(n):
            start = 5000 + offset + i * gap
            message = answered(session, who, i, start)
            rate(session, who, message, value if value else (1 if i % 2 else -1), start + read)


def export(settings: Settings, engine: Engine, out: Path, **influence: object) -> dict:
    config = ExportConfig(
        test_fraction=0.0,
        include_seed=False,
        min_answer_chars=1,
        influence=InfluenceConfig(**influence),  # type: ignore[arg-type]
    )
    with session_scope(engine) as session:
        export_reward_data(session=session, data_dir=settings.data_dir, out_dir=out, config=config)
    return dict(json.loads((out / "manifest.json").read_text()))


def rows_of(out: Path, who: str) -> int:
    rows = json.loads((out / "unpaired.json").read_text())
    return sum(f"({who} " in row["completion"] for row in rows)


@pytest.mark.slow  # hundreds of stored votes, then an export (2-3 s)
def test_the_cap_holds_for_a_session_that_votes_like_a_person(
    settings: Settings, tmp_path: Path
) -> None:
    """A patient attacker (reads before each vote, both ways, slow): not anomalous, but capped."""
    engine = init_db(settings)
    honest(engine, people=40, each=3)
    scripted(engine, "patient", 300, gap=120, read=12, value=0)
    manifest = export(settings, engine, tmp_path / "out")
    total = 40 * 3 + 300
    cap = max(math.ceil(0.02 * total), 20)
    influence = manifest["influence"]
    assert influence["cap"] == cap and influence["rows"] == total
    assert influence["anomalous"]["sessions"] == 0
    assert rows_of(tmp_path / "out", "patient") == cap  # 300 given, `cap` kept
    assert influence["capped_sessions"] == 1 and influence["dropped_by_cap"] == 300 - cap
    assert manifest["dropped"]["influence_cap"] == 300 - cap
    for p in range(40):  # every honest row is kept
        assert rows_of(tmp_path / "out", f"person-{p}") == 3
    assert influence["largest_session_rows"] == cap
    assert influence["largest_session_share"] <= cap / (40 * 3 + cap) + 1e-4


def test_scripted_sessions_are_left_out_with_their_reasons(
    settings: Settings, tmp_path: Path
) -> None:
    engine = init_db(settings)
    honest(engine, people=30, each=2)
    scripted(engine, "speed-reader", 15, gap=30, read=0.2, value=0)  # no time to read
    scripted(engine, "always-up", 25, gap=40, read=15, value=1)  # one side, always
    scripted(engine, "burst", 40, gap=0.5, read=0.1, value=0)  # 40 votes in 20 s
    with session_scope(engine) as session:
        found = find_anomalies(read_votes(session), InfluenceConfig())
    assert found.sessions == {
        "speed-reader": ["too_fast"],
        "always-up": ["one_sided"],
        "burst": ["too_fast", "burst"],
    }
    manifest = export(settings, engine, tmp_path / "out")
    anomalous = manifest["influence"]["anomalous"]
    assert anomalous["sessions"] == 3
    assert anomalous["by_reason"] == {"too_fast": 2, "one_sided": 1, "burst": 1}
    assert anomalous["votes_excluded"] == 15 + 25 + 40
    assert manifest["dropped"]["anomalous_session"] == 15 + 25 + 40
    for who in ("speed-reader", "always-up", "burst"):
        assert rows_of(tmp_path / "out", who) == 0
    assert sum(rows_of(tmp_path / "out", f"person-{p}") for p in range(30)) == 60

    # Switched off, the same votes train (still under the cap).
    manifest = export(settings, engine, tmp_path / "off", anomaly_filter=False)
    assert manifest["influence"]["anomalous"]["sessions"] == 0
    assert rows_of(tmp_path / "off", "speed-reader") == 15
    assert rows_of(tmp_path / "off", "always-up") == 20  # 25 given, capped at cap_min
    assert rows_of(tmp_path / "off", "burst") == 20


def test_a_few_fast_honest_votes_are_not_judged(settings: Settings, tmp_path: Path) -> None:
    """Below `min_votes` a session's pattern is not judged: a quick 👍 now and then is fine."""
    engine = init_db(settings)
    honest(engine, people=10, each=2)
    scripted(engine, "quick", 9, gap=60, read=0.1, value=1)
    manifest = export(settings, engine, tmp_path / "out")
    assert manifest["influence"]["anomalous"]["sessions"] == 0
    assert rows_of(tmp_path / "out", "quick") == 9


@pytest.mark.slow  # hundreds of stored votes, then an export (2-3 s)
def test_many_sessions_of_one_address_are_capped_together(
    settings: Settings, tmp_path: Path
) -> None:
    """Sessions minted for one address carry its tag (`s-<tag>-<random>`): 30 of them, each
    under its own cap, still give at most the origin's cap together."""
    engine = init_db(settings)
    honest(engine, people=40, each=2)
    for k in range(30):
        # staggered (one every 6.5 s) so that the origin's busiest minute stays under `burst_min`
        scripted(engine, f"s-0a0a0a0a0a0a-{k:04d}", 8, gap=200, read=20, value=0, offset=k * 6.5)
    manifest = export(settings, engine, tmp_path / "out", origin_cap_min=60)
    assert manifest["influence"]["anomalous"]["sessions"] == 0
    influence = manifest["influence"]
    assert influence["origin_cap"] == 60 and influence["capped_origins"] == 1
    sybils = sum(rows_of(tmp_path / "out", f"s-0a0a0a0a0a0a-{k:04d}") for k in range(30))
    assert sybils == 60  # 240 given
    assert sum(rows_of(tmp_path / "out", f"person-{p}") for p in range(40)) == 80


def test_answers_gathered_first_and_voted_in_a_rush_are_too_fast(
    settings: Settings, tmp_path: Path
) -> None:
    """Reading time runs from the session's previous vote too: 25 answers streamed first, then
    rated one every 0.2 s minutes later, are judged `too_fast` (timed from the answers alone,
    each vote would look like minutes of reading)."""
    engine = init_db(settings)
    honest(engine, people=10, each=2)
    with session_scope(engine) as session:
        ids = [answered(session, "hoarder", i, 5000 + i) for i in range(25)]
        for i, message in enumerate(ids):
            rate(session, "hoarder", message, -1 if i % 2 else 1, 5600 + i * 0.2)
    manifest = export(settings, engine, tmp_path / "out")
    assert manifest["influence"]["anomalous"]["by_reason"]["too_fast"] == 1
    assert rows_of(tmp_path / "out", "hoarder") == 0


@pytest.mark.slow  # hundreds of stored votes, then an export (2-3 s)
def test_the_burst_baseline_is_over_origins(settings: Settings, tmp_path: Path) -> None:
    """Ten sessions of one address each voting 25 times in a minute set their own median if
    the baseline were over sessions; over origins they are one origin, judged `burst`."""
    engine = init_db(settings)
    honest(engine, people=5, each=2)
    for k in range(10):
        scripted(engine, f"s-0b0b0b0b0b0b-{k:04d}", 25, gap=2, read=30, value=0, offset=k * 0.1)
    manifest = export(settings, engine, tmp_path / "out")
    anomalous = manifest["influence"]["anomalous"]
    assert anomalous["by_reason"]["burst"] == 10 and anomalous["sessions"] == 10
    assert sum(rows_of(tmp_path / "out", f"s-0b0b0b0b0b0b-{k:04d}") for k in range(10)) == 0


def test_a_busy_shared_address_does_not_make_its_people_a_burst(
    settings: Settings, tmp_path: Path
) -> None:
    """25 people behind one NAT (one origin), each voting once within the same minute, are
    people: the burst rule judges sessions, not their address (the origin cap holds them)."""
    engine = init_db(settings)
    honest(engine, people=10, each=2)
    for k in range(25):
        scripted(engine, f"s-0c0c0c0c0c0c-{k:04d}", 1, gap=1, read=20, value=1, offset=k * 2)
    manifest = export(settings, engine, tmp_path / "out")
    assert manifest["influence"]["anomalous"]["sessions"] == 0
    assert sum(rows_of(tmp_path / "out", f"s-0c0c0c0c0c0c-{k:04d}") for k in range(25)) == 25
