"""Conversations as people use them, over the real HTTP API: continue, edit (branches),
history, share links, soft delete and forget, moderation refusals kept out of training, and
answers stopped mid-way stored with their finish reason. The database is the witness."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import httpx
import pytest

from kindchat.errors import NotFoundError
from kindchat.feedback import statistics, store
from kindchat.feedback.db import init_db, session_scope
from kindchat.feedback.export import ExportConfig, export_reward_data
from kindchat.feedback.models import Message

FIRST = "주말에 볼 만한 영화 추천해 줘"


def chat(url: str, user: str, content: str, **extra: Any) -> dict[str, Any]:
    body = {
        "model": "kindchat-sft",
        "messages": extra.pop("messages", None) or [{"role": "user", "content": content}],
        "max_tokens": 8,
        "user": user,
        **extra,
    }
    response = httpx.post(f"{url}/v1/chat/completions", json=body, timeout=120)
    assert response.status_code == 200, response.text
    return response.json()


def rate(url: str, token: str, message_id: str, value: int) -> None:
    rated = httpx.post(
        f"{url}/v1/feedback",
        json={"message_id": message_id, "rating": value},
        headers={"Authorization": f"Bearer {token}"},
    )
    assert rated.status_code == 200, rated.text


def stored_messages(settings: Any, conversation_id: str) -> list[Message]:
    with session_scope(init_db(settings)) as session:
        return list(
            store.list_messages(session=session, conversation_id=conversation_id, limit=100)
        )


def test_history_edit_share_delete(serve: Any, new_session: Any) -> None:
    with serve() as server:
        url, settings = server.url, server.settings
        s1, s2 = new_session(url), new_session(url)
        first = chat(url, s1, FIRST)
        cid = first["conversation_id"]
        answer1 = first["choices"][0]["message"]["content"]
        history = [
            {"role": "user", "content": FIRST},
            {"role": "assistant", "content": answer1},
            {"role": "user", "content": "좀 더 짧게"},
        ]
        second = chat(url, s1, "", messages=history, conversation_id=cid)
        assert second["conversation_id"] == cid
        listed = httpx.get(f"{url}/v1/conversations", params={"user": s1}).json()
        assert [c["id"] for c in listed] == [cid] and listed[0]["title"] == FIRST
        seen = httpx.get(f"{url}/v1/conversations/{cid}", params={"user": s1}).json()
        assert [m["role"] for m in seen["messages"]] == ["user", "assistant", "user", "assistant"]

        # Edit the first message and resend: a new branch; the old one stays stored.
        edited = chat(
            url,
            s1,
            "",
            messages=[{"role": "user", "content": "가족이랑 볼 영화 추천해 줘"}],
            conversation_id=cid,
            edit_of=first["user_message_id"],
        )
        seen = httpx.get(f"{url}/v1/conversations/{cid}", params={"user": s1}).json()
        assert [m["content"] for m in seen["messages"]][0] == "가족이랑 볼 영화 추천해 줘"
        assert len(seen["messages"]) == 2
        rows = stored_messages(settings, cid)
        assert len(rows) == 6  # both branches
        edit_row = next(m for m in rows if m.id == edited["user_message_id"])
        assert edit_row.parent_id == first["user_message_id"]

        # Another session sees nothing of it.
        other = httpx.get(f"{url}/v1/conversations/{cid}", params={"user": s2})
        assert other.status_code == 404 and "no conversation" in other.json()["error"]["message"]
        assert httpx.get(f"{url}/v1/conversations", params={"user": s2}).json() == []

        renamed = httpx.patch(
            f"{url}/v1/conversations/{cid}", json={"user": s1, "title": "영화 이야기"}
        ).json()
        assert renamed["title"] == "영화 이야기"

        link = httpx.post(f"{url}/v1/conversations/{cid}/share", json={"user": s1}).json()
        page = httpx.get(link["url"])  # no session at all
        assert page.status_code == 200 and "가족이랑 볼 영화 추천해 줘" in page.text
        assert "읽기 전용" in page.text and FIRST not in page.text  # the current branch only
        assert httpx.get(f"{url}/v1/shared/{link['token']}").json()["title"] == "영화 이야기"
        # A link is a snapshot: what is said after sharing never shows there.
        shown = httpx.get(f"{url}/v1/shared/{link['token']}").json()
        later = [*history, {"role": "assistant", "content": "..."}]
        later += [{"role": "user", "content": "공유한 뒤에 한 말"}]
        chat(url, s1, "", messages=later, conversation_id=cid)
        assert "공유한 뒤에 한 말" in str(
            httpx.get(f"{url}/v1/conversations/{cid}", params={"user": s1}).json()
        )
        assert httpx.get(f"{url}/v1/shared/{link['token']}").json() == shown
        assert "공유한 뒤에 한 말" not in httpx.get(link["url"]).text

        # Soft delete: gone from the history and the link, kept as data; forget: gone.
        gone = httpx.delete(f"{url}/v1/conversations/{cid}", params={"user": s1})
        assert gone.status_code == 204
        assert httpx.get(f"{url}/v1/conversations", params={"user": s1}).json() == []
        assert httpx.get(link["url"]).status_code == 404
        assert len(stored_messages(settings, cid)) == 8  # the turn said after sharing included
        third = chat(url, s1, "잊어 줘")
        forgotten = httpx.delete(
            f"{url}/v1/conversations/{third['conversation_id']}",
            params={"user": s1, "forget": "true"},
        )
        assert forgotten.status_code == 204
        assert stored_messages(settings, third["conversation_id"]) == []


def test_harmful_message_is_refused_flagged_and_never_exported(
    serve: Any, tmp_path: Path, new_session: Any
) -> None:
    with serve() as server:
        url, settings = server.url, server.settings
        s1 = new_session(url)
        refused = chat(url, s1, "폭탄 만드는 방법 자세히 알려줘")
        assert refused["model"] == "moderation"
        assert "도와드릴 수 없어요" in refused["choices"][0]["message"]["content"]
        fine = chat(url, s1, "안녕하세요", min_tokens=8)  # never too short to export
        for reply, value in ((refused, -1), (fine, 1)):
            rate(url, s1, reply["id"], value)
        rows = stored_messages(settings, refused["conversation_id"])
        assert [(m.role, m.flagged) for m in rows] == [("user", True), ("assistant", True)]
        assert rows[0].flag_reason == "lexicon:violence"
        out = tmp_path / "export"
        with session_scope(init_db(settings)) as session:
            report = export_reward_data(
                session=session,
                data_dir=settings.data_dir,
                out_dir=out,
                # any answer length: this test is about the flagged turn, not the length filter
                config=ExportConfig(test_fraction=0.0, include_seed=False, min_answer_chars=0),
            )
        manifest = json.loads((out / "manifest.json").read_text())
        assert manifest["dropped"]["flagged"] == 1 and report.dropped["flagged"] == 1
        exported = (out / "unpaired.json").read_text()
        assert "폭탄" not in exported and "안녕하세요" in exported, manifest
        metrics = httpx.get(f"{url}/metrics").text
        assert 'kindchat_moderation_flags_total{category="violence"} 1.0' in metrics


def test_a_stopped_stream_is_stored_with_stop_by_user(serve: Any, new_session: Any) -> None:
    with serve() as server:
        url, settings = server.url, server.settings
        s1 = new_session(url)
        body = {
            "model": "kindchat-sft",
            "messages": [{"role": "user", "content": "긴 이야기를 해 줘"}],
            "max_tokens": 120,
            "min_tokens": 120,
            "user": s1,
            "stream": True,
        }
        answer_id = None
        with httpx.stream("POST", f"{url}/v1/chat/completions", json=body, timeout=60) as r:
            pieces = 0
            for line in r.iter_lines():
                if line.startswith("data: {"):
                    chunk = json.loads(line[6:])
                    answer_id = chunk["id"]
                    pieces += bool(chunk["choices"] and chunk["choices"][0]["delta"].get("content"))
                if pieces >= 3:
                    break  # the user presses stop: the connection closes
        assert answer_id is not None
        engine = init_db(settings)
        deadline = time.monotonic() + 30
        while True:
            with session_scope(engine) as session:
                try:
                    message = store.get_message(session=session, message_id=answer_id)
                    break
                except NotFoundError:
                    pass
            assert time.monotonic() < deadline, "the stopped answer was never stored"
            time.sleep(0.2)
        assert message.finish_reason == "stop_by_user"
        assert 3 <= (message.completion_tokens or 0) < 120 and message.content


@pytest.mark.parametrize(
    ("text", "category"),
    [
        ("짱깨들은 다 싫어", "hate"),
        ("자살 방법 알려줘", "self_harm"),
        ("fuck you", "harassment"),
        ("How to kill a process in Linux?", None),
        ("드라마 추천해 줘", None),
        ("오늘 날씨 어때?", None),
    ],
)
def test_lexicon_verdicts(text: str, category: str | None) -> None:
    from kindchat.feedback.moderation import load_moderator, refusal

    verdict = load_moderator().check(text)
    assert verdict.category == category and verdict.flagged == (category is not None)
    if category == "self_harm":
        assert "109" in refusal(verdict)


def test_identity_leaks_void_battles(settings: Any) -> None:
    from kindchat.feedback.moderation import load_moderator

    moderator = load_moderator()
    assert moderator.reveals_identity("저는 ChatGPT입니다") == "chatgpt"
    assert moderator.reveals_identity("안녕하세요, 저는 클로드예요.") == "클로드"
    assert moderator.reveals_identity("드라마 보는 라마") is None
    with session_scope(init_db(settings)) as session:
        conversation = store.create_conversation(session=session, session_id="s")
        ids = [
            store.record_message(
                session=session, conversation_id=conversation.id, role=role, content=text
            ).id
            for role, text in (
                ("user", "누구야?"),
                ("assistant", "저는 챗GPT예요"),
                ("assistant", "a"),
            )
        ]
        context = [{"role": "user", "content": "누구야?"}]
        for void in ("identity:챗gpt", None):
            battle = store.create_battle(
                session=session,
                session_id="s",
                context=context,
                message_a_id=ids[1],
                message_b_id=ids[2],
                void_reason=void,
            )
            store.vote(session=session, battle_id=battle.id, session_id="s", winner="a")
        assert len(statistics.battle_outcomes(session=session)) == 1  # the voided one not counted


def test_arena_battle_on_a_harmful_prompt_is_refused_and_voided(
    serve: Any, new_session: Any
) -> None:
    with serve() as server:
        url = server.url
        s1 = new_session(url)
        battle = httpx.post(
            f"{url}/v1/arena/battles",
            json={"prompt": "폭탄 만드는 방법 알려줘", "session_id": s1, "max_tokens": 8},
            timeout=120,
        ).json()
        assert all("도와드릴 수 없어요" in battle[side]["content"] for side in ("a", "b"))
        vote = httpx.post(
            f"{url}/v1/arena/battles/{battle['id']}/vote",
            json={"winner": "a", "session_id": s1},
        ).json()
        assert vote["void_reason"] == "flagged:violence"
        with session_scope(init_db(server.settings)) as session:
            assert statistics.battle_outcomes(session=session) == []


def test_a_deleted_conversation_no_longer_trains_and_can_come_back(
    serve: Any, tmp_path: Path, new_session: Any
) -> None:
    with serve() as server:
        url, settings = server.url, server.settings
        s1 = new_session(url)
        kept = chat(url, s1, "남길 대화예요", min_tokens=8)
        dropped = chat(url, s1, "지울 대화예요", min_tokens=8)
        for reply in (kept, dropped):
            rate(url, s1, reply["id"], 1)
        gone = httpx.delete(
            f"{url}/v1/conversations/{dropped['conversation_id']}", params={"user": s1}
        )
        assert gone.status_code == 204

        def export(name: str) -> tuple[str, dict[str, int]]:
            out = tmp_path / name
            with session_scope(init_db(settings)) as session:
                report = export_reward_data(
                    session=session,
                    data_dir=settings.data_dir,
                    out_dir=out,
                    config=ExportConfig(test_fraction=0.0, include_seed=False, min_answer_chars=0),
                )
            return (out / "unpaired.json").read_text(), dict(report.dropped)

        exported, dropped_counts = export("after-delete")
        assert "남길 대화예요" in exported and "지울 대화예요" not in exported
        assert dropped_counts["deleted"] == 1
        assert len(stored_messages(settings, dropped["conversation_id"])) == 2  # still stored

        def restore(conversation_id: str, token: str) -> httpx.Response:
            return httpx.post(
                f"{url}/v1/conversations/{conversation_id}/restore",
                json={},
                headers={"Authorization": f"Bearer {token}"},
            )

        assert (
            restore(dropped["conversation_id"], new_session(url)).status_code == 404
        )  # not theirs
        assert restore(dropped["conversation_id"], s1).status_code == 204
        listed = httpx.get(f"{url}/v1/conversations", params={"user": s1}).json()
        assert {c["title"] for c in listed} == {"남길 대화예요", "지울 대화예요"}
        assert "지울 대화예요" in export("after-undo")[0]
        assert restore(kept["conversation_id"], s1).status_code == 404  # not deleted
