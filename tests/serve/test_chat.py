"""The official `openai` client against kindchat on the micro model: Korean answers, stored."""

from __future__ import annotations

import re
from typing import Any

import httpx
import openai

from kindchat.feedback import store
from kindchat.feedback.db import create_db_engine, database_url, session_scope

HANGUL = re.compile("[가-힣]")
HELLO = [{"role": "user", "content": "안녕하세요"}]


def test_openai_client_non_streaming_and_streaming(serve: Any, new_session: Any) -> None:
    # `nightly` is not in the registry yet: like `rlhf` before the first promotion, its name
    # answers with the next served alias and says so.
    with serve(serve_aliases=["nightly", "sft"]) as api:
        client = openai.OpenAI(base_url=f"{api.url}/v1", api_key="unused")  # open: anonymous
        token = new_session(api.url)
        names = {m.id: m for m in client.models.list().data}
        assert {"kindchat-nightly", "kindchat-sft"} <= set(names)
        sft_version = names["kindchat-sft"].model_extra["version"]
        assert names["kindchat-nightly"].model_extra["version"] == sft_version
        assert "does not exist yet" in names["kindchat-nightly"].model_extra["note"]

        reply = client.chat.completions.create(
            model="kindchat-nightly",
            messages=HELLO,
            max_tokens=16,
            seed=3,
            user=token,
            extra_body={"min_tokens": 16},
        )
        text = reply.choices[0].message.content or ""
        assert HANGUL.search(text), text
        assert reply.model == sft_version and reply.choices[0].finish_reason == "length"
        assert reply.usage.completion_tokens == 16 and reply.usage.prompt_tokens > 20
        assert reply.usage.total_tokens == 32 + reply.usage.prompt_tokens - 16

        chunks = list(
            client.chat.completions.create(
                model="kindchat-sft",
                messages=HELLO,
                max_tokens=12,
                stream=True,
                stream_options={"include_usage": True},
                extra_body={"min_tokens": 12},
            )
        )
        streamed = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
        assert HANGUL.search(streamed), streamed
        assert len({c.id for c in chunks}) == 1
        assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "length"
        assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens == 12
        assert sum(bool(c.choices and c.choices[0].delta.content) for c in chunks) > 3

        # The completion id is the stored message id; 👍 lands in the store.
        rated = httpx.post(
            f"{api.url}/v1/feedback",
            json={"message_id": reply.id, "rating": -1, "reason": "unfriendly"},
            headers={"Authorization": f"Bearer {token}"},
        )
        assert rated.status_code == 200, rated.text
        engine = create_db_engine(database_url(api.settings))
        with session_scope(engine) as session:
            message = store.get_message(session=session, message_id=reply.id)
            assert message.content == text and message.model_version == sft_version
            assert message.session_id == rated.json()["session_id"]  # the token's session
            assert message.model_alias == "sft" and message.completion_tokens == 16
            streamed_row = store.get_message(session=session, message_id=chunks[0].id)
            assert streamed_row.content == streamed
            [rating] = store.list_ratings(session=session, message_id=reply.id)
            assert rating.value == -1 and rating.reason == "unfriendly"
        # The answer the user wanted rides on the same rating (it replaces the first one) …
        better = {"message_id": reply.id, "rating": -1, "better_answer": "안녕하세요! 반가워요."}
        signed = {"Authorization": f"Bearer {token}"}
        assert httpx.post(f"{api.url}/v1/feedback", json=better, headers=signed).status_code == 200
        # … and a too-long one is refused with the field named, the stored rating kept.
        too_long = {**better, "better_answer": "가" * 4001}
        refused = httpx.post(f"{api.url}/v1/feedback", json=too_long, headers=signed)
        assert refused.status_code in (400, 422) and "better_answer" in refused.text
        with session_scope(engine) as session:
            [rating] = store.list_ratings(session=session, message_id=reply.id)
            assert rating.better_answer == "안녕하세요! 반가워요."
        engine.dispose()

        # A regeneration points at the answer it replaces, in the same conversation.
        again = httpx.post(
            f"{api.url}/v1/chat/completions",
            json={
                "model": "kindchat-sft",
                "messages": HELLO,
                "regenerate": reply.id,
                "max_tokens": 4,
            },
            headers=signed,  # the asker's session: a regeneration joins its conversation
        )
        assert again.status_code == 200
        # Nobody else can write into that conversation by regenerating its answer.
        regenerate = {"model": "kindchat-sft", "messages": HELLO, "regenerate": reply.id}
        for headers, status in (
            ({}, 401),
            ({"Authorization": f"Bearer {new_session(api.url)}"}, 404),
        ):
            hijack = httpx.post(f"{api.url}/v1/chat/completions", json=regenerate, headers=headers)
            assert hijack.status_code == status, hijack.text
        metrics = httpx.get(f"{api.url}/metrics").text
        assert (
            'kindchat_requests_total{method="POST",route="/v1/chat/completions",status="200"} 3.0'
            in metrics
        )
        assert "kindchat_time_to_first_token_seconds_count" in metrics
        assert (
            f'kindchat_model_info{{alias="sft",backend="hf",version="{sft_version}"}} 1.0'
            in metrics
        )
        assert "kindchat_queue_depth 0.0" in metrics
        health = httpx.get(f"{api.url}/healthz").json()
        assert health["status"] == "ok" and health["aliases"] == {"sft": sft_version}
