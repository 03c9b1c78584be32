"""Limits shared by several servers (#24): two kindchat servers on one database and one real
redis-server; one client alternating between them has one budget, not one per server. The same
run on `memory://` counters (one per process) gets twice as much through, which is why the
README names redis for more than one server."""

from __future__ import annotations

from collections import Counter
from typing import Any

import httpx
import pytest

from kindchat.config import Settings
from kindchat.serve.app import create_app

from .conftest import ServerThread  # type: ignore[import-not-found]

pytestmark = pytest.mark.slow  # two servers and redis

BUDGET = 10


def alternate(urls: list[str], token: str, n: int) -> Counter[int]:
    """`n` history requests from one session, alternating between the servers."""
    headers = {"Authorization": f"Bearer {token}"}
    return Counter(
        httpx.get(f"{urls[i % 2]}/v1/conversations", headers=headers).status_code for i in range(n)
    )


def run_pair(base: Settings, storage: str) -> Counter[int]:
    settings = Settings.model_validate(
        {
            **base.model_dump(),
            "rate_limits": True,
            "rate_limit_storage": storage,
            "rate_limit_strategy": "moving-window",
            "rate_limit_session": f"{BUDGET}/minute",
            "session_secret": "one-secret-for-both-servers-0123456789abcdef",
            "alias_poll_s": 0,
        }
    )
    with ServerThread(create_app(settings)) as one, ServerThread(create_app(settings)) as two:
        token = httpx.post(f"{one.url}/v1/sessions").json()["token"]
        return alternate([one.url, two.url], token, 3 * BUDGET)


def test_two_servers_share_one_budget_through_redis(micro_copy: Settings, redis_url: str) -> Any:
    shared = run_pair(micro_copy, redis_url + "/0")
    assert shared == {200: BUDGET, 429: 2 * BUDGET}, shared
    apart = run_pair(micro_copy, "memory://")
    assert apart == {200: 2 * BUDGET, 429: BUDGET}, apart  # each process its own counters
