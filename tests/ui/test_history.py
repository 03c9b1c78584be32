"""The history people look for (issue #29): each conversation with when it was last active,
search by title or by what was said, export to read (Markdown) and to keep (JSON), and on a
390 px phone a drawer that ☰ opens and picking a conversation closes. Headless Chromium against
the real app; the database is the witness."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import Engine

from kindchat.feedback.db import session_scope
from kindchat.feedback.models import Conversation
from kindchat.ui import strings

from .conftest import (  # type: ignore[import-not-found]
    PHONE,
    show_history,
    start_new_chat,
)
from .test_chat_features import (  # type: ignore[import-not-found]
    USERS,
    conversation_of,
    send_chat,
    settled,
)

pytestmark = pytest.mark.browser

HISTORY = "#chat-history label"


def labels(page: Any) -> list[str]:
    return [" ".join(t.split()) for t in page.locator(HISTORY).all_inner_texts()]


def test_search_finds_a_conversation_by_what_was_said_and_dates_show(
    page: Any, ui_db: Engine, viewport: dict[str, int], wait_for: Callable[..., None]
) -> None:
    for question in ("제주도 렌터카 예약 방법", "떡볶이 맛있게 만드는 법"):
        start_new_chat(page)
        page.wait_for_timeout(500)  # the new chat's events have all landed
        send_chat(page, question)
        settled(page)
        wait_for(lambda q=question: conversation_of(ui_db, q) is not None, what="stored")
    show_history(page)
    wait_for(lambda: len(labels(page)) == 2, what="both in the history")
    assert all(f" · {strings.TODAY_AT.split()[0]} " in label for label in labels(page))

    search = page.locator("#chat-search input, #chat-search textarea").first
    search.fill("렌터카")
    wait_for(lambda: labels(page) and all("렌터카" in x for x in labels(page)), what="found")
    assert len(labels(page)) == 1
    search.fill("없는 말 찾기")
    wait_for(lambda: not labels(page), what="nothing found")
    page.get_by_text(strings.SEARCH_NONE).first.wait_for()
    search.fill("")
    wait_for(lambda: len(labels(page)) == 2, what="everything again")


def test_export_gives_markdown_to_read_and_json_to_keep(
    page: Any, ui_db: Engine, viewport: dict[str, int], wait_for: Callable[..., None]
) -> None:
    send_chat(page, "내보낼 대화예요")
    settled(page)
    wait_for(lambda: conversation_of(ui_db, "내보낼 대화예요") is not None, what="stored")
    show_history(page)
    page.locator("#chat-manage").get_by_text(strings.MANAGE).click()
    page.locator("#chat-export").click()
    links = page.locator("#chat-export-file a[download]")
    wait_for(lambda: links.count() == 2, what="two files to download")
    saved: dict[str, str] = {}
    for i in range(2):
        with page.expect_download() as download:
            links.nth(i).click()
        path = download.value.path()
        saved[download.value.suggested_filename.rsplit(".", 1)[-1]] = Path(path).read_text("utf-8")
    markdown, raw = saved["md"], json.loads(saved["json"])
    assert markdown.startswith("# 내보낼 대화예요")
    assert f"**{strings.EXPORT_ME}**\n\n내보낼 대화예요" in markdown
    assert f"**{strings.EXPORT_KINDCHAT}**" in markdown
    assert [m["role"] for m in raw["messages"]] == ["user", "assistant"]
    assert raw["messages"][1]["content"].strip() in markdown


def test_on_a_phone_the_history_is_a_drawer(
    page: Any,
    ui_db: Engine,
    screenshot: Callable[[Any, str], Path],
    wait_for: Callable[..., None],
) -> None:
    page.set_viewport_size(PHONE)
    send_chat(page, "서랍에서 다시 열 대화")
    settled(page)
    wait_for(lambda: conversation_of(ui_db, "서랍에서 다시 열 대화") is not None, what="stored")
    page.locator("#chat-new-phone").click()  # a new chat from the first screen
    page.wait_for_function("sel => !document.querySelectorAll(sel).length", arg=USERS)
    sidebar = page.locator("#chat-sidebar")
    assert not sidebar.is_visible()  # not on the first screen: the chat and its input are
    opener = page.locator("#chat-drawer-open")
    box = opener.bounding_box()
    assert box is not None and box["y"] + box["height"] <= PHONE["height"]
    opener.click()
    sidebar.wait_for(state="visible")
    drawer = sidebar.bounding_box()
    assert drawer is not None and drawer["x"] <= 1 and drawer["width"] <= 0.9 * PHONE["width"]
    wait_for(lambda: any("서랍에서" in x for x in labels(page)), what="the conversation listed")
    screenshot(page, "history-drawer-phone")
    page.locator(HISTORY).filter(has_text="서랍에서 다시 열 대화").first.click()
    sidebar.wait_for(state="hidden")  # picking one closes the drawer, on the conversation
    wait_for(
        lambda: (
            page.locator(USERS).count() == 1
            and page.locator(USERS).first.inner_text().strip() == "서랍에서 다시 열 대화"
        ),
        what="the conversation opened",
    )
    opener.click()
    sidebar.wait_for(state="visible")
    page.locator("#chat-drawer-close").click()  # ✕ closes it too
    sidebar.wait_for(state="hidden")
    assert not page.locator("#chat-drawer-open").is_hidden()


def test_on_a_desktop_the_history_is_a_column_without_a_drawer(page: Any) -> None:
    assert page.locator("#chat-sidebar").is_visible() and page.locator("#chat-new").is_visible()
    for phone_only in ("#chat-drawer-open", "#chat-drawer-close", "#chat-new-phone"):
        assert page.locator(phone_only).is_hidden()


def open_menu(page: Any, title: str, wait_for: Callable[..., None]) -> Any:
    """⋯ beside the conversation `title` in the history: its menu, open beside it."""
    show_history(page)
    item = page.locator(HISTORY).filter(has_text=title).first
    wait_for(lambda: item.locator(".kc-menu").count() == 1, what="⋯ on the conversation")
    more = item.locator(".kc-menu")
    more.click()
    menu = page.locator(".kc-popup[role=menu]")
    menu.wait_for(state="visible")
    assert more.get_attribute("aria-expanded") == "true"
    spot, box = more.bounding_box(), menu.bounding_box()
    assert spot is not None and box is not None
    assert (
        abs(box["y"] - (spot["y"] + spot["height"])) < 12 or box["y"] + box["height"] <= spot["y"]
    )
    assert box["x"] >= 0 and box["x"] + box["width"] <= page.viewport_size["width"]
    return menu


def opened(page: Any, question: str) -> bool:
    users = page.locator(USERS)
    return users.count() == 1 and users.first.inner_text().strip() == question


def test_the_menu_of_a_conversation_opens_beside_it_in_the_history(
    page: Any,
    ui_db: Engine,
    viewport: dict[str, int],
    screenshot: Callable[[Any, str], Path],
    wait_for: Callable[..., None],
) -> None:
    width = viewport["width"]
    first, second = f"메뉴로 고칠 대화 ({width})", f"그다음 대화 ({width})"
    for question in (first, second):
        start_new_chat(page)
        page.wait_for_timeout(500)
        send_chat(page, question)
        if question == second:  # while an answer streams, no menu (the chat would change)
            page.wait_for_function(
                "() => { const stop = document.querySelector('#chat-stop'); "
                "const more = [...document.querySelectorAll('#chat-history .kc-menu')]; "
                "return !!stop?.offsetParent && more.length > 0 && more.every((b) => b.disabled) }"
            )
        settled(page)
        wait_for(lambda q=question: conversation_of(ui_db, q) is not None, what="stored")
    conversation = conversation_of(ui_db, first)
    assert conversation is not None

    menu = open_menu(page, first, wait_for)
    items = menu.get_by_role("menuitem")
    assert items.all_inner_texts() == list(strings.HISTORY_MENU_ITEMS.values())
    assert page.evaluate("() => document.activeElement?.getAttribute('role')") == "menuitem"
    screenshot(page, f"history-menu-{width}")
    # a new width (a phone turned, a window resized; a full-page screenshot resizes the page
    # too): the menu stays open beside its ⋯, the focus in it
    page.set_viewport_size({"width": width + 24, "height": viewport["height"]})
    page.wait_for_timeout(200)
    assert menu.is_visible()
    assert page.evaluate("() => document.activeElement?.getAttribute('role')") == "menuitem"
    opener = page.locator(HISTORY).filter(has_text=first).first.locator(".kc-menu").bounding_box()
    box = menu.bounding_box()
    assert opener is not None and box is not None
    assert abs(box["x"] + box["width"] - (opener["x"] + opener["width"])) <= 8  # under/over it
    page.set_viewport_size(viewport)
    page.keyboard.press("Escape")  # closes the menu, nothing else: the answer on screen stays
    menu.wait_for(state="detached")
    assert opened(page, second)
    more = page.locator(HISTORY).filter(has_text=first).first.locator(".kc-menu")
    assert more.get_attribute("aria-expanded") == "false"
    page.wait_for_function(  # back on its ⋯ (kept there when the history is redrawn)
        "() => document.activeElement?.classList.contains('kc-menu')", timeout=5_000
    )
    assert first in (more.get_attribute("aria-label") or "")  # named for its conversation

    # rename: that conversation opens, its title in the box, ready to type
    open_menu(page, first, wait_for).get_by_role("menuitem", name="이름 바꾸기").click()
    wait_for(lambda: opened(page, first), what="the conversation of that ⋯")
    title = page.locator("#chat-title input, #chat-title textarea").first
    wait_for(lambda: title.input_value() == first, what="its title in the box")
    wait_for(
        lambda: page.evaluate("() => !!document.activeElement?.closest('#chat-title')"),
        what="the focus in the title box",
    )
    title.fill("이름을 바꾼 대화")
    page.locator("#chat-rename").click()

    def stored_title() -> str | None:
        with session_scope(ui_db) as session:
            row = session.get(Conversation, conversation.id)
            return row.title if row is not None else None

    wait_for(lambda: stored_title() == "이름을 바꾼 대화", what="the new title stored")
    wait_for(lambda: any("이름을 바꾼 대화" in x for x in labels(page)), what="the list renamed")

    # share, from the other conversation's screen: the link is that conversation's
    start_new_chat(page)
    open_menu(page, "이름을 바꾼 대화", wait_for).get_by_role("menuitem", name="공유").click()
    link = page.locator("#chat-share-link input, #chat-share-link textarea").first
    wait_for(lambda: "/shared/" in link.input_value(), what="the share link")
    with session_scope(ui_db) as session:
        shared = session.get(Conversation, conversation.id)
        assert shared is not None and shared.share_token
        assert link.input_value().endswith(shared.share_token)

    # export, from a new chat: the two files are that conversation's
    start_new_chat(page)
    open_menu(page, "이름을 바꾼 대화", wait_for).get_by_role("menuitem", name="내보내기").click()
    links = page.locator("#chat-export-file a[download]")
    wait_for(lambda: links.count() == 2, what="two files to download")
    files = {}
    for i in range(2):
        with page.expect_download() as download:
            links.nth(i).click()
        files[download.value.suggested_filename.rsplit(".", 1)[-1]] = Path(
            download.value.path()
        ).read_text("utf-8")
    assert files["md"].startswith("# 이름을 바꾼 대화") and first in files["md"]

    # delete: asks once; yes deletes that conversation, not the one open before
    open_menu(page, second, wait_for).get_by_role("menuitem", name="삭제").click()
    wait_for(lambda: opened(page, second), what="the conversation to delete, open")
    page.locator("#chat-delete-yes").click()
    page.get_by_text(strings.DELETED).first.wait_for()
    other = conversation_of(ui_db, second)
    assert other is not None and other.deleted_at is not None
    assert stored_title() == "이름을 바꾼 대화"
    with session_scope(ui_db) as session:
        kept = session.get(Conversation, conversation.id)
        assert kept is not None and kept.deleted_at is None


def test_a_menu_item_for_a_conversation_of_another_session_opens_nothing(
    page: Any, browser: Any, ui_server: Any, ui_db: Engine, wait_for: Callable[..., None]
) -> None:
    question = "남의 메뉴로 열 수 없는 대화"
    send_chat(page, question)
    settled(page)
    wait_for(lambda: conversation_of(ui_db, question) is not None, what="stored")
    conversation = conversation_of(ui_db, question)
    assert conversation is not None
    stranger = browser.new_context(locale="ko-KR")
    try:
        other = stranger.new_page()
        other.goto(f"{ui_server.url}/")
        other.wait_for_selector("#chat-input textarea")
        other.wait_for_function(  # its page has loaded, with a session of its own
            "() => !!document.querySelector('#chat-model input')?.value"
        )
        send_chat(other, "제 대화예요")
        settled(other)
        other.evaluate(  # what the menu's script would write, with the victim's id
            """(id) => {
              const box = document.querySelector('#chat-menu-pick textarea, #chat-menu-pick input');
              box.value = `${id}:share:1`;
              box.dispatchEvent(new Event('input', { bubbles: true }));
              setTimeout(() => document.querySelector('#chat-menu-go').click(), 0);
            }""",
            conversation.id,
        )
        other.get_by_text(strings.ERROR_NOT_FOUND).first.wait_for()
        assert question not in other.content()
        assert [u.strip() for u in other.locator(USERS).all_inner_texts()] == ["제 대화예요"]
    finally:
        stranger.close()
    with session_scope(ui_db) as session:
        row = session.get(Conversation, conversation.id)
        assert row is not None and not row.share_token
