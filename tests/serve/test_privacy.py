"""What users say stays theirs, over the real HTTP API: a chat with a phone number and a
주민등록번호, rated and exported — neither number in any exported or training file, the
placeholders there instead, the database row intact for its owner, the share link showing
placeholders to everyone else; and retention removing old conversations on the scheduler."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from datetime import timedelta
from pathlib import Path
from typing import Any

import httpx
import pyarrow.parquet as pq

from kindchat.feedback import store
from kindchat.feedback.db import init_db, session_scope
from kindchat.feedback.export import ExportConfig, export_reward_data
from kindchat.feedback.influence import InfluenceConfig
from kindchat.feedback.models import Conversation, Message, Rating, utcnow
from tests.helpers import wait_for

PHONE, RRN = "010-2345-6789", "900101-1234568"
SPELLINGS = (PHONE, "01023456789", "2345-6789", RRN, "9001011234568", "1234568")
ASK = f"택배 주소를 바꾸고 싶어요. 제 번호는 {PHONE}이고 주민번호는 {RRN}이에요"
BETTER = (
    f"네, 주소 변경 도와드릴게요! {PHONE}으로 문자 드릴게요. 주민등록번호는 채팅에 쓰지 마세요."
)


def chat(url: str, user: str, messages: list[dict[str, str]], **extra: Any) -> dict[str, Any]:
    body = {"model": "kindchat-sft", "messages": messages, "max_tokens": 8, "user": user, **extra}
    response = httpx.post(f"{url}/v1/chat/completions", json=body, timeout=120)
    assert response.status_code == 200, response.text
    return response.json()


def rate(url: str, user: str, message_id: str, value: int, better: str | None = None) -> None:
    body = {"message_id": message_id, "rating": value, "session_id": user, "better_answer": better}
    response = httpx.post(f"{url}/v1/feedback", json=body, timeout=30)
    assert response.status_code == 200, response.text


def texts_of(directory: Path) -> str:
    """Every exported file as text: JSON as written, Parquet decoded row by row."""
    parts = []
    for path in sorted(directory.rglob("*")):
        if path.suffix == ".parquet":
            parts.append(json.dumps(pq.read_table(path).to_pylist(), ensure_ascii=False))
        elif path.is_file():
            parts.append(path.read_text("utf-8"))
    return "\n".join(parts)


def test_numbers_never_leave_but_stay_for_their_owner(
    serve: Any, new_session: Any, tmp_path: Path
) -> None:
    with serve() as server:
        url, settings = server.url, server.settings
        me = new_session(url)
        first = chat(url, me, [{"role": "user", "content": ASK}])
        cid = first["conversation_id"]
        answer = first["choices"][0]["message"]["content"]
        rate(url, me, first["id"], -1, better=BETTER)  # a pair (better > answer) and an SFT row
        second = chat(
            url,
            me,
            [
                {"role": "user", "content": ASK},
                {"role": "assistant", "content": answer},
                {"role": "user", "content": "고마워요, 그 번호로 연락 주세요"},
            ],
            conversation_id=cid,
        )
        rate(url, me, second["id"], 1)  # unpaired (KTO), its context holds the numbers

        # The owner sees what they wrote.
        mine = httpx.get(f"{url}/v1/conversations/{cid}", params={"user": me}).json()
        assert mine["messages"][0]["content"] == ASK
        with session_scope(init_db(settings)) as session:
            stored = store.list_messages(session=session, conversation_id=cid, limit=10)
            assert stored[0].content == ASK  # the database keeps the words, for their owner

        # A share link shows placeholders to everyone else (title included).
        link = httpx.post(f"{url}/v1/conversations/{cid}/share", json={"user": me}).json()
        page = httpx.get(link["url"]).text
        shared = httpx.get(f"{url}/v1/shared/{link['token']}").json()
        shown = page + json.dumps(shared, ensure_ascii=False)
        assert "&lt;전화번호&gt;" in page and "&lt;주민등록번호&gt;" in page
        assert shared["messages"][0]["content"] == (
            "택배 주소를 바꾸고 싶어요. 제 번호는 <전화번호>이고 주민번호는 <주민등록번호>이에요"
        )
        assert not [s for s in SPELLINGS if s in shown]

    # Exported as kindchat's files and as datasets; and as a night trains on it.
    # (min_answer_chars 0: the micro model's sampled answer may be a word or two)
    config = ExportConfig(
        include_seed=False,
        min_answer_chars=0,
        influence=InfluenceConfig(anomaly_filter=False),
    )
    with session_scope(init_db(settings)) as session:
        report = export_reward_data(
            session=session, data_dir=settings.data_dir, out_dir=tmp_path / "json", config=config
        )
    assert report.train + report.test >= 1 and report.unpaired >= 1
    assert report.demonstrations == 1
    env = {
        **os.environ,
        "KINDCHAT_HOME": str(settings.home),
        "KINDCHAT_DATA_DIR": str(settings.data_dir),
    }
    done = subprocess.run(
        [sys.executable, "-m", "kindchat", "feedback", "export", str(tmp_path / "hf"), "--format",
         "hf", "--no-seed", "--min-answer-chars", "0"],
        capture_output=True, text=True, env=env, timeout=300,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    for out in (tmp_path / "json", tmp_path / "hf"):
        exported = texts_of(out)
        assert not [s for s in SPELLINGS if s in exported], out
        assert "<전화번호>" in exported and "<주민등록번호>" in exported
        manifest = json.loads((out / "manifest.json").read_text("utf-8"))
        assert manifest["personal_data"]["phone"] >= 3 and manifest["personal_data"]["rrn"] >= 1
    card = (tmp_path / "hf" / "README.md").read_text("utf-8")
    assert "| phone |" in card and "| rrn |" in card

    # Nothing of it was lost: the owner's rows are as they were written.
    with session_scope(init_db(settings)) as session:
        assert session.get(Message, first["user_message_id"]).content == ASK  # type: ignore[union-attr]


def test_retention_removes_old_conversations_on_the_scheduler(
    serve: Any, new_session: Any, micro_copy: Any
) -> None:
    # An old conversation, rated, and a fresh one: retention keeps the fresh one only.
    with session_scope(init_db(micro_copy)) as session:
        old = store.create_conversation(session=session, session_id="someone")
        store.record_message(session=session, conversation_id=old.id, role="user", content="안녕")
        answer = store.record_message(
            session=session, conversation_id=old.id, role="assistant", content="안녕하세요!"
        )
        store.rate(session=session, message_id=answer.id, session_id="someone", value=1)
        row = session.get(Conversation, old.id)
        assert row is not None
        row.created_at = row.updated_at = utcnow() - timedelta(days=40)
        session.add(row)
    old_run = micro_copy.runs_dir / "cycle-old" / "data"  # a night's training files, 40 days old
    new_run = micro_copy.runs_dir / "cycle-new" / "data"
    for data in (old_run, new_run):
        data.mkdir(parents=True)
        (data / "train.json").write_text("[]", encoding="utf-8")
    stale = (utcnow() - timedelta(days=40)).timestamp()
    os.utime(old_run, (stale, stale))
    with serve(micro_copy, retention_days=30, retention_check_s=0.5) as server:
        scheduler = server.server.config.app.state.scheduler
        assert scheduler is not None and not scheduler.is_leader  # retention alone: no lead
        me = new_session(server.url)
        fresh = chat(server.url, me, [{"role": "user", "content": "오늘 날씨 어때?"}])

        def gone() -> bool:
            with session_scope(init_db(server.settings)) as session:
                return session.get(Conversation, old.id) is None

        wait_for("retention to remove the old conversation", gone, timeout=30)
        with session_scope(init_db(server.settings)) as session:
            assert session.get(Message, answer.id) is None
            assert not session.exec(
                Rating.__table__.select().where(Rating.message_id == answer.id)  # type: ignore[attr-defined]
            ).all()
            assert session.get(Conversation, fresh["conversation_id"]) is not None
        assert not old_run.exists() and (new_run / "train.json").exists()


def test_purge_from_the_command_line(micro_copy: Any) -> None:
    env = {
        **os.environ,
        "KINDCHAT_HOME": str(micro_copy.home),
        "KINDCHAT_DATA_DIR": str(micro_copy.data_dir),
    }
    refused = subprocess.run(
        [sys.executable, "-m", "kindchat", "feedback", "purge"],
        capture_output=True, text=True, env=env, timeout=120,
    )  # fmt: skip
    assert refused.returncode == 2 and "--days" in refused.stderr
    assert "Traceback" not in refused.stderr
    done = subprocess.run(
        [sys.executable, "-m", "kindchat", "feedback", "purge", "--days", "7"],
        capture_output=True, text=True, env=env, timeout=120,
    )  # fmt: skip
    assert done.returncode == 0 and "removed 0 conversation(s)" in done.stdout, done.stderr
