"""The UI in headless Chromium against the real app: chat, 👍/👎, arena, leaderboard, dashboard.

Every check of what was stored reads the server's database through the feedback store.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import Engine

from kindchat.feedback import run_records, store
from kindchat.feedback.db import session_scope
from kindchat.feedback.models import MessagePublic
from kindchat.models.registry import Registry
from kindchat.serve.auth import SESSION_COOKIE, Sessions
from kindchat.ui import strings

from .conftest import start_new_chat  # type: ignore[import-not-found]

pytestmark = pytest.mark.browser

LIKE = 'button[aria-label="좋아요"], button[aria-label="Like"]'
DISLIKE = 'button[aria-label="싫어요"], button[aria-label="Dislike"]'
WATCH_LAST_ANSWER = """() => {
  window.__seen = [];
  const root = document.querySelector('#chat-bot');
  new MutationObserver(() => {
    const answers = root.querySelectorAll('[data-testid="bot"]');
    if (!answers.length) return;
    const text = answers[answers.length - 1].innerText.trim();
    if (text && window.__seen[window.__seen.length - 1] !== text) window.__seen.push(text);
  }).observe(root, {subtree: true, childList: true, characterData: true});
}"""


def plain(text: str) -> str:
    """Text without whitespace and Markdown marks (the page renders answers as Markdown)."""
    return re.sub(r"[\s*_#>`~\\-]", "", text)


def assistant_messages(db: Engine) -> list[MessagePublic]:
    with session_scope(db) as session:
        return [
            m for m in store.list_messages(session=session, limit=10_000) if m.role == "assistant"
        ]


def new_answer(db: Engine, before: set[str], wait_for: Callable[..., None]) -> MessagePublic:
    found: list[MessagePublic] = []

    def stored() -> bool:
        found[:] = [m for m in assistant_messages(db) if m.id not in before]
        return bool(found)

    wait_for(stored, timeout=60, what="the answer to be stored")
    return found[-1]


def cell(table: Any, row: int, col: int) -> str:
    """The text of a Gradio Dataframe cell (rows are virtualised `div`s, not `tr`s)."""
    return str(table.locator(f'[data-testid="cell-{row}-{col}"]').inner_text()).strip()


def send_chat(page: Any, text: str) -> None:
    page.locator("#chat-input textarea").fill(text)
    page.locator("#chat-send").click()


def test_chat_streams_a_korean_answer_and_stores_thumbs(
    page: Any,
    ui_db: Engine,
    viewport: dict[str, int],
    screenshot: Callable[[Any, str], Path],
    wait_for: Callable[..., None],
) -> None:
    before = {m.id for m in assistant_messages(ui_db)}
    page.evaluate(WATCH_LAST_ANSWER)
    send_chat(page, "안녕하세요! 주말에 뭐 하면 좋을까요?")
    answer = new_answer(ui_db, before, wait_for)
    bot = page.locator('#chat-bot [data-testid="bot"]').last
    page.wait_for_function(
        "n => document.querySelectorAll('#chat-bot [data-testid=\"bot\"]').length === n", arg=1
    )
    wait_for(lambda: plain(bot.inner_text()) == plain(answer.content), what="the final text")
    seen = page.evaluate("window.__seen")
    partial = [t for t in seen if len(plain(t)) < len(plain(answer.content))]
    assert len(partial) >= 2, f"the answer did not stream: {seen}"
    assert page.locator('#chat-bot [data-testid="user"]').inner_text().startswith("안녕하세요")
    assert answer.session_id and answer.model_alias == "rlhf"

    def rating() -> Any:
        with session_scope(ui_db) as session:
            rows = store.list_ratings(session=session, message_id=answer.id)
        return rows[0] if len(rows) == 1 else None

    page.locator("#chat-bot").locator(LIKE).last.click()
    wait_for(lambda: rating() is not None, what="the 👍 in the database")
    assert rating().value == 1 and rating().session_id == answer.session_id
    page.locator("#chat-bot").locator(DISLIKE).last.click()  # changing the vote replaces it
    wait_for(lambda: rating().value == -1, what="the 👎 replacing the 👍")
    page.get_by_label("불친절해요").check()
    page.locator("#chat-comment textarea").fill("말투가 딱딱해요")
    page.get_by_label("이렇게 답했으면 좋겠어요 (선택)").fill("안녕하세요! 만나서 반가워요.")
    page.locator("#chat-reason-send").click()
    wait_for(lambda: rating().reason == "unfriendly", what="the reason of the 👎")
    assert rating().comment == "말투가 딱딱해요" and rating().value == -1
    assert rating().better_answer == "안녕하세요! 만나서 반가워요."
    if viewport["width"] > 640:
        screenshot(page, "chat")

    page.locator("#chat-regenerate").click()  # a sibling answer: the loop gets a pair
    again = new_answer(ui_db, before | {answer.id}, wait_for)
    assert again.parent_id == answer.id and again.conversation_id == answer.conversation_id
    wait_for(lambda: plain(bot.inner_text()) == plain(again.content), what="the new answer")
    assert page.locator('#chat-bot [data-testid="bot"]').count() == 1

    start_new_chat(page)
    wait_for(lambda: page.locator('#chat-bot [data-testid="bot"]').count() == 0, what="clear")


def test_html_in_messages_is_shown_as_text_never_run(
    page: Any, ui_db: Engine, wait_for: Callable[..., None]
) -> None:
    payload = '<script>window.__xss = 1</script><img src=x onerror="window.__xss = 2"> <b>굵게</b>'
    before = {m.id for m in assistant_messages(ui_db)}
    send_chat(page, payload)
    new_answer(ui_db, before, wait_for)
    user = page.locator('#chat-bot [data-testid="user"]').last
    wait_for(lambda: "<script>" in user.inner_text(), what="the payload as text")
    assert '<img src=x onerror="window.__xss = 2">' in user.inner_text()
    assert "<b>굵게</b>" in user.inner_text()
    assert page.evaluate("window.__xss") is None
    assert page.locator("#chat-bot script, #chat-bot img[src='x'], #chat-bot b").count() == 0


def test_arena_vote_reveals_the_models_and_stores_the_battle(
    page: Any,
    ui_server: Any,
    ui_db: Engine,
    viewport: dict[str, int],
    screenshot: Callable[[Any, str], Path],
    wait_for: Callable[..., None],
) -> None:
    prompt = f"여름 방학 계획을 같이 세워 줄래요? ({viewport['width']})"
    shots = viewport["width"] > 640  # the README's pictures are the desktop's
    aliases = Registry(ui_server.settings.models_dir).aliases()
    versions = {aliases["sft"], aliases["rlhf"]}
    page.get_by_role("tab", name=strings.TAB_ARENA).click()
    page.locator("#arena-input textarea").fill(prompt)
    page.locator("#arena-send").click()
    vote_a = page.locator("#arena-vote-a")
    vote_a.wait_for(state="visible")
    wait_for(vote_a.is_enabled, timeout=60, what="the answers to finish")
    arena = page.locator("#arena-a").inner_text() + page.locator("#arena-b").inner_text()
    status = page.locator("#arena-status").inner_text()
    assert not any(v in arena + status for v in versions), "the models must stay anonymous"
    for side in ("#arena-a", "#arena-b"):
        assert page.locator(f'{side} [data-testid="bot"]').inner_text().strip()
    if shots:
        screenshot(page, "arena-before-vote")

    vote_a.click()
    wait_for(lambda: strings.ARENA_VERDICTS["a"] in page.locator("#arena-status").inner_text())
    status = page.locator("#arena-status").inner_text()
    assert all(v in status for v in versions), status
    for verdict in ("a", "b", "tie", "both_bad"):
        assert page.locator(f"#arena-vote-{verdict}").is_disabled()
    with session_scope(ui_db) as session:
        battle = store.list_battles(session=session, voted=True)[-1]
    assert battle.prompt == prompt and battle.winner == "a"
    assert {battle.version_a, battle.version_b} == versions and battle.session_id
    assert status.index(str(battle.version_a)) < status.index(str(battle.version_b))
    if shots:
        screenshot(page, "arena")

    page.locator("#arena-new").click()
    wait_for(lambda: page.locator('#arena-a [data-testid="bot"]').count() == 0, what="new round")
    assert vote_a.is_disabled()


def seed_feedback(url: str, db: Engine) -> None:
    """Battles and ratings through the HTTP API (the same store as the UI), and a retrain run."""
    token = httpx.post(f"{url}/v1/sessions").json()["token"]
    signed = {"Authorization": f"Bearer {token}"}
    for round_, winner in enumerate(("a", "a", "b", "tie", "a", "both_bad")):
        battle = httpx.post(
            f"{url}/v1/arena/battles",
            json={"prompt": f"질문 {round_}", "max_tokens": 4},
            headers=signed,
            timeout=60,
        ).json()
        httpx.post(
            f"{url}/v1/arena/battles/{battle['id']}/vote", json={"winner": winner}, headers=signed
        ).raise_for_status()
        httpx.post(
            f"{url}/v1/feedback",
            json={"message_id": battle["a"]["message_id"], "rating": 1 if round_ % 2 else -1},
            headers=signed,
        ).raise_for_status()
    with session_scope(db) as session:
        run = run_records.create_run(session=session, status="running", stage="ppo")
        run_records.update_run(
            session=session,
            run_id=run.id,
            status="succeeded",
            stage="promote",
            metrics={"rm_accuracy": 0.61, "win_rate": 0.58},
            promoted=True,
        )


def test_leaderboard_and_dashboard_render_with_data(
    page: Any,
    ui_server: Any,
    ui_db: Engine,
    screenshot: Callable[[Any, str], Path],
    wait_for: Callable[..., None],
) -> None:
    seed_feedback(ui_server.url, ui_db)
    registry = Registry(ui_server.settings.models_dir)
    aliases = registry.aliases()

    page.get_by_role("tab", name=strings.TAB_LEADERBOARD).click()
    table = page.locator("#leaderboard-table")
    wait_for(lambda: aliases["rlhf"] in table.inner_text(), what="the leaderboard rows")
    assert aliases["sft"] in table.inner_text()  # the versions, in their detail column
    names = {cell(table, row, 1) for row in range(2)}
    assert names == {strings.MODEL_NAMES["rlhf"], strings.MODEL_NAMES["sft"]}, names
    matrix = page.locator("#leaderboard-matrix").inner_text()
    assert strings.MODEL_NAMES["rlhf"] in matrix and aliases["rlhf"] not in matrix
    assert table.locator('.virtual-body [role="row"]').count() == 2
    for row in range(2):
        elo, elo_ci, bt, bt_ci = (cell(table, row, col) for col in range(2, 6))
        assert 900 < float(elo) < 1100 and 700 < float(bt) < 1300
        low, high = (float(x) for x in elo_ci.split("~"))
        assert low <= round(float(elo)) + 1 and high >= round(float(elo)) - 1
        assert "~" in bt_ci
    assert "%" in page.locator("#leaderboard-matrix").inner_text()
    screenshot(page, "leaderboard")

    assert page.get_by_role("tab", name="대시보드").count() == 0  # not among the people's tabs
    page.goto(f"{ui_server.url}/admin")  # the operators' own page
    totals = page.locator("#dashboard-totals")
    wait_for(lambda: strings.DASHBOARD_LOCKED in totals.inner_text(), what="the locked dashboard")
    rm = page.locator("#dashboard-rm")
    assert aliases["rm"] not in rm.inner_text()  # operator data behind the admin token
    actions = page.locator("#admin-promote")
    page.get_by_text(strings.ADMIN_TITLE).click()
    page.locator("#admin-token input").fill("wrong")
    page.locator("#admin-unlock").click()
    page.get_by_text(strings.ADMIN_WRONG).first.wait_for()
    assert not actions.is_visible()
    page.locator("#admin-token input").fill(ui_server.settings.admin_token.get_secret_value())
    page.locator("#admin-unlock").click()
    actions.wait_for(state="visible")
    wait_for(lambda: aliases["rm"] in rm.inner_text(), what="RM accuracy per version")
    assert "succeeded" in page.locator("#dashboard-runs").inner_text()
    assert aliases["rlhf"] in page.locator("#dashboard-thumbs").inner_text()
    for plot in ("#dashboard-per-day", "#dashboard-ppo"):
        wait_for(
            lambda plot=plot: page.locator(f"{plot} canvas, {plot} svg").count() > 0,
            what=f"the plot {plot}",
        )
    assert aliases["rlhf"] in page.locator("#dashboard-ppo").inner_text()
    screenshot(page, "dashboard")

    page.locator("#admin-version input").click()
    page.get_by_role("option", name=aliases["sft"]).click()
    page.locator("#admin-promote").click()
    wait_for(lambda: registry.aliases()["rlhf"] == aliases["sft"], what="the promotion")
    wait_for(lambda: "승격 완료" in page.locator("#admin-note").inner_text(), what="the note")
    served = httpx.get(f"{ui_server.url}/healthz").json()["aliases"]
    assert served["rlhf"] == aliases["sft"]  # hot-swapped already
    screenshot(page, "dashboard-admin")
    page.locator("#admin-rollback").click()
    wait_for(lambda: registry.aliases()["rlhf"] == aliases["rlhf"], what="the rollback")


def test_the_page_gets_a_signed_session_no_script_can_choose(
    page: Any, ui_server: Any, ui_db: Engine, wait_for: Callable[..., None]
) -> None:
    """The first page load sets an HttpOnly, SameSite=Lax cookie holding a signed session; the
    page's 👍 counts for that session; a forged cookie is replaced by a new signed one."""
    sessions = Sessions(ui_server.settings)
    [cookie] = [c for c in page.context.cookies() if c["name"] == SESSION_COOKIE]
    assert cookie["httpOnly"] and cookie["sameSite"] == "Lax"
    assert SESSION_COOKIE not in page.evaluate("document.cookie")  # scripts cannot read it
    session_id = sessions.verify(cookie["value"]).session_id
    me = httpx.get(
        f"{ui_server.url}/v1/sessions/me", cookies={SESSION_COOKIE: cookie["value"]}
    ).json()
    assert me["session_id"] == session_id and me["via"] == "cookie"

    before = {m.id for m in assistant_messages(ui_db)}
    send_chat(page, "세션 확인용 질문이에요")
    answer = new_answer(ui_db, before, wait_for)
    assert answer.session_id == session_id
    page.locator("#chat-bot").locator(LIKE).last.click()

    def voter() -> str | None:
        with session_scope(ui_db) as session:
            rows = store.list_ratings(session=session, message_id=answer.id)
        return rows[0].session_id if rows else None

    wait_for(lambda: voter() is not None, what="the 👍 in the database")
    assert voter() == session_id

    page.context.clear_cookies()
    page.context.add_cookies(
        [{"name": SESSION_COOKIE, "value": "forged.token.value", "url": ui_server.url}]
    )
    page.goto(f"{ui_server.url}/")
    page.wait_for_selector("#chat-input textarea")
    [fresh] = [c for c in page.context.cookies() if c["name"] == SESSION_COOKIE]
    renewed = sessions.verify(fresh["value"]).session_id
    assert renewed != session_id


def test_on_a_phone_the_leaderboard_says_it_scrolls_and_does(
    page: Any,
    ui_server: Any,
    ui_db: Engine,
    screenshot: Callable[[Any, str], Path],
    wait_for: Callable[..., None],
) -> None:
    from .conftest import PHONE  # type: ignore[import-not-found]

    seed_feedback(ui_server.url, ui_db)
    page.set_viewport_size(PHONE)
    page.get_by_role("tab", name=strings.TAB_LEADERBOARD).click()
    table = page.locator("#leaderboard-table")
    wait_for(lambda: table.locator('.virtual-body [role="row"]').count() == 2, what="the rows")
    hint = page.get_by_text("옆으로 밀어서 보세요").first
    assert hint.is_visible()  # said before the table, in words
    hint_box, table_box = hint.bounding_box(), table.bounding_box()
    assert hint_box is not None and table_box is not None and hint_box["y"] < table_box["y"]
    # the table is wider than the phone, and a sideways swipe brings its last column in sight
    moved = page.evaluate(
        """() => {
          const t = document.querySelector('#leaderboard-table');
          const wide = [t, ...t.querySelectorAll('*')].find((e) => e.scrollWidth > e.clientWidth + 8
            && ['auto', 'scroll'].includes(getComputedStyle(e).overflowX));
          if (!wide) return null;
          wide.scrollLeft = wide.scrollWidth;
          return wide.scrollLeft;
        }"""
    )
    assert moved, "a table wider than the phone must scroll sideways"
    last = table.locator('[role="columnheader"]').last
    box = last.bounding_box()
    assert box is not None and box["x"] + box["width"] <= PHONE["width"] + 1, box
    screenshot(page, "leaderboard-phone")
