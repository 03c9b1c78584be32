"""Serve first, train in the background: a browser on a server answering with micro models
sees the "더 똑똑한 모델을 준비하고 있어요" banner while a Llama-family micro bootstrap trains in a
niced child process, then the news that a new model answers; the next answer comes from the
model that landed, and the dashboard lists the stages. Screenshots: test-artifacts/ui/."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from pydantic import SecretStr

from kindchat.app import create_product_app
from kindchat.config import Settings
from kindchat.models.registry import Registry
from kindchat.retrain.bootstrap_state import read_state
from kindchat.ui import strings

from .conftest import ADMIN_TOKEN, ServerThread  # type: ignore[import-not-found]

# a browser, and a Llama-family bootstrap trained in a child process (~60 s)
pytestmark = [pytest.mark.browser, pytest.mark.slow]

BACKGROUND = "micro-llama"


@pytest.fixture
def growing_server(micro_copy: Settings) -> Iterator[Any]:
    settings = micro_copy.model_copy(
        update={
            "torch_threads": 1,
            "admin_token": SecretStr(ADMIN_TOKEN),  # model_copy does not validate
            "default_max_tokens": 12,
            "alias_poll_s": 0.5,
            "background_preset": BACKGROUND,
        }
    )
    with ServerThread(create_product_app(settings)) as server:
        server.settings = settings
        yield server


def answer_model(url: str) -> str:
    body = {"model": "kindchat-rlhf", "messages": [{"role": "user", "content": "안녕"}]}
    reply = httpx.post(f"{url}/v1/chat/completions", json={**body, "max_tokens": 4}, timeout=120)
    reply.raise_for_status()
    return str(reply.json()["model"])


def test_banner_then_a_new_model_answers(
    browser: Any,
    growing_server: Any,
    screenshot: Callable[[Any, str], Path],
    wait_for: Callable[..., None],
) -> None:
    url, settings = growing_server.url, growing_server.settings
    before = Registry(settings.models_dir).aliases()["rlhf"]
    context = browser.new_context(locale="ko-KR", viewport={"width": 1280, "height": 960})
    context.set_default_timeout(30_000)
    page = context.new_page()
    page.goto(f"{url}/")
    banner = page.locator("#bootstrap-banner")
    banner.get_by_text("더 똑똑한 모델을 준비하고 있어요").wait_for(timeout=60_000)
    assert "남았어요" in banner.inner_text()
    state = httpx.get(f"{url}/v1/bootstrap").json()
    assert state["active"] and state["preset"] == BACKGROUND and state["eta_s"] > 0
    assert state["served"]["rlhf"] == before
    screenshot(page, "bootstrap-banner")

    # The SFT stage lands: the served alias moves, the server hot-swaps, the page says so.
    banner.get_by_text("새 모델이 도착했어요").wait_for(timeout=180_000)
    landed = read_state(settings, BACKGROUND)
    assert landed is not None and "sft" in landed.versions
    now_served = Registry(settings.models_dir).aliases()["rlhf"]
    assert now_served != before and now_served in banner.inner_text()
    wait_for(lambda: answer_model(url) == Registry(settings.models_dir).aliases()["rlhf"], 60)
    screenshot(page, "bootstrap-new-model")

    page.goto(f"{url}/admin")  # the operators' page
    page.get_by_text(strings.ADMIN_TITLE).click()  # operator data behind the admin token
    page.locator("#admin-token input").fill(ADMIN_TOKEN)
    page.locator("#admin-unlock").click()
    stages = page.locator("#dashboard-bootstrap")
    wait_for(lambda: "대화 학습" in stages.inner_text(), 30)
    assert "완료" in stages.inner_text()
    screenshot(page, "bootstrap-dashboard")
    context.close()
