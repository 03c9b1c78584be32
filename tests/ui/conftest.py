"""The real app (API + Gradio UI) under uvicorn on 127.0.0.1, and headless Chromium to drive it.

One server per test module (micro models, 1 torch thread), one browser per session, a fresh
browser context per test (so each test is a new visitor with its own session id).
Screenshots go to `test-artifacts/ui/`.
"""

from __future__ import annotations

import asyncio
import importlib.util
import os
import shutil
from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
import torch
from sqlalchemy import Engine

from kindchat.app import create_product_app
from kindchat.config import Settings
from kindchat.feedback.db import init_db
from kindchat.models.backends.base import GenerationBackend, GenerationOptions, TextDelta
from kindchat.models.generation import SamplingParams
from kindchat.models.manager import Loader, default_loader

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--no-first-run",
]
ARTIFACTS = Path(__file__).resolve().parents[2] / "test-artifacts" / "ui"
ADMIN_TOKEN = "ui-test-admin-token"
PACE_S = 0.04  # between streamed pieces, so the browser sees an answer grow
MIN_TOKENS = 12
LONG = "(끝까지)"  # a question with this is answered up to the length limit


def _serve_helpers() -> Any:
    """tests/serve/conftest.py (ServerThread, wait_for): conftest files are not importable
    under --import-mode=importlib, so it is loaded from its path."""
    path = Path(__file__).resolve().parents[1] / "serve" / "conftest.py"
    spec = importlib.util.spec_from_file_location("_kindchat_serve_helpers", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


SERVE = _serve_helpers()
ServerThread = SERVE.ServerThread


class PacedBackend(GenerationBackend):
    """The real backend, with a short pause before each streamed piece and answers of at least
    `MIN_TOKENS` tokens (a micro model may otherwise say `어?` and stop)."""

    def __init__(self, inner: GenerationBackend, pace_s: float) -> None:
        self.inner = inner
        self.name = inner.name
        self.pace_s = pace_s

    @property
    def context_length(self) -> int:
        return self.inner.context_length

    def count_tokens(self, text: str) -> int:
        return self.inner.count_tokens(text)

    async def stream(
        self,
        messages: Sequence[Any],
        params: SamplingParams,
        options: GenerationOptions | None = None,
    ) -> AsyncIterator[TextDelta]:
        # At least a few tokens, so that every answer has something to stream; a question
        # marked LONG is answered up to the length limit (an answer cut for 계속 생성).
        last = messages[-1] if messages else {}
        text = last.get("content", "") if isinstance(last, dict) else getattr(last, "content", "")
        floor = params.max_new_tokens if LONG in text else min(MIN_TOKENS, params.max_new_tokens)
        options = replace(options or GenerationOptions(), min_tokens=floor)
        pieces = self.inner.stream(messages, params, options)
        try:
            async for delta in pieces:
                await asyncio.sleep(self.pace_s)
                yield delta
        finally:
            await pieces.aclose()  # type: ignore[attr-defined]

    async def start(self) -> None:
        await self.inner.start()

    async def close(self) -> None:
        await self.inner.close()

    def stats(self) -> dict[str, int]:
        return self.inner.stats()

    def cap_params(self, params: SamplingParams) -> SamplingParams:
        return self.inner.cap_params(params)


def paced_loader(settings: Settings, pace_s: float = PACE_S) -> Loader:
    load = default_loader(settings)
    return lambda version, path: PacedBackend(load(version, path), pace_s)


@pytest.fixture(scope="module")
def ui_server(micro_settings: Settings, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    """kindchat (UI at /, API at /v1) on a private copy of the micro registry."""
    home = tmp_path_factory.mktemp("ui") / "home"
    shutil.copytree(micro_settings.home, home, ignore=shutil.ignore_patterns("logs", "runs"))
    port = SERVE.free_port()
    settings = Settings(
        home=home,
        data_dir=micro_settings.data_dir,
        torch_threads=1,
        admin_token=ADMIN_TOKEN,
        default_max_tokens=24,
        alias_poll_s=0.5,
        port=port,
        # every test is a new visitor from 127.0.0.1, twice for the tests at both widths: the
        # address limits are tested on their own (test_guard.py, tests/serve), not here
        rate_limit_new_sessions="200/hour",
        rate_limit_address="1200/minute",
    )
    threads = torch.get_num_threads()
    app = create_product_app(settings, loader=paced_loader(settings))
    with ServerThread(app, port) as server:
        server.settings = settings
        yield server
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def ui_db(ui_server: Any) -> Iterator[Engine]:
    """The server's feedback database, for checking what the UI stored."""
    engine = init_db(ui_server.settings)
    yield engine
    engine.dispose()


@pytest.fixture(scope="session")
def browser() -> Iterator[Any]:
    if not CHROMIUM.exists():
        if os.environ.get("KINDCHAT_REQUIRE_BROWSER"):
            pytest.fail(f"{CHROMIUM} is missing: apt-get install -y chromium fonts-nanum")
        pytest.skip(f"{CHROMIUM} is missing (apt-get install -y chromium fonts-nanum)")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(
            executable_path=str(CHROMIUM), headless=True, args=CHROMIUM_ARGS
        )
        yield chromium
        chromium.close()


@pytest.fixture
def page(browser: Any, ui_server: Any) -> Iterator[Any]:
    """A new visitor (fresh storage, so a new session id) on the app's start page, in Korean."""
    context = browser.new_context(locale="ko-KR", viewport={"width": 1280, "height": 960})
    context.set_default_timeout(30_000)
    tab = context.new_page()
    errors: list[str] = []
    tab.on("pageerror", lambda err: errors.append(str(err)))
    tab.goto(f"{ui_server.url}/")
    tab.wait_for_selector("#chat-input textarea")
    # the page's opening event has run: its session and the models are in (a send before it
    # would have no session yet)
    tab.wait_for_function("() => !!document.querySelector('#chat-model input')?.value")
    yield tab
    context.close()
    assert not errors, f"JavaScript errors on the page: {errors}"


DESKTOP = {"width": 1280, "height": 960}
PHONE = {"width": 390, "height": 844}


@pytest.fixture(params=[DESKTOP, PHONE], ids=["desktop", "phone"])
def viewport(request: pytest.FixtureRequest, page: Any) -> dict[str, int]:
    """The test runs twice: at 1280 px and on a 390 px phone (the page resized to it)."""
    size: dict[str, int] = request.param
    page.set_viewport_size(size)
    return size


@pytest.fixture
def screenshot() -> Callable[[Any, str], Path]:
    def take(page: Any, name: str) -> Path:
        ARTIFACTS.mkdir(parents=True, exist_ok=True)
        path = ARTIFACTS / f"{name}.png"
        page.screenshot(path=str(path), full_page=True)
        return path

    return take


@pytest.fixture
def wait_for() -> Callable[..., None]:
    """`wait_for(predicate, timeout=30, what=...)`: poll until true (the serve tests' helper)."""
    return SERVE.wait_for  # type: ignore[no-any-return]


def start_new_chat(page: Any) -> None:
    """➕ 새 대화 where the page shows it: the history column (or the phone's open drawer), or
    the phone's bar."""
    in_history = page.locator("#chat-sidebar").is_visible()
    page.locator("#chat-new" if in_history else "#chat-new-phone").click()
    page.wait_for_function(
        "sel => !document.querySelectorAll(sel).length", arg='#chat-bot [data-testid="user"]'
    )


def show_history(page: Any) -> None:
    """The history in sight: beside the chat, or on a phone in its drawer (☰)."""
    sidebar = page.locator("#chat-sidebar")
    if not sidebar.is_visible():
        page.locator("#chat-drawer-open").click()
        sidebar.wait_for(state="visible")
