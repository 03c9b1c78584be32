"""Branches as in the products people know (issue #29): a regenerated answer and an edited
question are versions of one message, with ‹k/n› to go back; what follows an older version comes
back with it, and a turn added there follows that version (in the database, which trains the
model). Headless Chromium against the real app, at 1280 px and on a 390 px phone."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import Engine

from kindchat.feedback import store
from kindchat.feedback.db import session_scope
from kindchat.feedback.models import Message
from kindchat.ui import strings

from .conftest import LONG, PHONE  # type: ignore[import-not-found]
from .test_chat_features import (  # type: ignore[import-not-found]
    BOTS,
    EDIT,
    SUBMIT,
    USERS,
    conversation_of,
    messages_where,
    send_chat,
    settled,
)

pytestmark = pytest.mark.browser

PREV = f'button[aria-label="{strings.BRANCH_LABELS["prev"]}"]'
NEXT = f'button[aria-label="{strings.BRANCH_LABELS["next"]}"]'


def flat(text: str) -> str:
    return " ".join(text.split())


def answers_to(db: Engine, question: str) -> list[Message]:
    conversation = conversation_of(db, question)
    if conversation is None:
        return []
    return messages_where(
        db, Message.conversation_id == conversation.id, Message.role == "assistant"
    )


def counter(page: Any, turn: int) -> str:
    """The ‹k/n› drawn next to message `turn`'s buttons ("" without one)."""
    return str(
        page.evaluate(
            """turn => {
              const rows = [...document.querySelectorAll('#chat-bot .message-row')];
              const after = rows[turn] && rows[turn].nextElementSibling;
              const nav = after && after.querySelector('.kc-branch');
              return nav ? nav.querySelector('span').innerText.trim() : '';
            }""",
            turn,
        )
    )


def arrow(page: Any, turn: int, which: str) -> Any:
    """The ‹ (PREV) or › (NEXT) of message `turn`."""
    return (
        page.locator("#chat-bot .message-row")
        .nth(turn)
        .locator("xpath=following-sibling::*[1]")
        .locator(which)
    )


def test_regenerated_answers_are_versions_to_go_back_to(
    page: Any,
    ui_server: Any,
    ui_db: Engine,
    viewport: dict[str, int],
    screenshot: Callable[[Any, str], Path],
    wait_for: Callable[..., None],
) -> None:
    question = f"부산 여행 코스 알려줘 ({viewport['width']})"
    send_chat(page, question)
    settled(page)
    wait_for(lambda: len(answers_to(ui_db, question)) == 1, what="the first answer stored")
    page.locator("#chat-regenerate").click()
    wait_for(lambda: len(answers_to(ui_db, question)) == 2, what="the second answer stored")
    settled(page)
    first, second = answers_to(ui_db, question)
    assert second.parent_id == first.id
    wait_for(lambda: counter(page, 1) == "2/2", what="‹2/2› on the answer")
    assert flat(page.locator(BOTS).first.inner_text()) == flat(second.content)
    assert counter(page, 0) == ""  # the question has one version
    screenshot(page, f"branches-{viewport['width']}")

    arrow(page, 1, PREV).click()  # back to the first answer
    wait_for(lambda: counter(page, 1) == "1/2", what="‹1/2›")
    assert flat(page.locator(BOTS).first.inner_text()) == flat(first.content)
    assert arrow(page, 1, PREV).is_disabled() and not arrow(page, 1, NEXT).is_disabled()

    follow = f"숙소도 알려줘 ({viewport['width']})"
    send_chat(page, follow)  # a turn on the older version follows it
    settled(page)
    wait_for(lambda: len(answers_to(ui_db, question)) == 3, what="the follow-up's answer stored")
    [follow_up] = messages_where(ui_db, Message.content == follow)
    with session_scope(ui_db) as session:
        context = store.message_context(session=session, message_id=follow_up.id)
    assert context[-1]["content"] == first.content
    assert follow_up.follows_id == first.id

    page.reload()  # the conversation's URL opens its latest branch: this one
    wait_for(lambda: page.locator(BOTS).count() == 2, what="the reopened branch")
    wait_for(lambda: counter(page, 1) == "1/2", what="‹1/2› after the reload")
    assert flat(page.locator(BOTS).first.inner_text()) == flat(first.content)
    arrow(page, 1, NEXT).click()  # the other version: the turns after this one are not its
    wait_for(lambda: page.locator(BOTS).count() == 1, what="the second version alone")
    assert counter(page, 1) == "2/2"
    assert flat(page.locator(BOTS).first.inner_text()) == flat(second.content)


def test_an_edited_question_is_a_version_with_its_own_answer(
    page: Any, ui_db: Engine, viewport: dict[str, int], wait_for: Callable[..., None]
) -> None:
    gangneung, sokcho = (f"{city} 맛집 알려줘 ({viewport['width']})" for city in ("강릉", "속초"))
    send_chat(page, gangneung)
    settled(page)
    wait_for(lambda: len(answers_to(ui_db, gangneung)) == 1, what="the answer stored")
    [original_answer] = answers_to(ui_db, gangneung)
    page.locator(USERS).first.hover()
    page.locator("#chat-bot").locator(EDIT).first.click()
    page.locator("#chat-bot textarea.edit-textarea").fill(sokcho)
    page.locator("#chat-bot").locator(SUBMIT).first.click()
    wait_for(lambda: counter(page, 0) == "2/2", what="‹2/2› on the edited question")
    settled(page)
    arrow(page, 0, PREV).click()  # the question as first asked, with its own answer
    wait_for(
        lambda: flat(page.locator(USERS).first.inner_text()) == flat(gangneung),
        what="the first version of the question",
    )
    assert counter(page, 0) == "1/2"
    assert flat(page.locator(BOTS).first.inner_text()) == flat(original_answer.content)


def test_an_answer_cut_by_length_goes_on_with_one_click(
    page: Any,
    ui_db: Engine,
    viewport: dict[str, int],
    screenshot: Callable[[Any, str], Path],
    wait_for: Callable[..., None],
) -> None:
    question = f"옛날이야기 하나 해 줘 {LONG} {viewport['width']}"
    send_chat(page, question)
    settled(page)
    wait_for(lambda: len(answers_to(ui_db, question)) == 1, what="the answer stored")
    [cut] = answers_to(ui_db, question)
    assert cut.finish_reason == "length"
    more = page.locator("#chat-bot .kc-continue")
    more.wait_for(state="visible")
    if viewport == PHONE:
        screenshot(page, "continue-phone")
    more.click()

    def grown() -> Message | None:
        [answer] = answers_to(ui_db, question)  # one answer: it grows in place
        return answer if len(answer.content) > len(cut.content) else None

    wait_for(lambda: grown() is not None, what="the stored answer grown in place")
    settled(page)
    answer = grown()
    assert answer is not None and answer.id == cut.id
    assert answer.content.startswith(cut.content)
    assert (answer.completion_tokens or 0) > (cut.completion_tokens or 0)
    wait_for(
        lambda: flat(page.locator(BOTS).first.inner_text()) == flat(answer.content),
        what="the whole answer on screen",
    )
    assert page.locator(BOTS).count() == 1
