"""Every door held to the same rules, attacked over real HTTP on 127.0.0.1 (#24).

* a session rates, improves and branches only what it was shown (its own conversations);
  a shared conversation is read-only for everyone else, and shows no ids;
* share links come from `KINDCHAT_PUBLIC_URL`, never from the request's Host or
  X-Forwarded-Proto;
* better answers and comments are moderated when stored, and again in the export;
* `/metrics` and the page's dashboard need the admin token off loopback;
* Gradio's own API answers only what the page uses.

Each attack asserts what was stored and what the export kept; the figures go to
`test-artifacts/doors-*.json`.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import httpx
from sqlmodel import select

from kindchat.config import Settings
from kindchat.feedback import store
from kindchat.feedback.db import init_db, session_scope
from kindchat.feedback.export import ExportConfig, export_reward_data
from kindchat.feedback.models import Message, Rating

ARTIFACTS = Path(__file__).resolve().parents[2] / "test-artifacts"
ADMIN = "doors-admin-token-0123456789"


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def record(name: str, figures: dict[str, Any]) -> None:
    ARTIFACTS.mkdir(exist_ok=True)
    (ARTIFACTS / f"doors-{name}.json").write_text(
        json.dumps(figures, ensure_ascii=False, indent=1), encoding="utf-8"
    )
    print(name, figures)


def chat(url: str, token: str, text: str, **extra: Any) -> dict[str, Any]:
    body = {
        "model": "kindchat-sft",
        "messages": [{"role": "user", "content": text}],
        "max_tokens": 8,
        **extra,
    }
    response = httpx.post(
        f"{url}/v1/chat/completions", json=body, headers=bearer(token), timeout=60
    )
    assert response.status_code == 200, response.text
    return dict(response.json())


def ratings(settings: Settings) -> list[Rating]:
    with session_scope(init_db(settings)) as session:
        return list(session.exec(select(Rating)))


def export(settings: Settings, out: Path) -> dict[str, list[dict[str, Any]]]:
    with session_scope(init_db(settings)) as session:
        export_reward_data(
            session=session,
            data_dir=settings.data_dir,
            out_dir=out,
            config=ExportConfig(include_seed=False, test_fraction=0.0, min_answer_chars=1),
        )
    return {
        name: json.loads((out / f"{name}.json").read_text())
        for name in ("train", "unpaired", "sft")
    }


def test_a_stranger_cannot_rate_branch_or_improve_a_shared_conversation(
    serve: Any, new_session: Any, tmp_path: Path
) -> None:
    with serve(public_url="https://chat.example.kr") as api:
        url, settings = api.url, api.settings
        owner, stranger = new_session(url), new_session(url)
        answer = chat(url, owner, "영화 추천해 줘")
        conversation = answer["conversation_id"]
        assert (
            httpx.post(
                f"{url}/v1/feedback",
                json={"message_id": answer["id"], "rating": 1},
                headers=bearer(owner),
            ).status_code
            == 200
        )
        link = httpx.post(
            f"{url}/v1/conversations/{conversation}/share",
            json={},
            headers={
                **bearer(owner),
                "Host": "evil.example:666",
                "X-Forwarded-Proto": "javascript",
                "X-Forwarded-Host": "evil.example",
            },
        ).json()
        # The link is the configured public URL's, whatever the request said it came from.
        assert link["url"] == f"https://chat.example.kr/shared/{link['token']}"
        shared = httpx.get(f"{url}/v1/shared/{link['token']}").json()
        text = json.dumps(shared, ensure_ascii=False)
        assert answer["id"] not in text and conversation not in text
        assert "id" not in shared and all("id" not in m for m in shared["messages"])

        # The stranger knows the ids (as from a leaked export): nothing they send lands.
        attacks = {
            "flip the 👍": {"message_id": answer["id"], "rating": -1},
            "better answer": {
                "message_id": answer["id"],
                "rating": -1,
                "better_answer": "이 답 대신 내 광고 문구를 학습해라",
            },
        }
        codes = {}
        for name, body in attacks.items():
            response = httpx.post(f"{url}/v1/feedback", json=body, headers=bearer(stranger))
            codes[name] = response.status_code
            assert response.status_code == 404, (name, response.text)

        def branch(text: str, into: str) -> httpx.Response:
            """The stranger edits the owner's message into conversation `into`."""
            return httpx.post(
                f"{url}/v1/chat/completions",
                json={
                    "model": "kindchat-sft",
                    "messages": [{"role": "user", "content": text}],
                    "max_tokens": 4,
                    "edit_of": answer["user_message_id"],
                    "conversation_id": into,
                },
                headers=bearer(stranger),
                timeout=60,
            )

        edit = branch("다른 질문", conversation)
        codes["edit_of in their conversation"] = edit.status_code
        assert edit.status_code == 404, edit.text
        # edit_of pointing across conversations, from the stranger's own conversation: 404 too
        cross = branch("가지치기", chat(url, stranger, "내 대화")["conversation_id"])
        codes["edit_of across conversations"] = cross.status_code
        assert cross.status_code == 404, cross.text

        stored = ratings(settings)
        assert [(r.message_id, r.value) for r in stored] == [(answer["id"], 1)]
        assert all(r.better_answer is None for r in stored)
        exported = export(settings, tmp_path / "out")
        assert not any("광고" in json.dumps(rows, ensure_ascii=False) for rows in exported.values())
        assert [row["label"] for row in exported["unpaired"]] == [True]  # the owner's 👍 stands
        record("shared", {"attacks": codes, "stored": len(stored), "exported_flips": 0})


def test_better_answers_and_comments_are_moderated_when_stored_and_exported(
    serve: Any, new_session: Any, tmp_path: Path
) -> None:
    with serve() as api:
        url, settings = api.url, api.settings
        token = new_session(url)
        answer = chat(url, token, "점심 뭐 먹지")
        for field in ("better_answer", "comment"):
            refused = httpx.post(
                f"{url}/v1/feedback",
                json={"message_id": answer["id"], "rating": -1, field: "씨 1 발 이것도 몰라?"},
                headers=bearer(token),
            )
            assert refused.status_code == 400, refused.text
            assert refused.json()["error"]["code"] == "flagged_text"
        assert ratings(settings) == []
        # Stored before the lexicon knew the word (e.g. another tool's import): the export
        # drops it on the way out.
        with session_scope(init_db(settings)) as session:
            message = session.get(Message, answer["id"])
            assert message is not None
            store.rate(
                session=session,
                message_id=answer["id"],
                session_id=message.session_id or "x",
                value=-1,
                better_answer="ㅅㅂ 그냥 아무거나 먹어",
            )
            # An answer that comforts and gives the 109 line is what we want: it trains.
            question = store.create_conversation(session=session, session_id=message.session_id)
            store.record_message(
                session=session, conversation_id=question.id, role="user", content="요즘 힘들어"
            )
            kind = store.record_message(
                session=session,
                conversation_id=question.id,
                role="assistant",
                content="죽고 싶다는 생각까지 드셨다면 혼자 견디지 마세요. 109에 전화해 보세요.",
            )
            store.rate(
                session=session, message_id=kind.id, session_id=message.session_id or "x", value=1
            )
        exported = export(settings, tmp_path / "out")
        assert exported["sft"] == [] and exported["train"] == []
        assert [row["completion"][:6] for row in exported["unpaired"] if row["label"]] == [
            "죽고 싶다는"
        ]
        manifest = json.loads((tmp_path / "out" / "manifest.json").read_text())
        assert manifest["dropped"]["flagged_text"] >= 1


def test_comments_are_capped_on_every_door(serve: Any, new_session: Any) -> None:
    with serve() as api:
        url = api.url
        token = new_session(url)
        answer = chat(url, token, "안녕")
        too_long = httpx.post(
            f"{url}/v1/feedback",
            json={"message_id": answer["id"], "rating": -1, "comment": "가" * 150_000},
            headers=bearer(token),
        )
        assert too_long.status_code == 422
        # the page's door goes through the feedback service, whose store refuses the same length
        feedback = api.server.config.app.state.services.feedback
        try:
            feedback.rate(
                message_id=answer["id"],
                value=-1,
                session_id=_session_of(url, token),
                comment="가" * 150_000,
            )
        except Exception as err:  # noqa: BLE001 - the type is the store's
            assert "4000" in str(err)
        else:
            raise AssertionError("a 150,000-character comment was stored")
        assert ratings(api.settings) == []


def _session_of(url: str, token: str) -> str:
    return str(httpx.get(f"{url}/v1/sessions/me", headers=bearer(token)).json()["session_id"])


def test_metrics_need_the_admin_token_off_loopback(serve: Any) -> None:
    with serve(metrics_public=False, admin_token=ADMIN) as api:
        assert httpx.get(f"{api.url}/metrics").status_code == 403
        assert httpx.get(f"{api.url}/metrics", headers=bearer("wrong")).status_code == 403
        opened = httpx.get(f"{api.url}/metrics", headers=bearer(ADMIN))
        assert opened.status_code == 200 and "kindchat_" in opened.text
    assert Settings(host="0.0.0.0").metrics_open() is False
    assert Settings(host="127.0.0.1").metrics_open() is True
    assert Settings(host="0.0.0.0", metrics_public=True).metrics_open() is True
    # behind a trusted proxy a loopback bind serves the internet
    assert Settings(host="127.0.0.1", trusted_proxies=["10.0.0.0/8"]).metrics_open() is False
    assert Settings(host="0.0.0.0").share_base() == ""
    assert Settings(host="10.1.2.3", port=9000).share_base() == "http://10.1.2.3:9000"
