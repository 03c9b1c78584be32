"""Taking over a page through Gradio's `session_hash` (#24), as an outsider would: the victim
chats in one browser; the attacker learns the page's hash and uses it — from a second browser
that rewrites every queue call to the victim's hash, and from a plain HTTP client, with no
cookie and with a cookie of its own. Nothing of the victim's reaches the attacker, nothing is
stored in the victim's name, and the victim's page keeps working. Gradio's endpoints the page
does not use (deep links, uploads, direct calls) answer 404."""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlencode, urlparse, urlunparse

import httpx
import pytest
from sqlalchemy import Engine

from kindchat.feedback import store
from kindchat.feedback.db import session_scope
from kindchat.ui import strings

from .test_browser import (  # type: ignore[import-not-found]
    LIKE,
    assistant_messages,
    new_answer,
    send_chat,
)

pytestmark = pytest.mark.browser
ARTIFACTS = Path(__file__).resolve().parents[2] / "test-artifacts"
HASH = re.compile(r"session_hash=([\w-]+)")
BODY_HASH = re.compile(r'"session_hash":\s*"([\w-]+)"')


def ratings(db: Engine) -> list[Any]:
    with session_scope(db) as session:
        return list(store.list_ratings(session=session, limit=10_000))


def conversations_count(db: Engine) -> int:
    with session_scope(db) as session:
        return len(store.list_messages(session=session, limit=10_000))


def test_a_second_client_with_the_victims_session_hash_gets_nothing(
    page: Any, browser: Any, ui_server: Any, ui_db: Engine, wait_for: Callable[..., None]
) -> None:
    url = ui_server.url
    hashes: list[str] = []

    def seen(request: Any) -> None:  # in a queue URL, or in a join's body
        hashes.extend(HASH.findall(request.url))
        hashes.extend(BODY_HASH.findall(request.post_data or ""))

    page.on("request", seen)
    before = {m.id for m in assistant_messages(ui_db)}
    send_chat(page, "비밀 이야기: 내 생일은 3월 2일이야")
    answer = new_answer(ui_db, before, wait_for)
    wait_for(lambda: bool(hashes), what="the page's session hash")
    victim_hash = hashes[-1]
    ratings_before = ratings(ui_db)
    messages_before = conversations_count(ui_db)

    # 1. A second browser whose every queue call carries the victim's hash.
    context = browser.new_context(locale="ko-KR")
    attacker = context.new_page()
    refused: list[int] = []

    def swap(route: Any) -> None:
        request = route.request
        parts = urlparse(request.url)
        query = {k: v[0] for k, v in parse_qs(parts.query).items()}
        if "session_hash" in query:
            query["session_hash"] = victim_hash
        new_url = urlunparse(parts._replace(query=urlencode(query)))
        body = request.post_data
        if body and request.method == "POST":
            try:
                data = json.loads(body)
            except ValueError:
                data = None
            if isinstance(data, dict) and "session_hash" in data:
                data["session_hash"] = victim_hash
                body = json.dumps(data)
        new_url = re.sub(r"/heartbeat/[\w-]+", f"/heartbeat/{victim_hash}", new_url)
        route.continue_(url=new_url, post_data=body)

    attacker.on("response", lambda r: refused.append(r.status) if r.status == 403 else None)
    context.route("**/gradio_api/**", swap)
    attacker.goto(f"{url}/")
    attacker.wait_for_selector("#chat-input textarea")
    wait_for(lambda: len(refused) > 0, what="the hijacking page's calls refused")
    attacker.locator("#chat-input textarea").fill("안녕")
    attacker.locator("#chat-send").click()
    attacker.wait_for_timeout(1500)
    page_text = attacker.locator("body").inner_text()
    assert "생일" not in page_text and answer.content[:20] not in page_text
    context.close()

    # 2. A plain HTTP client: without a cookie, and with a cookie of its own.
    with (
        httpx.Client(base_url=url, timeout=30) as anonymous,
        httpx.Client(base_url=url, timeout=30) as other,
    ):
        assert other.get("/").status_code == 200 and other.cookies.get("kindchat_session")
        for client in (anonymous, other):
            join = client.post(
                "/gradio_api/queue/join",
                json={"data": [None], "fn_index": 0, "session_hash": victim_hash},
            )
            assert join.status_code == 403, join.text
            assert (
                client.get(f"/gradio_api/queue/data?session_hash={victim_hash}").status_code == 403
            )
            assert client.get(f"/gradio_api/heartbeat/{victim_hash}").status_code == 403
        closed = {
            "deep_link": anonymous.get(f"/gradio_api/deep_link?session_hash={victim_hash}"),
            "upload": anonymous.post(
                "/gradio_api/upload", files={"files": ("a.bin", b"\0" * (1 << 20))}
            ),
            "info": anonymous.get("/gradio_api/info"),
            "run": anonymous.post("/gradio_api/run/predict", json={"data": []}),
            "call": anonymous.post("/gradio_api/call/predict", json={"data": []}),
            "monitoring": anonymous.get("/monitoring"),
            "monitoring summary": anonymous.get("/monitoring/summary"),
        }
        assert {name: r.status_code for name, r in closed.items()} == dict.fromkeys(closed, 404)
        # Flooding the binding table: many hashes in one request, or on other paths, refused.
        many = "&".join(f"session_hash=h{i}" for i in range(700))
        assert anonymous.get(f"/gradio_api/queue/data?{many}").status_code == 400
        assert anonymous.get("/gradio_api/theme.css?session_hash=x1").status_code == 400
        # A join naming its own hash in the query and the victim's in the body: refused too.
        mixed = other.post(
            "/gradio_api/queue/join?session_hash=mine0",
            json={"data": [None], "fn_index": 0, "session_hash": victim_hash},
        )
        assert mixed.status_code == 400, mixed.text

    # Nothing stored in anyone's name, and the victim's page still works.
    assert ratings(ui_db) == ratings_before
    assert conversations_count(ui_db) == messages_before
    page.locator("#chat-bot").locator(LIKE).last.click()
    wait_for(
        lambda: any(r.message_id == answer.id and r.value == 1 for r in ratings(ui_db)),
        what="the victim's own 👍",
    )
    assert strings.ERROR_PAGE_SESSION  # the message a mismatched handler shows
    ARTIFACTS.mkdir(exist_ok=True)
    (ARTIFACTS / "doors-hijack.json").write_text(
        json.dumps(
            {
                "browser_calls_refused": len(refused),
                "http_calls_refused": 6,
                "closed_endpoints": sorted(closed),
                "stored_for_attacker": 0,
            },
            indent=1,
        ),
        encoding="utf-8",
    )


def test_the_dashboard_needs_the_admin_token(
    page: Any, ui_server: Any, wait_for: Callable[..., None]
) -> None:
    page.goto(f"{ui_server.url}/admin")
    totals = page.locator("#dashboard-totals")
    wait_for(lambda: "관리자" in totals.inner_text(), what="the locked dashboard")
    assert "피드백" not in totals.inner_text().replace(strings.DASHBOARD_LOCKED, "")
    page.get_by_text(strings.ADMIN_TITLE).click()
    page.locator("#admin-token input").fill("ui-test-admin-token")
    page.locator("#admin-unlock").click()
    wait_for(lambda: strings.DASHBOARD_LOCKED not in totals.inner_text(), what="the figures")
