"""The Gradio Blocks of kindchat, built by one function per tab and mounted at `/` of the API app.

Handlers reach the app's :class:`~kindchat.serve.service.ChatService` (created in the FastAPI
lifespan) through a `ServiceRef`, so the UI stores, rates, votes and ranks with the same code as
the HTTP API. Every browser gets a session id (a uuid kept in its local storage) that its
ratings and votes are attributed to.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Callable

import gradio as gr
from fastapi import FastAPI
from starlette.routing import Match, Mount
from starlette.types import Scope

from kindchat.ui import strings
from kindchat.ui.arena import build_arena_tab
from kindchat.ui.bootstrap import build_banner
from kindchat.ui.chat import build_chat_tab
from kindchat.ui.common import OnLoad, ServiceRef
from kindchat.ui.dashboard import build_dashboard_tab
from kindchat.ui.leaderboard import build_leaderboard_tab

logger = logging.getLogger(__name__)

API_PREFIX = "/v1/"
SHARE_PREFIX = "/shared/"  # read-only share pages, served by the API app
SESSION_KEY = "kindchat-session"
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
"""

TABS: list[tuple[str, Callable[[ServiceRef], OnLoad]]] = [
    (strings.TAB_CHAT, build_chat_tab),
    (strings.TAB_ARENA, build_arena_tab),
    (strings.TAB_LEADERBOARD, build_leaderboard_tab),
    (strings.TAB_DASHBOARD, build_dashboard_tab),
]


def ensure_session(session_id: str | None) -> str:
    """The browser's session id, made on its first visit."""
    return session_id or uuid.uuid4().hex


def build_ui(service: ServiceRef) -> gr.Blocks:
    """All tabs; each tab's page-open step runs once the session id is known."""
    with gr.Blocks(title=strings.PAGE_TITLE, analytics_enabled=False) as demo:
        session = gr.BrowserState("", storage_key=SESSION_KEY)
        gr.Markdown(strings.HEADER, elem_id="header")
        build_banner(service)
        loads: list[tuple[gr.Tab, OnLoad]] = []
        with gr.Tabs():
            for label, build in TABS:
                with gr.Tab(label) as tab:
                    loads.append((tab, build(service)))
        started = demo.load(ensure_session, [session], [session])
        for tab, on_load in loads:
            inputs = [session, *on_load.inputs]
            if on_load.on_open:
                started.then(on_load.fn, inputs, on_load.outputs)
            if on_load.on_select:
                tab.select(on_load.fn, inputs, on_load.outputs)
    demo.queue(default_concurrency_limit=None)  # the model engine batches and limits, not Gradio
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


def mount_ui(app: FastAPI) -> FastAPI:
    """Serve the UI at `/` of `app` (its API routes, added before, keep matching first)."""
    demo = build_ui(lambda: app.state.service)
    theme = gr.themes.Soft(font=FONTS, font_mono=["NanumGothicCoding", "monospace"])
    gr.mount_gradio_app(app, demo, path="/", ssr_mode=False, theme=theme, css=CSS, footer_links=[])
    mount = app.router.routes[-1]
    if not isinstance(mount, Mount):
        raise RuntimeError(f"expected Gradio's mount as the last route, found {mount!r}")
    app.router.routes[-1] = UiMount(mount.path or "/", app=mount.app, name=mount.name)
    return app
