"""The Gradio Blocks of kindchat, built by one function per tab and mounted at `/` of the API app.

Handlers reach the app's services (:mod:`kindchat.serve.services`, created in the FastAPI
lifespan) through a `ServicesRef`, so the UI stores, rates, votes and ranks with the same code as
the HTTP API. Every browser gets a server-signed session in an HttpOnly cookie on its first page
load (new sessions limited per address); the page reads it server-side into a `gr.State`, which
the browser cannot set, and its ratings and votes are attributed to it. Every handler is checked
against the cookie of its own request, and counted on the API's limits (:mod:`kindchat.ui.guard`).
"""

from __future__ import annotations

import inspect
import json
import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import gradio as gr
from fastapi import FastAPI
from starlette.datastructures import MutableHeaders
from starlette.requests import HTTPConnection
from starlette.routing import Match, Mount
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from kindchat.errors import KindchatError
from kindchat.serve.auth import SESSION_COOKIE
from kindchat.serve.errors import ApiError
from kindchat.serve.gate import Gate
from kindchat.ui import strings
from kindchat.ui.arena import build_arena_tab
from kindchat.ui.bootstrap import build_banner
from kindchat.ui.chat import build_chat_tab
from kindchat.ui.common import OnLoad, ServicesRef
from kindchat.ui.dashboard import build_dashboard_tab
from kindchat.ui.guard import PageGuard, action, cookie_token, guard_events
from kindchat.ui.leaderboard import build_leaderboard_tab

logger = logging.getLogger(__name__)

API_PREFIX = "/v1/"
# The browser languages whose Gradio words are given in Korean (Gradio's i18n picks the
# browser's language; its own English, loaded after these, wins for plain "en": the page's
# script then puts the Korean words in the labels)
GRADIO_LOCALES = (
    "ko ko-KR en-US en-GB en-CA en-AU en-IN ja ja-JP zh-CN zh-TW zh-HK de-DE fr-FR es-ES "
    "es-MX pt-BR ru-RU vi vi-VN th-TH id-ID"
).split()
SHARE_PREFIX = "/shared/"  # read-only share pages, served by the API app
FONTS = [
    "NanumGothic",
    "Nanum Gothic",
    "Noto Sans CJK KR",
    "Malgun Gothic",
    "sans-serif",
    "Noto Color Emoji",
]
CSS = """
#chat-bot .message-content, #arena-a .message-content, #arena-b .message-content { font-size: 15px; }
#admin-actions { padding: 8px; }
/* the leaderboard's Korean headers break between words, never inside one */
#leaderboard-table [role="columnheader"], #leaderboard-table [role="columnheader"] *,
#leaderboard-matrix [role="columnheader"], #leaderboard-matrix [role="columnheader"] * {
  white-space: nowrap !important; word-break: keep-all !important; }
#leaderboard-table [role="gridcell"] *, #leaderboard-matrix [role="gridcell"] * {
  word-break: keep-all !important; }
#chat-error { color: var(--error-text-color, #b91c1c); }
/* ‹k/n› between the versions of a message (regenerated answers, edited questions) */
#chat-bot .kc-branch { display: inline-flex; align-items: center; gap: 2px; margin-right: 4px;
  font-size: 13px; color: var(--block-label-text-color); user-select: none; }
#chat-bot .kc-branch-arrow { min-width: 24px; padding: 0 6px; border-radius: 6px; font-size: 16px; }
#chat-bot .kc-branch-arrow:hover:not(:disabled) { background: var(--block-background-fill); }
#chat-bot .kc-branch-arrow:disabled { opacity: 0.35; cursor: default; }
#chat-bot .kc-continue { margin-left: 4px; padding: 1px 8px; border-radius: 6px; font-size: 13px;
  border: 1px solid var(--border-color-primary); color: var(--body-text-color); }
/* ⋯ on each conversation of the history: its menu */
#chat-history label { position: relative; padding-right: 28px !important; }
#chat-history .kc-menu { position: absolute; right: 4px; top: 50%; transform: translateY(-50%);
  padding: 0 6px; border-radius: 6px; font-size: 16px; line-height: 1.4; }
#chat-history .kc-menu:hover { background: var(--block-background-fill); }
.kc-popup { position: fixed; z-index: 1100; display: flex; flex-direction: column; min-width: 11rem;
  padding: 4px; border-radius: 8px; border: 1px solid var(--border-color-primary);
  background: var(--background-fill-primary); box-shadow: 0 4px 16px rgba(0, 0, 0, 0.18); }
.kc-popup button { text-align: left; padding: 8px 10px; border: none; border-radius: 6px;
  background: transparent; font-size: 14px; color: var(--body-text-color); cursor: pointer; }
.kc-popup button:hover, .kc-popup button:focus { background: var(--block-background-fill); outline: none; }
.kc-popup button.kc-danger { color: var(--error-text-color, #b91c1c); }
/* the edit box of a sent message as wide as the message column */
#chat-bot .message-wrap textarea.edit-textarea { width: 100% !important; min-width: min(36rem, 80vw); }
/* On a phone the conversation and its input come first, on the first screen; the history and
   the settings follow below them. */
@media (max-width: 640px) {
  #header p { display: none; }
  #chat-main { order: -1; }
  #chat-bot { height: 48vh !important; max-height: 48vh; }
  /* the history is a drawer: ☰ opens it over the chat */
  #chat-sidebar { display: none !important; }
  #chat-sidebar.kc-open {
    display: flex !important; position: fixed; top: 0; left: 0; bottom: 0; z-index: 1000;
    width: min(85vw, 340px); overflow-y: auto; padding: 12px;
    background: var(--background-fill-primary); box-shadow: 0 0 24px rgba(0, 0, 0, 0.3);
  }
  #chat-phone-bar { flex-wrap: nowrap; }
}
@media (min-width: 641px) {
  #chat-phone-bar, #chat-drawer-close { display: none !important; }
}
"""

# The page is Korean (screen readers pick their voice from `lang`), and has the shortcuts people
# know from ChatGPT: Ctrl/⌘+Shift+O starts a new chat, Esc stops the answer streaming. Buttons
# whose text is an emoji and a word get a Korean `aria-label` that says what they do.
HEAD = """
<script>
(() => {
  document.documentElement.lang = "ko";
  // resolved when the page has opened (its first tab's opening step ran), or after 15 s
  window.kindchatReady = new Promise((resolve) => {
    window.kindchatOpened = resolve;
    setTimeout(resolve, 15000);
  });
  const [labels, english, prefixes, branchWords, toastTitles, menuWords] = %s;
  const visible = (el) => el && el.offsetParent !== null;
  const label = () => {
    for (const [id, text] of Object.entries(labels)) {
      const button = document.querySelector(`#${id}`);
      if (button && button.getAttribute("aria-label") !== text) {
        button.setAttribute("aria-label", text);
      }
    }
    // Gradio's words its i18n leaves in English ("Liked", "More tabs", …)
    for (const [word, korean] of Object.entries(english)) {
      for (const el of document.querySelectorAll(`[aria-label="${word}"]`)) {
        el.setAttribute("aria-label", korean);
        if (el.title === word) el.title = korean;
      }
    }
    // Gradio titles a toast with its English type ("Warning", "Info", …), whatever it is given
    for (const title of document.querySelectorAll('[data-testid="toast-body"] .toast-title')) {
      const node = [...title.childNodes]
        .find((n) => n.nodeType === 3 && toastTitles[n.textContent.trim()]);
      if (node) node.textContent = toastTitles[node.textContent.trim()] + " ";
    }
    // Gradio's progress line over a component that waits ("processing |", "queue: 1/2 |")
    for (const tracker of document.querySelectorAll('[data-testid="status-tracker"]')) {
      const walker = document.createTreeWalker(tracker, NodeFilter.SHOW_TEXT);
      for (let node = walker.nextNode(); node; node = walker.nextNode()) {
        const text = node.textContent;
        if (text.includes("processing")) node.textContent = text.replace("processing", "처리 중");
        else if (text.startsWith("queue:")) node.textContent = text.replace("queue:", "대기");
      }
    }
    // Gradio's live regions for screen readers ("Loading" while a tab's content arrives)
    for (const status of document.querySelectorAll('[role="status"]')) {
      for (const node of status.childNodes) {
        const korean = node.nodeType === 3 && english[node.textContent.trim()];
        if (korean) node.textContent = korean;
      }
    }
    for (const [start, korean] of Object.entries(prefixes)) {
      for (const el of document.querySelectorAll(`[aria-label^="${start}"]`)) {
        el.setAttribute("aria-label", korean + el.getAttribute("aria-label").slice(start.length));
      }
    }
  };
  // ‹k/n› next to the buttons of each message that has other versions. The server names
  // them in the chatbot's classes (kcb-<turn>-<k>-<n>); a click writes "<turn>:<-1|1>" into
  // the page's hidden box and presses its hidden button. None while an answer streams.
  const pick = (turn, step) => {
    const box = document.querySelector("#chat-branch-pick textarea, #chat-branch-pick input");
    const go = document.querySelector("#chat-branch-go");
    if (!box || !go) return;
    box.value = `${turn}:${step}:${Date.now()}`;
    box.dispatchEvent(new Event("input", { bubbles: true }));
    setTimeout(() => go.click(), 0);
  };
  const arrow = (text, name, turn, step, off) => {
    const button = document.createElement("button");
    button.type = "button";
    button.className = "kc-branch-arrow";
    button.textContent = text;
    button.setAttribute("aria-label", name);
    button.title = name;
    button.disabled = off;
    button.addEventListener("click", (event) => { event.stopPropagation(); pick(turn, step); });
    return button;
  };
  const branches = () => {
    const bot = document.querySelector("#chat-bot");
    if (!bot) return;
    const marks = {};
    let cut = -1;
    for (const name of bot.classList) {
      const m = /^kcb-(\d+)-(\d+)-(\d+)$/.exec(name);
      if (m) marks[+m[1]] = [+m[2], +m[3]];
      const c = /^kcc-(\d+)$/.exec(name);
      if (c) cut = +c[1];
    }
    const streaming = visible(document.querySelector("#chat-stop"));
    const rows = [...bot.querySelectorAll(".message-row")].filter(
      (row) => row.querySelector('[data-testid="user"], [data-testid="bot"]'));
    rows.forEach((row, turn) => {
      const after = row.nextElementSibling;
      const place = after && after.classList.contains("message-buttons")
        ? after.querySelector(".icon-button-wrapper") || after : null;
      const mark = streaming ? null : marks[turn];
      const goOn = !streaming && turn === cut;
      const key = (mark ? `${turn}:${mark[0]}/${mark[1]}` : "") + (goOn ? ":more" : "");
      const old = place && place.querySelector(":scope > .kc-branch");
      if ((old ? old.dataset.key : "") === key) return;
      if (old) old.remove();
      if (!key || !place) return;
      const nav = document.createElement("span");
      nav.className = "kc-branch";
      nav.dataset.key = key;
      if (mark) {
        const [k, n] = mark;
        const count = document.createElement("span");
        count.textContent = `${k}/${n}`;
        count.setAttribute("aria-label", branchWords.of.replace("{k}", k).replace("{n}", n));
        nav.append(arrow("‹", branchWords.prev, turn, -1, k <= 1), count,
                   arrow("›", branchWords.next, turn, 1, k >= n));
      }
      if (goOn) {
        const more = document.createElement("button");
        more.type = "button";
        more.className = "kc-continue";
        more.textContent = `▶ ${branchWords.continue}`;
        more.setAttribute("aria-label", branchWords.continue_label);
        more.title = branchWords.continue_label;
        more.addEventListener("click", (event) => {
          event.stopPropagation();
          document.querySelector("#chat-continue-go")?.click();
        });
        nav.append(more);
      }
      place.prepend(nav);
    });
  };
  // ⋯ on each conversation of the history: a menu beside it (rename, share, export, delete).
  // An item writes "<conversation id>:<action>" into the page's hidden box and presses its
  // hidden button: the server opens that conversation and does it (the id is checked there).
  let popup = null;
  const closeMenu = (back) => {
    if (!popup) return;
    const opener = popup.kcOpener;
    popup.remove();
    popup = null;
    opener?.setAttribute("aria-expanded", "false");
    if (back) opener?.focus();
  };
  // beside its ⋯: under it, or over it when the screen ends first
  const placeMenu = () => {
    const spot = popup.kcOpener.getBoundingClientRect();
    if (!spot.width) return closeMenu(false);  // ⋯ out of sight (the drawer closed)
    const size = popup.getBoundingClientRect();
    const left = Math.max(4, Math.min(spot.right - size.width, window.innerWidth - size.width - 4));
    const below = spot.bottom + 4 + size.height <= window.innerHeight;
    popup.style.left = `${left}px`;
    popup.style.top = `${below ? spot.bottom + 4 : Math.max(4, spot.top - size.height - 4)}px`;
  };
  const openMenu = (more, id) => {
    closeMenu(false);
    popup = document.createElement("div");
    popup.className = "kc-popup";
    popup.setAttribute("role", "menu");
    popup.setAttribute("aria-label", more.getAttribute("aria-label"));
    popup.kcOpener = more;
    popup.kcId = id;
    for (const [action, text] of Object.entries(menuWords.items)) {
      const item = document.createElement("button");
      item.type = "button";
      item.setAttribute("role", "menuitem");
      item.tabIndex = -1;
      item.dataset.action = action;
      item.textContent = text;
      if (action === "delete") item.classList.add("kc-danger");
      item.addEventListener("click", (event) => {
        event.stopPropagation();
        closeMenu(true);  // the focus waits on ⋯ until the item's target has it
        const box = document.querySelector("#chat-menu-pick textarea, #chat-menu-pick input");
        const go = document.querySelector("#chat-menu-go");
        if (!box || !go) return;
        box.value = `${id}:${action}:${Date.now()}`;
        box.dispatchEvent(new Event("input", { bubbles: true }));
        setTimeout(() => go.click(), 0);
      });
      popup.append(item);
    }
    popup.addEventListener("keydown", (event) => {
      const items = [...popup.querySelectorAll("button")];
      const at = items.indexOf(document.activeElement);
      const step = { ArrowDown: 1, ArrowUp: -1 }[event.key];
      const end = { Home: 0, End: items.length - 1 }[event.key];
      if (event.key === "Escape") {
        event.preventDefault();
        event.stopPropagation();
        closeMenu(true);
      } else if (step) {
        event.preventDefault();
        items[(at + step + items.length) %% items.length].focus();
      } else if (end !== undefined) {
        event.preventDefault();
        items[end].focus();
      } else if (event.key === "Tab") closeMenu(true);  // and Tab goes on from ⋯
    });
    document.body.append(popup);
    placeMenu();
    more.setAttribute("aria-expanded", "true");
    popup.querySelector("button")?.focus({ preventScroll: true });
  };
  // The history re-renders (a list re-sorted after an answer reuses its rows) or scrolls: a
  // menu left open would float beside another conversation than the one it acts on.
  const menuStale = () => {
    if (!popup) return;
    const opener = popup.kcOpener;
    const row = opener.isConnected && opener.closest("label")?.querySelector("input");
    if (!row || row.value !== popup.kcId) closeMenu(false);
  };
  // the page or the drawer scrolls: the menu stays beside its ⋯
  document.addEventListener("scroll", () => { if (popup) placeMenu(); }, true);
  document.addEventListener("click", (event) => {
    if (popup && !popup.contains(event.target) && event.target !== popup.kcOpener) closeMenu(false);
  }, true);
  // a new size moves the history (the drawer, the column): the menu follows its ⋯ and closes
  // only when the ⋯ is out of sight. (It closed at every new width, which dropped a keyboard
  // user's focus from the open menu to the page: a phone turned, a window resized.)
  window.addEventListener("resize", () => { if (popup) placeMenu(); });
  const menus = () => {
    menuStale();
    // no menu while an answer streams (as no ‹k/n›): the chat would change under it
    const streaming = visible(document.querySelector("#chat-stop"));
    for (const item of document.querySelectorAll("#chat-history label")) {
      const title = item.querySelector("span")?.textContent.trim() || "";
      const name = `${title}: ${menuWords.menu}`;
      const old = item.querySelector(":scope > .kc-menu");
      if (old) {
        if (old.getAttribute("aria-label") !== name) {
          old.setAttribute("aria-label", name);
          old.title = menuWords.menu;
        }
        if (old.disabled !== streaming) old.disabled = streaming;
        continue;
      }
      const more = document.createElement("button");
      more.type = "button";
      more.className = "kc-menu";
      more.textContent = "⋯";
      more.setAttribute("aria-label", name);
      more.disabled = streaming;
      more.setAttribute("aria-haspopup", "menu");
      more.setAttribute("aria-expanded", "false");
      more.title = menuWords.menu;
      more.addEventListener("click", (event) => {
        event.preventDefault();
        event.stopPropagation();
        const id = item.querySelector("input")?.value;
        if (!id) return;
        if (popup && popup.kcOpener === more) closeMenu(true);
        else openMenu(more, id);
      });
      item.append(more);
    }
  };
  new MutationObserver(() => { label(); branches(); menus(); }).observe(document.documentElement, {
    childList: true, subtree: true, characterData: true,
    attributes: true, attributeFilter: ["aria-label", "class"],
  });
  document.addEventListener("keydown", (event) => {
    const key = event.key.toLowerCase();
    // Editing a sent message: Enter sends the edit, Shift+Enter breaks the line
    const editing = event.target.closest && event.target.closest("#chat-bot textarea.edit-textarea");
    if (editing && key === "enter" && !event.shiftKey && !event.isComposing) {
      const submit = document.querySelector(['보내기', '제출', 'Submit'].map(
        (name) => `#chat-bot button[aria-label="${name}"]`).join(", "));
      if (submit) {
        event.preventDefault();
        submit.click();
        return;
      }
    }
    if ((event.ctrlKey || event.metaKey) && event.shiftKey && key === "o") {
      event.preventDefault();
      document.querySelector("#chat-new")?.click();
    } else if (key === "escape") {
      const stop = document.querySelector("#chat-stop");
      if (visible(stop)) {
        event.preventDefault();
        stop.click();
      }
    }
  });
})();
</script>
"""

TABS: list[tuple[str, Callable[[ServicesRef], OnLoad]]] = [
    (strings.TAB_CHAT, build_chat_tab),
    (strings.TAB_ARENA, build_arena_tab),
    (strings.TAB_LEADERBOARD, build_leaderboard_tab),
]
ADMIN_PATH = "admin"  # the operators' page (the dashboard, behind the admin token): /admin


@dataclass
class PageSession:
    """The page's signed session, read from its cookie when it opens (server-side state)."""

    session_id: str = ""


def page_session(services: ServicesRef) -> Callable[[gr.Request], PageSession]:
    def load(request: gr.Request) -> PageSession:
        """The session of the page's signed cookie ("" without one: feedback then explains)."""
        session_id = services().gate.token_session(cookie_token(request))
        if session_id is None:
            logger.info("a page without a valid session cookie")
        return PageSession(session_id or "")

    return load


def for_page(fn: Callable[..., Any]) -> Callable[..., Any]:
    """A tab's page-open step, called with the page's session id; the page check sees the
    PageSession argument (an async function stays one, so Gradio runs it as it is)."""
    if inspect.iscoroutinefunction(fn):

        @action("page")
        async def opened(page: PageSession, *inputs: Any) -> Any:
            return await fn(page.session_id, *inputs)

        return opened

    @action("page")
    def opened_sync(page: PageSession, *inputs: Any) -> Any:
        return fn(page.session_id, *inputs)

    return opened_sync


def build_ui(services: ServicesRef, page_checks: bool = True) -> gr.Blocks:
    """All tabs; each tab's page-open step runs once the session is known."""
    with gr.Blocks(title=strings.PAGE_TITLE, analytics_enabled=False) as demo:
        session = gr.State(PageSession())  # server-side: the browser cannot choose it
        gr.Markdown(strings.HEADER, elem_id="header")
        build_banner(services)
        loads: list[tuple[gr.Tab, OnLoad]] = []
        with gr.Tabs():
            for label, build in TABS:
                with gr.Tab(label) as tab:
                    loads.append((tab, build(services)))
        gr.Navbar(visible="hidden")  # people see one page; operators know /admin (False: shown)
        started = demo.load(page_session(services), None, [session])
        first_opened = None
        for tab, on_load in loads:
            inputs = [session, *on_load.inputs]
            if on_load.on_open:
                opened = started.then(for_page(on_load.fn), inputs, on_load.outputs, js=on_load.js)
                first_opened = first_opened or opened
            if on_load.on_select:
                tab.select(for_page(on_load.fn), inputs, on_load.outputs)
        if first_opened is not None:  # what the chat's send waits for (chat.AFTER_PAGE_OPENED)
            first_opened.then(None, js="() => window.kindchatOpened && window.kindchatOpened()")
    # The dashboard is for operators: a page of its own, out of the people's tabs, its data
    # behind the admin token (as GET /v1/admin/dashboard)
    with demo.route(strings.ADMIN_PAGE, f"/{ADMIN_PATH}", show_in_navbar=False):
        admin_session = gr.State(PageSession())
        dashboard = build_dashboard_tab(services)
        demo.load(page_session(services), None, [admin_session]).then(
            for_page(dashboard.fn), [admin_session, *dashboard.inputs], dashboard.outputs
        )
    demo.queue(default_concurrency_limit=None)  # the model engine batches and limits, not Gradio
    if page_checks:
        guard_events(demo, lambda: services().gate)  # every handler: the cookie's session, limits
    return demo


class UiMount(Mount):
    """The UI's mount at `/`, leaving `/v1/...` to the API: an unknown API path or method then
    gets the API's own 404/405 error JSON instead of the UI's."""

    def matches(self, scope: Scope) -> tuple[Match, Scope]:
        if scope["type"] in ("http", "websocket") and scope["path"].startswith(
            (API_PREFIX, SHARE_PREFIX)
        ):
            return Match.NONE, {}
        return super().matches(scope)


class SessionCookie:
    """Gives a browser that opens the page (GET /) without a valid session cookie a new signed
    session (HttpOnly, SameSite=Lax; Secure over https), counted against the address's limit
    of new sessions. Over that limit the page still opens, without a session (no feedback)."""

    def __init__(self, app: ASGIApp, gate: Callable[[], Gate], max_age_s: int) -> None:
        self.app = app
        self.gate = gate
        self.max_age_s = max_age_s

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] != "GET" or scope["path"] != "/":
            await self.app(scope, receive, send)
            return
        gate = self.gate()
        request = HTTPConnection(scope)
        token = None
        if gate.cookie_session(request) is None:
            try:
                token = gate.new_session(request, via="ui").token
            except (ApiError, KindchatError) as err:
                logger.info("no session for a page from %s: %s", request.client, err)
        if token is None:
            await self.app(scope, receive, send)
            return
        secure = "; Secure" if scope.get("scheme") == "https" else ""
        cookie = (
            f"{SESSION_COOKIE}={token}; Path=/; Max-Age={self.max_age_s}; HttpOnly; "
            f"SameSite=Lax{secure}"
        )

        async def send_with_cookie(message: Message) -> None:
            if message["type"] == "http.response.start":
                MutableHeaders(scope=message).append("set-cookie", cookie)
            await send(message)

        await self.app(scope, receive, send_with_cookie)


def mount_ui(app: FastAPI, page_checks: bool = True) -> FastAPI:
    """Serve the UI at `/` of `app` (its API routes, added before, keep matching first).
    `page_checks=False` (a benchmark's baseline only) leaves out :mod:`kindchat.ui.guard`."""
    demo = build_ui(lambda: app.state.services, page_checks)
    theme = gr.themes.Soft(font=FONTS, font_mono=["NanumGothicCoding", "monospace"])
    gr.mount_gradio_app(
        app,
        demo,
        path="/",
        ssr_mode=False,
        theme=theme,
        css=CSS,
        footer_links=[],
        head=HEAD
        % json.dumps(
            [
                strings.ARIA_LABELS,
                {**strings.ENGLISH_LABELS, **strings.GRADIO_ARIA},
                strings.GRADIO_ARIA_PREFIXES,
                strings.BRANCH_LABELS,
                strings.TOAST_TITLES,
                {"menu": strings.HISTORY_MENU, "items": strings.HISTORY_MENU_ITEMS},
            ],
            ensure_ascii=False,
        ),
        # Gradio's own words in Korean, whatever the browser's language
        i18n=gr.I18n(**{locale: strings.GRADIO_WORDS for locale in GRADIO_LOCALES}),
        enable_monitoring=False,  # Gradio's /monitoring pages: operator data, off
    )
    mount = app.router.routes[-1]
    if not isinstance(mount, Mount):
        raise RuntimeError(f"expected Gradio's mount as the last route, found {mount!r}")
    app.router.routes[-1] = UiMount(mount.path or "/", app=mount.app, name=mount.name)
    if page_checks:
        app.add_middleware(PageGuard, gate=lambda: app.state.gate)
    app.add_middleware(
        SessionCookie,
        gate=lambda: app.state.gate,
        max_age_s=app.state.settings.session_max_age_s,
    )
    return app
