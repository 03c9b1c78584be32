"""The page check in one place (kindchat/ui/guard.py), on a real Gate (signed sessions, the
`limits` library): a handler runs only for the cookie's own page state, and page actions count
on the API's per-session and per-address limits."""

from __future__ import annotations

import asyncio
import inspect
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import gradio as gr
import pytest

from kindchat.config import Settings
from kindchat.serve.auth import SESSION_COOKIE
from kindchat.serve.gate import Gate
from kindchat.serve.metrics import Metrics
from kindchat.ui.guard import PageCheck, PageSessionError, RedactSessionHash, action, guard_events
from kindchat.ui.state import ChatSession


def gate_for(tmp_path: Path, **overrides: Any) -> Gate:
    settings = Settings(home=tmp_path, rate_limit_strategy="moving-window", **overrides)
    return Gate(settings, Metrics(None))  # type: ignore[arg-type]


def request(token: str | None, address: str = "203.0.113.9") -> Any:
    """What a gr.Request offers the check: cookies and the client's address."""
    return SimpleNamespace(
        cookies={SESSION_COOKIE: token} if token else {}, client=SimpleNamespace(host=address)
    )


def test_a_page_state_of_another_session_is_refused(tmp_path: Path) -> None:
    gate = gate_for(tmp_path)
    victim = gate.sessions.issue(address="198.51.100.1", ui=True)
    attacker = gate.sessions.issue(address="203.0.113.9", ui=True)
    check = PageCheck(lambda: gate)
    state = ChatSession(session_id=victim.session_id)
    check.check(request(victim.token), [state], "feedback")  # the owner: fine
    for token in (attacker.token, None, "forged.token.value"):
        with pytest.raises(PageSessionError):
            check.check(request(token), [state, "text"], None)
    # a page that has no session yet (it opens) passes; a group action needs one
    check.check(request(None), [ChatSession()], None)
    with pytest.raises(gr.Error):
        check.check(request(None), [ChatSession()], "chat")


def test_page_sessions_of_one_address_share_the_address_limit(tmp_path: Path) -> None:
    gate = gate_for(tmp_path, rate_limit_session="30/minute", rate_limit_address="25/minute")
    check = PageCheck(lambda: gate)
    pages = [gate.sessions.issue(address="203.0.113.9", ui=True) for _ in range(10)]
    accepted = refused = 0
    for _ in range(25):  # 10 pages × 25 thumbs = 250 tries from one address
        for page in pages:
            try:
                check.check(
                    request(page.token), [ChatSession(session_id=page.session_id)], "feedback"
                )
                accepted += 1
            except gr.Error:
                refused += 1
    assert (accepted, refused) == (25, 225)  # the API's per-address budget, not 10 × 30
    other = gate.sessions.issue(address="198.51.100.2", ui=True)
    check.check(request(other.token, "198.51.100.2"), [], "feedback")  # another person: fine


def test_every_event_is_wrapped_and_keeps_its_kind(tmp_path: Path) -> None:
    gate = gate_for(tmp_path)
    with gr.Blocks() as demo:
        state = gr.State(ChatSession())
        box = gr.Textbox()
        button = gr.Button()

        @action("chat")
        async def stream(state: ChatSession, text: str) -> Any:
            yield text

        def plain(state: ChatSession, data: gr.LikeData) -> Any:
            return state

        button.click(stream, [state, box], [box])
        button.click(plain, [state], [state])
    assert guard_events(demo, lambda: gate) == 2
    assert guard_events(demo, lambda: gate) == 0  # once only
    fns = [f.fn for f in demo.fns.values()]
    assert inspect.isasyncgenfunction(fns[0]) and not inspect.isasyncgenfunction(fns[1])
    for fn in fns:
        first = next(iter(inspect.signature(fn).parameters.values()))
        assert inspect.get_annotations(fn)[first.name] is gr.Request
    assert inspect.get_annotations(fns[1])["data"] is gr.LikeData  # Gradio still injects it

    victim = gate.sessions.issue(address="198.51.100.1", ui=True)
    owned = ChatSession(session_id=victim.session_id)

    async def drain() -> list[Any]:
        return [item async for item in fns[0](request(victim.token), owned, "안녕")]

    with ThreadPoolExecutor(1) as pool:  # its own loop (Playwright may hold this thread's)
        assert pool.submit(asyncio.run, drain()).result() == ["안녕"]
    with pytest.raises(PageSessionError):
        fns[1](request(None), owned, None)


def test_session_hashes_stay_out_of_the_access_log() -> None:
    import logging

    record = logging.LogRecord(
        "uvicorn.access",
        logging.INFO,
        "",
        0,
        '%s - "%s %s HTTP/%s" %d',
        (
            "127.0.0.1:5",
            "GET",
            "/gradio_api/queue/data?session_hash=abc123secret&x=1",
            "1.1",
            200,
        ),
        None,
    )
    RedactSessionHash().filter(record)
    assert "abc123secret" not in record.getMessage()
    beat = logging.LogRecord(
        "uvicorn.access", logging.INFO, "", 0, "%s", ("/gradio_api/heartbeat/abc123secret",), None
    )
    RedactSessionHash().filter(beat)
    assert "abc123secret" not in beat.getMessage()


def test_an_ipv6_line_is_one_address() -> None:
    from kindchat.serve.gate import person_address

    assert person_address("2001:db8:1:2:aaaa::1") == person_address("2001:db8:1:2:ffff::9")
    assert person_address("2001:db8:1:2::1") != person_address("2001:db8:1:3::1")
    assert person_address("::ffff:203.0.113.9") == "203.0.113.9"
    assert person_address("203.0.113.9") == "203.0.113.9"
