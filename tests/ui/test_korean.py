"""No English left for a Korean user (issue #29): whatever the browser's language, Gradio's own
words (its buttons, labels for screen readers, toast titles) are Korean, as are ours.
Headless Chromium against the real app, in each tab, after an answer and an error."""

from __future__ import annotations

import re
from typing import Any

import pytest

from kindchat.ui import strings

from .conftest import DESKTOP, PHONE  # type: ignore[import-not-found]
from .test_chat_features import send_chat, settled  # type: ignore[import-not-found]

pytestmark = pytest.mark.browser

# Words that stay as they are: the product's name, key names, file formats
ALLOWED = {"kindchat", "Ctrl", "Shift", "Enter", "Esc", "Markdown", "JSON", "SFT", "PPO", "DPO"}
ENGLISH = re.compile(r"[A-Za-z]{3,}")

FIND = """() => {
  const found = new Set();
  const shown = (el) => el.offsetParent !== null || el.getClientRects().length > 0;
  for (const el of document.querySelectorAll('body *')) {
    if (el.closest('svg, style, script, [hidden]') || !shown(el)) continue;
    for (const name of ['aria-label', 'title', 'placeholder']) {
      const value = el.getAttribute(name);
      if (value) found.add(value);
    }
    for (const node of el.childNodes) {
      if (node.nodeType === 3 && node.textContent.trim()) found.add(node.textContent.trim());
    }
  }
  return [...found];
}"""


def english_in(page: Any, skip: set[str]) -> list[str]:
    """The page's words for people that hold English (the model's own answers skipped)."""
    skip = {" ".join(text.split()) for text in skip}  # spaces as the page collapses them
    return [
        text
        for text in page.evaluate(FIND)
        if " ".join(text.split()) not in skip and set(ENGLISH.findall(text)) - ALLOWED
    ]


@pytest.mark.parametrize("size", [DESKTOP, PHONE], ids=["desktop", "phone"])
@pytest.mark.parametrize("locale", ["en-US", "ko-KR"])
def test_no_english_for_people_whatever_the_browsers_language(
    browser: Any, ui_server: Any, locale: str, size: dict[str, int]
) -> None:
    context = browser.new_context(locale=locale, viewport=size)
    try:
        page = context.new_page()
        page.goto(f"{ui_server.url}/")
        page.wait_for_selector("#chat-input textarea")
        send_chat(page, "안녕하세요")
        settled(page)
        page.wait_for_timeout(500)
        answers = set(page.locator('#chat-bot [data-testid="bot"]').all_inner_texts())
        skip = {a.strip() for a in answers} | {
            f"{strings.GRADIO_ARIA_PREFIXES[p]}{a.strip()}"
            for p in strings.GRADIO_ARIA_PREFIXES
            for a in answers
        }
        assert not english_in(page, skip), english_in(page, skip)

        page.locator("#chat-input textarea").fill("가" * 10_000)  # an error and its toast
        page.locator("#chat-send").click()
        page.locator("#chat-error").wait_for(state="visible")
        toast = page.get_by_test_id("toast-body").first
        toast.wait_for()
        assert strings.TITLE_WARNING in toast.inner_text()
        assert not english_in(page, skip), english_in(page, skip)

        for tab in (strings.TAB_ARENA, strings.TAB_LEADERBOARD):
            page.get_by_role("tab", name=tab).click()
            page.wait_for_timeout(500)
            assert not english_in(page, skip), (tab, english_in(page, skip))
    finally:
        context.close()
