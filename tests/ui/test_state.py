"""Per-session state and error texts of the UI, without a browser."""

from __future__ import annotations

from pathlib import Path

from kindchat.config import Settings
from kindchat.serve.errors import InvalidRequestError, OverloadedError
from kindchat.serve.services import AdminService
from kindchat.ui import strings
from kindchat.ui.common import safe, user_error
from kindchat.ui.state import ArenaRound, ChatSession, Turn

PAYLOAD = '<script>alert(1)</script><img src=x onerror="alert(2)"> & **굵게**'


def test_chat_messages_are_escaped_and_aligned_with_turns() -> None:
    state = ChatSession(
        session_id="s",
        turns=[
            Turn(role="user", content=PAYLOAD),
            Turn(role="assistant", content=PAYLOAD, message_id="m1", rating=-1),
            Turn(role="user", content="고마워요"),
            Turn(role="assistant", content="천만에요", message_id="m2"),
        ],
    )
    shown = state.chatbot()
    assert [m["role"] for m in shown] == ["user", "assistant", "user", "assistant"]
    for message in shown[:2]:
        assert "<" not in message["content"] and ">" not in message["content"]
        assert message["content"].startswith("&lt;script&gt;alert(1)&lt;/script&gt;&lt;img")
        assert "&amp; **굵게**" in message["content"]  # Markdown still renders
    assert state.feedback() == ["Dislike", None]
    assert state.last_answer() is state.turns[-1]
    assert [m.content for m in state.messages(upto=2)] == [PAYLOAD, PAYLOAD]


def test_arena_panels_escape_the_prompt_and_answers() -> None:
    round_ = ArenaRound(session_id="s", prompt=PAYLOAD, answers=["<b>A</b>", ""])
    assert round_.panel(0)[1]["content"] == safe("<b>A</b>") == "&lt;b&gt;A&lt;/b&gt;"
    assert len(round_.panel(1)) == 1 and "<" not in round_.panel(1)[0]["content"]
    assert ArenaRound().panel(0) == []


def test_service_errors_become_korean_messages() -> None:
    empty = InvalidRequestError("messages[0].content is empty", code="empty_message")
    assert user_error(empty).message == strings.ERROR_EMPTY
    assert user_error(OverloadedError("queue full")).message == strings.ERROR_BUSY
    assert user_error(RuntimeError("boom")).message == strings.ERROR_GENERIC
    other = user_error(InvalidRequestError("<b>x</b> is bad", code="invalid_value"))
    assert "&lt;b&gt;" in other.message


def test_admin_token_check(tmp_path: Path) -> None:
    def service(token: str | None) -> AdminService:
        settings = Settings(home=tmp_path, admin_token=token)
        return AdminService(settings, manager=None, db=None, arena=None)  # type: ignore[arg-type]

    assert not service(None).is_admin("anything") and not service(None).is_admin("")
    assert service("s3cret").is_admin("s3cret")
    assert not service("s3cret").is_admin("s3cre") and not service("s3cret").is_admin(None)


def test_the_leaderboard_names_models_as_people_do() -> None:
    from kindchat.ui.leaderboard import display_names

    aliases = {"rlhf": "policy-20261204-032554-4c1ee3", "sft": "sft-20261201-101500-aa"}
    names = display_names(
        [
            "policy-20261204-032554-4c1ee3",
            "sft-20261201-101500-aa",
            "policy-20261203-041000-bb",
            "policy-20261203-235900-cc",
            "policy-20261202-120000-dd",
            "policy-20261205-080000-ee",
            "policy-20261205-080030-ff",
        ],
        aliases,
    )
    assert names == {
        "policy-20261204-032554-4c1ee3": strings.MODEL_NAMES["rlhf"],
        "sft-20261201-101500-aa": strings.MODEL_NAMES["sft"],
        "policy-20261203-041000-bb": strings.OLDER_VERSION.format(date="2026.12.3 04:10"),
        "policy-20261203-235900-cc": strings.OLDER_VERSION.format(date="2026.12.3 23:59"),
        "policy-20261202-120000-dd": strings.OLDER_VERSION.format(date="2026.12.2"),
        "policy-20261205-080000-ee": "policy-20261205-080000-ee",  # one minute: their ids
        "policy-20261205-080030-ff": "policy-20261205-080030-ff",
    }


def test_a_chat_writes_one_answer_at_a_time_and_a_stopped_one_frees_it() -> None:
    """`one_at_a_time`: while one task writes the answer, a second changes nothing and never
    starts; once that task has ended (stopped, as Gradio stops it, with its generator not yet
    cleaned up), the next send goes."""
    import asyncio
    from collections.abc import AsyncIterator
    from concurrent.futures import ThreadPoolExecutor
    from typing import Any

    from kindchat.ui.chat import one_at_a_time

    state = ChatSession(session_id="s")
    started: list[str] = []
    release = asyncio.Event()

    async def answer(name: str) -> AsyncIterator[Any]:
        started.append(name)
        yield (name,)
        await release.wait()
        yield (name, "done")

    async def first_step(name: str) -> Any:  # one step of the event, as Gradio runs it
        gen = one_at_a_time(state, answer(name), 1)
        return gen, await anext(gen)

    async def scenario() -> None:
        first = asyncio.create_task(first_step("a"))
        gen_a, step = await first
        assert step == ("a",)
        # the task that wrote "a" has ended but its generator is still open: a stopped event
        assert not state.answering and started == ["a"]
        running = asyncio.create_task(drain(one_at_a_time(state, answer("b"), 1)))
        await asyncio.sleep(0)
        assert state.answering and started == ["a", "b"]
        second = await drain(one_at_a_time(state, answer("c"), 1))
        assert started == ["a", "b"]  # "c" never started
        assert [type(u[0]).__name__ for u in second] == ["dict"]  # gr.update(): nothing changes
        release.set()
        assert await running == [("b",), ("b", "done")]
        assert not state.answering and state.writer is None
        await gen_a.aclose()
        assert await drain(one_at_a_time(state, answer("d"), 1)) == [("d",), ("d", "done")]

    async def drain(gen: AsyncIterator[Any]) -> list[Any]:
        return [u async for u in gen]

    # in a thread of its own: the browser tests' sync Playwright keeps a loop running here
    with ThreadPoolExecutor(1) as pool:
        pool.submit(asyncio.run, scenario()).result(timeout=30)
