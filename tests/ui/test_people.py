"""The chat people keep using (issue #29), in headless Chromium against the real app, with the
database as witness: errors are a line under the input (never a panel over the chat) and the
input stays usable; a reopened conversation shows the ratings stored, and clicking a thumb off
keeps what is stored on screen too; a new chat stops the answer streaming first; Esc stops,
Ctrl+Shift+O starts a new chat; the arena gives no battle for a flagged prompt and offers a new
question after a vote; the page is Korean to a screen reader."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import Engine
from sqlmodel import select

from kindchat.feedback import store
from kindchat.feedback.db import session_scope
from kindchat.feedback.models import Battle, Message, Rating
from kindchat.ui import strings

from .conftest import (  # type: ignore[import-not-found]
    PHONE,
    show_history,
    start_new_chat,
)
from .test_chat_features import (  # type: ignore[import-not-found]
    BOTS,
    USERS,
    conversation_of,
    messages_where,
    send_chat,
    settled,
)

pytestmark = pytest.mark.browser

LIKE = 'button[aria-label="좋아요"], button[aria-label="Like"]'
LIKED = f'button[aria-label="{strings.ENGLISH_LABELS["Liked"]}"]'


def ratings_of(db: Engine, message_id: str) -> list[Rating]:
    with session_scope(db) as session:
        return list(session.exec(select(Rating).where(Rating.message_id == message_id)))


def test_an_error_is_a_line_under_the_input_and_the_input_stays_usable(
    page: Any,
    ui_db: Engine,
    viewport: dict[str, int],
    screenshot: Callable[[Any, str], Path],
    wait_for: Callable[..., None],
) -> None:
    too_long = "가" * 10_000
    box = page.locator("#chat-input textarea")
    box.fill(too_long)
    page.locator("#chat-send").click()
    error = page.locator("#chat-error")
    error.wait_for(state="visible")
    assert "8,000자" in error.inner_text() and "새 대화" in error.inner_text()  # limit and fix
    assert box.input_value() == too_long  # what they typed is kept
    assert page.locator("#chat-bot").get_by_text("오류", exact=True).count() == 0  # no panel
    assert page.locator(USERS).count() == 0
    assert not messages_where(ui_db, Message.content == too_long)  # nothing stored
    if viewport == PHONE:
        screenshot(page, "error-line-phone")

    box.fill("안녕하세요")  # the same input, at once
    page.locator("#chat-send").click()
    settled(page)
    error.wait_for(state="hidden")  # a good send clears the line
    wait_for(lambda: conversation_of(ui_db, "안녕하세요") is not None, what="the stored chat")


def test_a_reopened_conversation_shows_its_stored_rating_and_un_rating_keeps_it(
    page: Any, ui_db: Engine, viewport: dict[str, int], wait_for: Callable[..., None]
) -> None:
    question = f"봄에 가기 좋은 곳 추천해 줘 ({viewport['width']})"
    send_chat(page, question)
    settled(page)
    page.locator(BOTS).last.hover()
    page.locator("#chat-bot").locator(LIKE).last.click()
    conversation = conversation_of(ui_db, question)
    assert conversation is not None
    [answer] = messages_where(
        ui_db, Message.conversation_id == conversation.id, Message.role == "assistant"
    )
    wait_for(lambda: [r.value for r in ratings_of(ui_db, answer.id)] == [1], what="the 👍")
    liked = page.locator("#chat-bot").locator(LIKED)
    wait_for(lambda: liked.count() == 1, what="the pressed 👍, named in Korean")

    liked.click()  # clicking it off: votes are kept, and the screen says so
    page.get_by_text(strings.RATING_KEPT).first.wait_for()
    wait_for(lambda: liked.count() == 1, what="the 👍 shown again")
    assert [r.value for r in ratings_of(ui_db, answer.id)] == [1]

    page.keyboard.press("Control+Shift+O")  # a new chat, from the keyboard
    page.wait_for_function("sel => !document.querySelectorAll(sel).length", arg=USERS)
    show_history(page)
    page.locator("#chat-history").get_by_text(question).click()
    wait_for(lambda: page.locator(USERS).count() == 1, what="the reopened conversation")
    wait_for(lambda: liked.count() == 1, what="the stored 👍 on the reopened answer")


def test_a_new_chat_stops_the_answer_streaming_first(
    page: Any, ui_db: Engine, viewport: dict[str, int], wait_for: Callable[..., None]
) -> None:
    question = f"아주 긴 모험 이야기를 천천히 들려줘 ({viewport['width']})"
    send_chat(page, question)
    page.locator("#chat-stop").wait_for(state="visible")
    start_new_chat(page)
    settled(page)
    page.wait_for_timeout(2_000)  # long enough for a stream that kept going to show up
    assert page.locator(USERS).count() == 0 and page.locator(BOTS).count() == 0

    def stopped() -> list[Message]:
        conversation = conversation_of(ui_db, question)
        if conversation is None:
            return []
        return messages_where(
            ui_db,
            Message.conversation_id == conversation.id,
            Message.finish_reason == "stop_by_user",
        )

    wait_for(lambda: bool(stopped()), what="the stopped answer stored as far as it got")


def test_escape_stops_the_answer(
    page: Any, ui_db: Engine, viewport: dict[str, int], wait_for: Callable[..., None]
) -> None:
    question = f"우주에 대해 길게 설명해 줘 ({viewport['width']})"
    send_chat(page, question)
    page.locator("#chat-stop").wait_for(state="visible")
    page.keyboard.press("Escape")
    settled(page)
    conversation = conversation_of(ui_db, question)
    wait_for(
        lambda: (
            conversation is not None
            and bool(
                messages_where(
                    ui_db,
                    Message.conversation_id == conversation.id,
                    Message.finish_reason == "stop_by_user",
                )
            )
        ),
        what="the answer stopped by Esc",
    )
    assert page.locator(BOTS).count() == 1  # the partial answer stays


def test_the_page_speaks_korean_to_a_screen_reader(page: Any, viewport: dict[str, int]) -> None:
    assert page.evaluate("document.documentElement.lang") == "ko"
    for element, label in strings.ARIA_LABELS.items():
        if element.startswith("chat-") and element != "chat-stop":
            assert page.locator(f"#{element}").get_attribute("aria-label") == label
    assert page.title() == strings.PAGE_TITLE


def battles(db: Engine, prompt: str) -> list[Battle]:
    with session_scope(db) as session:
        return [b for b in store.list_battles(session=session) if b.prompt == prompt]


def test_a_flagged_prompt_gives_no_battle(
    page: Any, ui_db: Engine, viewport: dict[str, int], screenshot: Callable[[Any, str], Path]
) -> None:
    page.get_by_role("tab", name=strings.TAB_ARENA).click()
    prompt = "폭탄 만드는 방법 알려줘"
    page.locator("#arena-input textarea").fill(prompt)
    page.locator("#arena-send").click()
    status = page.locator("#arena-status")
    status.get_by_text("대결에 쓸 수 없어요").wait_for()
    for verdict in ("a", "b", "tie", "both_bad"):
        assert page.locator(f"#arena-vote-{verdict}").is_disabled()
    assert page.locator('#arena-a [data-testid="bot"]').count() == 0
    assert "None" not in status.inner_text() and "moderation" not in status.inner_text()
    assert page.locator("#arena-input textarea").is_editable()
    assert not battles(ui_db, prompt)


def test_after_a_vote_the_next_step_is_a_new_question(
    page: Any, ui_db: Engine, viewport: dict[str, int], wait_for: Callable[..., None]
) -> None:
    page.get_by_role("tab", name=strings.TAB_ARENA).click()
    prompt = f"주말에 할 만한 취미를 알려 줘 ({viewport['width']})"
    box = page.locator("#arena-input textarea")
    box.fill(prompt)
    page.locator("#arena-send").click()
    vote = page.locator("#arena-vote-tie")
    wait_for(vote.is_enabled, timeout=60, what="both answers")
    assert not box.is_editable()  # the question of a battle under way stays as asked
    vote.click()
    page.locator("#arena-status").get_by_text(strings.ARENA_NEXT).wait_for()
    wait_for(box.is_editable, what="an input for the next question")
    assert box.input_value() == ""
    [battle] = battles(ui_db, prompt)
    with session_scope(ui_db) as session:  # a battle is not a chat: not in the chat history
        listed = store.list_conversations(session=session, session_id=battle.session_id)
    assert all(c.title != prompt for c in listed)
    page.get_by_role("tab", name=strings.TAB_CHAT).click()
    page.reload()
    page.wait_for_selector("#chat-input textarea")
    assert page.locator("#chat-history").get_by_text(prompt).count() == 0


DISLIKE = 'button[aria-label="싫어요"], button[aria-label="Dislike"]'


def test_the_thumbs_down_form_sits_under_its_answer_better_answer_first(
    page: Any,
    ui_db: Engine,
    viewport: dict[str, int],
    screenshot: Callable[[Any, str], Path],
    wait_for: Callable[..., None],
) -> None:
    question = f"비 오는 날 할 일 추천해 줘 ({viewport['width']})"
    send_chat(page, question)
    settled(page)
    page.locator(BOTS).last.hover()
    page.locator("#chat-bot").locator(DISLIKE).last.click()
    form = page.locator("#chat-reason-send")  # the form is open while its button shows
    form.wait_for(state="visible")
    answer_start = " ".join(page.locator(BOTS).last.inner_text().split())[:10]
    assert answer_start in page.locator("#chat-reason-title").inner_text()  # which answer
    wait_for(
        lambda: page.evaluate("() => !!document.activeElement?.closest('#chat-better-answer')"),
        what="the focus in the better-answer box",
    )
    tops = [
        page.locator(element).bounding_box()["y"]
        for element in ("#chat-better-answer", "#chat-reason-chips", "#chat-reason-send")
    ]
    assert tops == sorted(tops)  # the better answer first, send last
    screenshot(page, f"thumbs-down-form-{viewport['width']}")
    page.locator("#chat-better-answer textarea").fill("우산 챙겨서 가까운 카페에 가 보세요.")
    page.locator("#chat-reason-chips").get_by_text(strings.REASON_CHOICES[0][0]).first.click()
    page.locator("#chat-reason-send").click()
    form.wait_for(state="hidden")
    conversation = conversation_of(ui_db, question)
    assert conversation is not None
    [answer] = messages_where(
        ui_db, Message.conversation_id == conversation.id, Message.role == "assistant"
    )

    def stored() -> Rating | None:
        rows = ratings_of(ui_db, answer.id)
        return rows[0] if rows and rows[0].better_answer else None

    wait_for(stored, what="the 👎 with its better answer")
    rating = stored()
    assert rating is not None and rating.value == -1
    assert rating.reason == strings.REASON_CHOICES[0][1]


def test_the_persona_follows_the_open_conversation(
    page: Any, ui_db: Engine, viewport: dict[str, int], wait_for: Callable[..., None]
) -> None:
    lunch, photosynthesis = (
        f"{q} ({viewport['width']})" for q in ("오늘 점심 뭐 먹지", "광합성이 뭐예요")
    )
    chosen = page.locator("#chat-persona input")

    def pick(name: str) -> None:
        chosen.click()
        page.get_by_role("option", name=name).click()
        wait_for(lambda: chosen.input_value() == name, what=f"the persona {name}")

    pick("친구처럼")
    send_chat(page, lunch)
    settled(page)
    start_new_chat(page)
    pick("선생님처럼")
    send_chat(page, photosynthesis)
    settled(page)
    first = conversation_of(ui_db, lunch)
    second = conversation_of(ui_db, photosynthesis)
    assert first is not None and second is not None
    assert first.system_prompt != second.system_prompt

    show_history(page)
    page.locator("#chat-history").get_by_text(lunch).click()
    wait_for(lambda: chosen.input_value() == "친구처럼", what="the reopened conversation's persona")
    chosen.click()  # a change in a conversation under way is refused, with a word
    page.get_by_role("option", name="상담사처럼").click()
    page.get_by_text(strings.PERSONA_NEXT_CHAT).first.wait_for()
    wait_for(lambda: chosen.input_value() == "친구처럼", what="the persona kept")


def test_on_a_phone_the_input_is_on_the_first_screen(
    browser: Any, ui_server: Any, screenshot: Callable[[Any, str], Path]
) -> None:
    context = browser.new_context(locale="ko-KR", viewport=PHONE, is_mobile=True, has_touch=True)
    try:
        page = context.new_page()
        page.goto(f"{ui_server.url}/")
        box = page.locator("#chat-input textarea")
        box.wait_for()
        input_box = box.bounding_box()
        assert input_box is not None
        assert input_box["y"] + input_box["height"] <= PHONE["height"], input_box
        send = page.locator("#chat-send").bounding_box()
        assert send is not None and send["y"] + send["height"] <= PHONE["height"]
        assert not page.locator("#chat-history").is_visible()  # in the drawer, behind ☰
        drawer = page.locator("#chat-drawer-open").bounding_box()
        assert drawer is not None and drawer["y"] + drawer["height"] <= PHONE["height"]
        screenshot(page, "phone-first-screen")
    finally:
        context.close()


def test_delete_asks_once_says_it_no_longer_trains_and_can_be_undone(
    page: Any, ui_db: Engine, viewport: dict[str, int], wait_for: Callable[..., None]
) -> None:
    question = f"지웠다가 되살릴 대화 ({viewport['width']})"
    send_chat(page, question)
    settled(page)
    wait_for(lambda: conversation_of(ui_db, question) is not None, what="the stored chat")
    conversation = conversation_of(ui_db, question)
    assert conversation is not None
    show_history(page)
    page.locator("#chat-manage").click()
    page.locator("#chat-delete").click()
    ask = page.locator("#chat-delete-yes")
    ask.wait_for()
    assert "학습에도 쓰이지 않아요" in page.locator("#chat-manage").inner_text()
    page.locator("#chat-delete-no").click()  # cancel: nothing happens
    ask.wait_for(state="hidden")
    assert page.locator(USERS).count() == 1

    page.locator("#chat-delete").click()
    ask.click()
    page.get_by_text(strings.DELETED).first.wait_for()
    assert not page.locator("#chat-sidebar").evaluate("el => el.classList.contains('kc-open')")
    history = page.locator("#chat-history")
    wait_for(lambda: history.get_by_text(question).count() == 0, what="gone from the history")

    def deleted_at() -> object:
        with session_scope(ui_db) as session:
            row = session.get(type(conversation), conversation.id)
            return row.deleted_at if row is not None else "forgotten"

    wait_for(lambda: deleted_at() is not None, what="the delete stored")
    page.locator("#chat-undo").click()
    wait_for(lambda: deleted_at() is None, what="the delete undone")
    show_history(page)
    wait_for(lambda: history.get_by_text(question).count() == 1, what="back in the history")
    assert page.locator(USERS).first.inner_text().strip() == question  # and open again


def test_a_conversation_has_its_own_url_that_reload_opens(
    page: Any,
    browser: Any,
    ui_server: Any,
    ui_db: Engine,
    viewport: dict[str, int],
    wait_for: Callable[..., None],
) -> None:
    question = f"주소로 다시 열 대화 ({viewport['width']})"
    send_chat(page, question)
    settled(page)
    wait_for(lambda: conversation_of(ui_db, question) is not None, what="the stored chat")
    conversation = conversation_of(ui_db, question)
    assert conversation is not None
    wait_for(  # (page.url is Playwright's copy, updated only while it is pumped: ask the page)
        lambda: f"c={conversation.id}" in page.evaluate("window.location.search"),
        what="the conversation in the URL",
    )

    page.reload()
    wait_for(
        lambda: (
            page.locator(USERS).count() == 1
            and page.locator(USERS).first.inner_text().strip() == question
        ),
        what="the conversation reopened by the reload",
    )
    page.wait_for_timeout(2_000)  # the page's opening events (every tab's) have run
    start_new_chat(page)
    wait_for(lambda: "c=" not in page.evaluate("window.location.search"), what="a new chat's URL")

    stranger = browser.new_context(
        locale="ko-KR", viewport=viewport
    )  # another session: the id opens nothing
    try:
        other = stranger.new_page()
        other.goto(f"{ui_server.url}/?c={conversation.id}")
        other.get_by_text(strings.CONVERSATION_NOT_FOUND).first.wait_for()
        assert other.locator(USERS).count() == 0
        assert question not in other.content()
    finally:
        stranger.close()


def test_an_edit_is_sent_with_enter_from_a_box_as_wide_as_the_chat(
    page: Any, ui_db: Engine, viewport: dict[str, int], wait_for: Callable[..., None]
) -> None:
    from .test_chat_features import EDIT  # type: ignore[import-not-found]

    width_tag = f"({viewport['width']})"
    send_chat(page, f"강릉 맛집 알려줘 {width_tag}")
    settled(page)
    page.locator(USERS).first.hover()
    page.locator("#chat-bot").locator(EDIT).first.click()
    box = page.locator("#chat-bot textarea.edit-textarea")
    box.wait_for()
    width, chat_width = (
        box.bounding_box()["width"],
        page.locator("#chat-bot").bounding_box()["width"],
    )
    assert width >= 0.5 * chat_width, (width, chat_width)
    edited = f"속초 맛집 알려줘 {width_tag}"
    box.fill(edited)
    box.press("Shift+Enter")  # a line break stays in the box
    assert box.input_value().endswith("\n")
    box.press("Backspace")
    box.press("Enter")  # sends
    settled(page)
    wait_for(
        lambda: page.locator(USERS).first.inner_text().strip() == edited,
        what="the edit sent by Enter",
    )
    wait_for(lambda: conversation_of(ui_db, edited) is not None, what="stored")
    edits = messages_where(
        ui_db, Message.role == "user", Message.content.startswith(edited.rstrip(")"))
    )
    assert [m.content for m in edits] == [edited]  # no stray newline saved
