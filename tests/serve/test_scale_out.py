"""Two kindchat servers sharing one PostgreSQL and one registry directory: feedback given on
either lands once, and an alias moved in the registry hot-swaps both."""

from __future__ import annotations

from typing import Any

import httpx

from kindchat.config import Settings
from kindchat.feedback import store
from kindchat.feedback.db import init_db, session_scope
from kindchat.models.registry import Registry

from .test_retrain_loop import answer_version, wait_for  # type: ignore[import-not-found]


def test_two_servers_one_database_one_registry(
    serve: Any, micro_copy: Settings, postgres_url: str
) -> None:
    shared = micro_copy.model_copy(update={"db_url": postgres_url})
    with serve(settings=shared) as a, serve(settings=shared) as b:
        reply = httpx.post(
            f"{a.url}/v1/chat/completions",
            json={
                "model": "kindchat-rlhf",
                "messages": [{"role": "user", "content": "안녕하세요"}],
                "max_tokens": 6,
                "user": "s1",
            },
            timeout=120,
        ).json()
        for server, value in ((b, 1), (a, -1), (b, -1)):  # rated on both: one rating, the last
            rated = httpx.post(
                f"{server.url}/v1/feedback",
                json={"message_id": reply["id"], "rating": value, "session_id": "s1"},
            )
            assert rated.status_code == 200, rated.text
        with session_scope(init_db(shared)) as session:
            ratings = store.list_ratings(session=session, message_id=reply["id"])
        assert [(r.session_id, r.value) for r in ratings] == [("s1", -1)]
        history = httpx.get(f"{b.url}/v1/conversations", params={"user": "s1"}).json()
        assert [c["id"] for c in history] == [reply["conversation_id"]]  # seen from the other

        registry = Registry(shared.models_dir)
        target = registry.aliases()["sft"]
        assert answer_version(a.url) == answer_version(b.url) == registry.aliases()["rlhf"]
        registry.set_alias("rlhf", target)  # e.g. a promotion by the retrain job
        wait_for("server a to hot-swap", lambda: answer_version(a.url) == target, 60)
        wait_for("server b to hot-swap", lambda: answer_version(b.url) == target, 60)
