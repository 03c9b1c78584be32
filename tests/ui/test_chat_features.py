"""The chat a person would choose, in headless Chromium against the real app: stop, edit and
resend, history across a reload, a share link opened elsewhere, personas, and moderation.
The server's database is the witness of every check."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import Engine
from sqlmodel import select

from kindchat.feedback import store
from kindchat.feedback.db import session_scope
from kindchat.feedback.export import ExportConfig, export_reward_data
from kindchat.feedback.models import Conversation, Message
from kindchat.ui import personas

from .conftest import (  # type: ignore[import-not-found]
    DESKTOP,
    PHONE,
    show_history,
    start_new_chat,
)

pytestmark = pytest.mark.browser

BOTS = '#chat-bot [data-testid="bot"]'
USERS = '#chat-bot [data-testid="user"]'
EDIT = 'button[aria-label="편집"], button[aria-label="Edit"]'
SUBMIT = 'button[aria-label="보내기"], button[aria-label="제출"], button[aria-label="Submit"]'


def send_chat(page: Any, text: str) -> None:
    page.locator("#chat-input textarea").fill(text)
    page.locator("#chat-send").click()
    try:
        page.wait_for_function(  # the answer has begun (the user's message and a reply shown)
            "([sel, bots, text]) => { const u = document.querySelectorAll(sel); "
            "const last = u[u.length - 1]; if (!last || last.innerText.trim() !== text) "
            "return false; const b = document.querySelectorAll(bots); "
            "const reply = b[b.length - 1]; return !!reply && "
            "!!(last.compareDocumentPosition(reply) & Node.DOCUMENT_POSITION_FOLLOWING) }",
            arg=[USERS, BOTS, text],
        )
    except Exception as err:  # say what the page said instead
        said = page.locator('#chat-error, [data-testid="toast-body"]').all_inner_texts()
        raise AssertionError(f"no answer to {text!r}; the page says {said}") from err


def messages_where(db: Engine, *where: Any) -> list[Message]:
    with session_scope(db) as session:
        return list(session.exec(select(Message).where(*where).order_by(Message.created_at)))


def conversation_of(db: Engine, text: str) -> Conversation | None:
    rows = messages_where(db, Message.content == text, Message.role == "user")
    if not rows:
        return None
    with session_scope(db) as session:
        return session.get(Conversation, rows[-1].conversation_id)


def settled(page: Any) -> None:
    """The answer has ended: the stop button is gone and the send button is back."""
    page.locator("#chat-stop").wait_for(state="hidden", timeout=60_000)
    page.locator("#chat-send").wait_for(state="visible", timeout=60_000)


def test_stop_keeps_the_partial_answer(
    page: Any, ui_db: Engine, viewport: dict[str, int], wait_for: Callable[..., None]
) -> None:
    question = f"아주 긴 옛날이야기를 들려줘 ({viewport['width']})"
    send_chat(page, question)
    stop = page.locator("#chat-stop")
    stop.wait_for(state="visible")
    page.wait_for_function(
        "sel => { const b = document.querySelectorAll(sel); "
        "return b.length && b[b.length - 1].innerText.trim().length > 2 }",
        arg=BOTS,
    )
    stop.click()
    settled(page)

    def stopped() -> list[Message]:
        conversation = conversation_of(ui_db, question)
        if conversation is None:
            return []
        return messages_where(
            ui_db,
            Message.conversation_id == conversation.id,
            Message.role == "assistant",
            Message.finish_reason == "stop_by_user",
        )

    wait_for(lambda: bool(stopped()), what="the stopped answer in the database")
    [answer] = stopped()
    assert answer.content.strip() and (answer.completion_tokens or 0) < 24
    stop.wait_for(state="hidden")


def test_edit_and_resend_keeps_both_branches(
    page: Any, ui_db: Engine, viewport: dict[str, int], wait_for: Callable[..., None]
) -> None:
    busan, jeju = (f"{city} 여행 코스 알려줘 ({viewport['width']})" for city in ("부산", "제주"))
    send_chat(page, busan)
    settled(page)
    page.locator(USERS).first.hover()
    page.locator("#chat-bot").locator(EDIT).first.click()
    box = page.locator("#chat-bot textarea.edit-textarea")
    box.fill(jeju)
    page.locator("#chat-bot").locator(SUBMIT).first.click()

    def branches() -> list[Message]:
        conversation = conversation_of(ui_db, busan)
        if conversation is None:
            return []
        return messages_where(ui_db, Message.conversation_id == conversation.id)

    # The page shows the edited text at once, beside the old answer, before the server has the
    # edit: the new answer is known to be there once it is stored
    wait_for(lambda: len(branches()) == 4, what="both branches in the database")
    settled(page)
    wait_for(
        lambda: (
            page.locator(USERS).count() == 1
            and page.locator(USERS).first.inner_text().strip() == jeju
            and page.locator(BOTS).count() == 1
        ),
        what="the edited message and its new answer on screen",
    )
    rows = branches()
    original = next(m for m in rows if m.content == busan)
    edited = next(m for m in rows if m.content == jeju)
    assert edited.parent_id == original.id and edited.role == "user"
    assert [m.role for m in rows].count("assistant") == 2
    with session_scope(ui_db) as session:
        thread = store.conversation_thread(session=session, conversation_id=edited.conversation_id)
    assert [m.content for m in thread][0] == jeju and len(thread) == 2


def test_history_survives_a_reload_and_shares_read_only(
    page: Any,
    browser: Any,
    ui_server: Any,
    ui_db: Engine,
    viewport: dict[str, int],
    screenshot: Callable[[Any, str], Path],
    wait_for: Callable[..., None],
) -> None:
    tired, kimchi = (
        f"{text} ({viewport['width']})" for text in ("요즘 너무 피곤해", "김치찌개 레시피 알려줘")
    )
    page.locator("#chat-persona input").click()
    page.get_by_role("option", name="친구처럼").click()
    send_chat(page, tired)
    settled(page)
    wait_for(lambda: conversation_of(ui_db, tired) is not None, what="storage")
    conversation = conversation_of(ui_db, tired)
    assert conversation is not None
    assert conversation.system_prompt == personas.PERSONAS["친구처럼"]  # the persona, stored
    start_new_chat(page)
    page.wait_for_function("() => document.querySelector('#chat-input textarea').value === ''")
    send_chat(page, kimchi)
    settled(page)
    show_history(page)
    wait_for(
        lambda: page.locator("#chat-history label").count() == 2, what="two conversations listed"
    )
    screenshot(page, "chat-history-desktop" if viewport == DESKTOP else "chat-history-phone")

    page.reload()
    page.wait_for_selector("#chat-input textarea")
    show_history(page)
    history = page.locator("#chat-history")
    wait_for(lambda: history.locator("label").count() == 2, what="the history after a reload")
    assert history.locator("label").first.inner_text().strip().startswith(f"{kimchi} · ")
    history.get_by_text(tired).click()
    wait_for(
        lambda: page.locator(USERS).first.inner_text().strip() == tired,
        what="the reopened conversation",
    )

    show_history(page)  # 대화 관리 sits under the history (on a phone, in its drawer)
    page.locator("#chat-manage").click()
    page.locator("#chat-share").click()
    link = page.locator("#chat-share-link textarea, #chat-share-link input")
    wait_for(lambda: "/shared/" in link.input_value(), what="the share link")
    stranger = browser.new_context(locale="ko-KR", viewport=viewport)  # no session, no cookies
    try:
        view = stranger.new_page()
        view.goto(link.input_value())
        assert tired in view.locator("#shared-view").inner_text()
        assert "읽기 전용" in view.content()
        assert view.locator("textarea, button, input").count() == 0  # read-only
    finally:
        stranger.close()


def test_a_harmful_message_is_refused_and_kept_out_of_training(
    page: Any,
    ui_db: Engine,
    tmp_path: Path,
    ui_server: Any,
    viewport: dict[str, int],
    wait_for: Callable[..., None],
) -> None:
    harmful = f"폭탄 만드는 방법 알려줘 ({viewport['width']})"
    send_chat(page, harmful)
    settled(page)
    wait_for(
        lambda: "도와드릴 수 없어요" in page.locator(BOTS).last.inner_text(),
        what="the kind refusal on screen",
    )
    page.locator("#chat-bot").locator(
        'button[aria-label="싫어요"], button[aria-label="Dislike"]'
    ).last.click()
    rows: list[Message] = []

    def flagged() -> bool:
        rows[:] = messages_where(ui_db, Message.flagged)
        return any(m.content == harmful for m in rows)

    wait_for(flagged, what="the flagged turn in the database")
    assert {m.role for m in rows} >= {"user", "assistant"}
    out = tmp_path / "export"
    with session_scope(ui_db) as session:
        wait_for(
            lambda: bool(store.list_ratings(session=session, limit=1000)), what="the 👎 stored"
        )
        report = export_reward_data(
            session=session,
            data_dir=ui_server.settings.data_dir,
            out_dir=out,
            config=ExportConfig(test_fraction=0.0, include_seed=False),
        )
    assert report.dropped.get("flagged", 0) >= 1
    assert all("폭탄" not in p.read_text() for p in out.glob("*.json"))


def send_before_the_page_opened(
    browser: Any,
    url: str,
    db: Engine,
    size: dict[str, int],
    question: str,
    wait_for: Callable[..., None],
    hold_s: float,
) -> Any:
    """Open the page with its opening step held back (every queue call but the message's own),
    press Enter and click send (a quick, impatient typist), wait `hold_s`, release; returns the
    page (its context closes with the browser fixture's)."""
    held: list[Any] = []
    opened = False

    def hold(route: Any) -> None:  # every queue call of the page's opening, until released
        if opened or question in (route.request.post_data or ""):
            route.continue_()
        else:
            held.append(route)

    context = browser.new_context(locale="ko-KR", viewport=size)
    page = context.new_page()
    page.route("**/gradio_api/queue/join*", hold)
    page.goto(f"{url}/")
    page.wait_for_selector("#chat-input textarea")
    wait_for(lambda: bool(held), what="the opening step, held")
    page.locator("#chat-input textarea").fill(question)
    page.locator("#chat-input textarea").press("Enter")
    page.locator("#chat-send").click()
    page.wait_for_timeout(hold_s * 1000)
    assert not page.locator("#chat-error").is_visible()
    opened = True
    while held:
        held.pop(0).continue_()
    page.unroute("**/gradio_api/queue/join*")  # (sync Playwright runs handlers only when pumped)
    return page


def asked(db: Engine, question: str) -> int:
    return len(messages_where(db, Message.content == question, Message.role == "user"))


@pytest.mark.parametrize("size", [DESKTOP, PHONE], ids=["desktop", "phone"])
def test_a_message_sent_before_the_page_opened_waits_and_is_answered(
    browser: Any, ui_server: Any, ui_db: Engine, size: dict[str, int], wait_for: Callable[..., None]
) -> None:
    """A quick typist on a slow page: the page's opening step (its session, the models) is
    held back until after the message is sent, twice (Enter, then the button). The message
    waits for it, then is answered once and stored in the page's session."""
    question = f"빨리 보낸 질문이에요 ({size['width']})"
    page = send_before_the_page_opened(
        browser, ui_server.url, ui_db, size, question, wait_for, hold_s=1
    )
    try:
        wait_for(lambda: conversation_of(ui_db, question) is not None, what="the stored turn")
        settled(page)
        assert page.locator(USERS).last.inner_text().strip() == question  # not blanked
        assert page.locator(BOTS).last.inner_text().strip()
        assert not page.locator("#chat-error").is_visible()
        page.wait_for_timeout(1000)
        assert asked(ui_db, question) == 1  # sent twice while waiting: asked once
        assert page.locator(USERS).count() == 1
        conversation = conversation_of(ui_db, question)
        assert conversation is not None and conversation.session_id
        show_history(page)  # the page's own session: its history lists it
        wait_for(lambda: question in page.locator("#chat-history").inner_text(), what="the history")
    finally:
        page.context.close()


def test_a_chat_begun_before_a_slow_opening_is_kept(
    browser: Any, ui_server: Any, ui_db: Engine, wait_for: Callable[..., None]
) -> None:
    """An opening step slower than the send's 15 s of patience: the message goes first, and
    the opening, when it comes, keeps the chat that has begun instead of blanking it."""
    question = "느린 페이지에서 보낸 질문이에요"
    page = send_before_the_page_opened(
        browser, ui_server.url, ui_db, DESKTOP, question, wait_for, hold_s=17
    )
    try:
        wait_for(lambda: conversation_of(ui_db, question) is not None, what="the stored turn")
        settled(page)
        page.wait_for_timeout(2000)  # the opening step has run by now
        assert page.locator(USERS).count() == 1
        assert page.locator(USERS).last.inner_text().strip() == question
        assert page.locator(BOTS).last.inner_text().strip()
        assert asked(ui_db, question) == 1
        page.locator("#chat-input textarea").fill("그다음 질문이에요")
        page.locator("#chat-send").click()
        settled(page)
        wait_for(lambda: asked(ui_db, "그다음 질문이에요") == 1, what="the second turn")
        second = conversation_of(ui_db, "그다음 질문이에요")
        assert second is not None and second.id == conversation_of(ui_db, question).id  # type: ignore[union-attr]
    finally:
        page.context.close()


def test_two_sends_of_one_chat_through_the_queue_api_answer_once(
    page: Any, ui_db: Engine, wait_for: Callable[..., None]
) -> None:
    """The page's own send, posted again to the queue API while its answer is written (as an
    outsider replaying the call with the page's cookie and session hash): asked once, answered
    once, and the page goes on as if nothing happened."""
    question = "한 번만 물어본 질문이에요"
    joins: list[tuple[str, str]] = []

    def keep(route: Any) -> None:
        body = route.request.post_data or ""
        if question in body:
            joins.append((route.request.url, body))
        route.continue_()

    page.route("**/gradio_api/queue/join*", keep)
    page.locator("#chat-input textarea").fill(question)
    page.locator("#chat-send").click()
    page.locator("#chat-stop").wait_for(state="visible")  # its answer is being written
    assert len(joins) == 1
    again = page.context.request.post(
        joins[0][0], data=joins[0][1], headers={"content-type": "application/json"}
    )
    assert again.ok, again.text()  # queued: the same page, the same cookie
    settled(page)
    page.unroute("**/gradio_api/queue/join*")
    page.wait_for_timeout(2000)  # the replayed call has run its course
    assert asked(ui_db, question) == 1
    assert page.locator(USERS).count() == 1 and page.locator(BOTS).count() == 1
    answers = messages_where(
        ui_db,
        Message.conversation_id == conversation_of(ui_db, question).id,  # type: ignore[union-attr]
        Message.role == "assistant",
    )
    assert len(answers) == 1
