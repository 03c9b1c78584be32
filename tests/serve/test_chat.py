"""The official `openai` client against kindchat on the micro model: Korean answers, stored.

One server for the module (served aliases `nightly`, `sft`: `nightly` is not in the registry
yet, like `rlhf` before the first promotion, so its name answers with the next served alias and
says so); each test checks one behaviour. Tests that write (ratings) use answers of their own.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import httpx
import openai
import pytest
from openai.types.chat import ChatCompletion, ChatCompletionChunk

from kindchat.config import Settings
from kindchat.feedback import store
from kindchat.feedback.db import create_db_engine, database_url, session_scope
from kindchat.feedback.models import MessagePublic, RatingPublic
from kindchat.models.registry import Registry

from ..conftest import copy_home  # type: ignore[import-not-found]
from .conftest import ServerThread, serving  # type: ignore[import-not-found]

HANGUL = re.compile("[가-힣]")
HELLO = [{"role": "user", "content": "안녕하세요"}]
REQUESTS_200 = 'kindchat_requests_total{method="POST",route="/v1/chat/completions",status="200"}'


@pytest.fixture(scope="module")
def api(micro_settings: Settings, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    """One server for the module, on a private copy of the micro registry."""
    settings = copy_home(micro_settings, tmp_path_factory.mktemp("chat"))
    with serving(settings, serve_aliases=["nightly", "sft"]) as server:
        yield server


@pytest.fixture(scope="module")
def client(api: ServerThread) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{api.url}/v1", api_key="unused")  # open: anonymous


@pytest.fixture(scope="module")
def sft_version(api: ServerThread) -> str:
    return str(Registry(api.settings.models_dir).version_of("sft"))  # type: ignore[attr-defined]


@dataclass(frozen=True)
class Asked:
    """One non-streamed answer of 16 tokens and the session token that asked for it."""

    token: str
    reply: ChatCompletion

    @property
    def signed(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token}"}


@pytest.fixture(scope="module")
def ask(api: ServerThread, client: openai.OpenAI, new_session: Any) -> Callable[[], Asked]:
    """`ask()`: a new session asks `kindchat-nightly` for 16 tokens (seed 3)."""

    def asked() -> Asked:
        token = new_session(api.url)
        reply = client.chat.completions.create(
            model="kindchat-nightly",
            messages=HELLO,  # type: ignore[arg-type]
            max_tokens=16,
            seed=3,
            user=token,
            extra_body={"min_tokens": 16},
        )
        return Asked(token, reply)

    return asked


@pytest.fixture(scope="module")
def answer(ask: Callable[[], Asked]) -> Asked:
    """The module's shared answer: read it, do not rate it."""
    return ask()


@pytest.fixture(scope="module")
def streamed(client: openai.OpenAI) -> list[ChatCompletionChunk]:
    """12 tokens of `kindchat-sft`, streamed with usage, anonymous."""
    return list(
        client.chat.completions.create(
            model="kindchat-sft",
            messages=HELLO,  # type: ignore[arg-type]
            max_tokens=12,
            stream=True,
            stream_options={"include_usage": True},
            extra_body={"min_tokens": 12},
        )
    )


def stored_message(api: ServerThread, message_id: str) -> MessagePublic:
    engine = create_db_engine(database_url(api.settings))  # type: ignore[attr-defined]
    try:
        with session_scope(engine) as session:
            return store.get_message(session=session, message_id=message_id)
    finally:
        engine.dispose()


def stored_ratings(api: ServerThread, message_id: str) -> list[RatingPublic]:
    engine = create_db_engine(database_url(api.settings))  # type: ignore[attr-defined]
    try:
        with session_scope(engine) as session:
            return store.list_ratings(session=session, message_id=message_id)
    finally:
        engine.dispose()


def metric(api: ServerThread, line_start: str) -> float:
    """The value of the one sample in /metrics whose line starts with `line_start` (0 if none)."""
    for line in httpx.get(f"{api.url}/metrics").text.splitlines():
        if line.startswith(line_start + " "):
            return float(line.rsplit(" ", 1)[1])
    return 0.0


def test_models_list_an_alias_not_registered_yet_with_its_stand_in(
    client: openai.OpenAI, sft_version: str
) -> None:
    names = {m.id: m for m in client.models.list().data}
    assert {"kindchat-nightly", "kindchat-sft"} <= set(names)
    assert names["kindchat-sft"].model_extra["version"] == sft_version  # type: ignore[index]
    assert names["kindchat-nightly"].model_extra["version"] == sft_version  # type: ignore[index]
    assert "does not exist yet" in names["kindchat-nightly"].model_extra["note"]  # type: ignore[index]


def test_an_alias_not_registered_yet_is_answered_by_the_next_served_one(
    answer: Asked, sft_version: str
) -> None:
    assert answer.reply.model == sft_version


def test_answer_is_korean_and_its_usage_counts_the_tokens(answer: Asked) -> None:
    text = answer.reply.choices[0].message.content or ""
    assert HANGUL.search(text), text
    assert answer.reply.choices[0].finish_reason == "length"
    usage = answer.reply.usage
    assert usage is not None
    assert usage.completion_tokens == 16 and usage.prompt_tokens > 20
    assert usage.total_tokens == usage.prompt_tokens + 16


def test_a_streamed_answer_is_korean_one_id_and_ends_with_usage(
    streamed: list[ChatCompletionChunk],
) -> None:
    text = "".join(c.choices[0].delta.content or "" for c in streamed if c.choices)
    assert HANGUL.search(text), text
    assert len({c.id for c in streamed}) == 1
    assert [c.choices[0].finish_reason for c in streamed if c.choices][-1] == "length"
    assert streamed[-1].usage is not None and streamed[-1].usage.completion_tokens == 12
    assert sum(bool(c.choices and c.choices[0].delta.content) for c in streamed) > 3


def test_the_completion_id_is_the_stored_answer_of_the_askers_session(
    api: ServerThread, answer: Asked, sft_version: str
) -> None:
    message = stored_message(api, answer.reply.id)
    me = httpx.get(f"{api.url}/v1/sessions/me", headers=answer.signed).json()["session_id"]
    assert message.content == answer.reply.choices[0].message.content
    assert message.model_alias == "sft" and message.model_version == sft_version
    assert message.session_id == me and message.completion_tokens == 16


def test_a_streamed_answer_is_stored_whole(
    api: ServerThread, streamed: list[ChatCompletionChunk]
) -> None:
    text = "".join(c.choices[0].delta.content or "" for c in streamed if c.choices)
    assert stored_message(api, streamed[0].id).content == text


def test_a_rating_lands_in_the_store_under_the_tokens_session(
    api: ServerThread, ask: Callable[[], Asked]
) -> None:
    mine = ask()
    rated = httpx.post(
        f"{api.url}/v1/feedback",
        json={"message_id": mine.reply.id, "rating": -1, "reason": "unfriendly"},
        headers=mine.signed,
    )
    assert rated.status_code == 200, rated.text
    [rating] = stored_ratings(api, mine.reply.id)
    assert rating.value == -1 and rating.reason == "unfriendly"
    assert rating.session_id == rated.json()["session_id"]
    assert stored_message(api, mine.reply.id).session_id == rating.session_id


def test_a_better_answer_rides_on_the_rating_and_replaces_it(
    api: ServerThread, ask: Callable[[], Asked]
) -> None:
    mine = ask()
    first = {"message_id": mine.reply.id, "rating": -1, "reason": "unfriendly"}
    better = {"message_id": mine.reply.id, "rating": -1, "better_answer": "안녕하세요! 반가워요."}
    for body in (first, better):
        posted = httpx.post(f"{api.url}/v1/feedback", json=body, headers=mine.signed)
        assert posted.status_code == 200, posted.text
    [rating] = stored_ratings(api, mine.reply.id)  # one rating: the second replaced the first
    assert rating.better_answer == "안녕하세요! 반가워요." and rating.reason is None


def test_a_too_long_better_answer_is_refused_naming_the_field_and_the_rating_is_kept(
    api: ServerThread, ask: Callable[[], Asked]
) -> None:
    mine = ask()
    kept = {"message_id": mine.reply.id, "rating": 1, "better_answer": "안녕하세요! 반가워요."}
    assert httpx.post(f"{api.url}/v1/feedback", json=kept, headers=mine.signed).status_code == 200
    too_long = {**kept, "rating": -1, "better_answer": "가" * 4001}
    refused = httpx.post(f"{api.url}/v1/feedback", json=too_long, headers=mine.signed)
    assert refused.status_code in (400, 422) and "better_answer" in refused.text
    [rating] = stored_ratings(api, mine.reply.id)
    assert rating.value == 1 and rating.better_answer == "안녕하세요! 반가워요."


def test_a_regeneration_points_at_the_answer_it_replaces_in_its_conversation(
    api: ServerThread, answer: Asked
) -> None:
    again = httpx.post(
        f"{api.url}/v1/chat/completions",
        json={"model": "kindchat-sft", "messages": HELLO, "regenerate": answer.reply.id},
        headers=answer.signed,  # the asker's session: a regeneration joins its conversation
    )
    assert again.status_code == 200, again.text
    new, old = stored_message(api, again.json()["id"]), stored_message(api, answer.reply.id)
    assert new.id != old.id and new.parent_id == old.id
    assert new.conversation_id == old.conversation_id and new.session_id == old.session_id


def test_an_answer_cut_by_length_goes_on_in_place(
    api: ServerThread, ask: Callable[[], Asked], new_session: Any
) -> None:
    """계속 생성 at the API: `continue_of` streams only the new text, and the stored answer
    grows in place (its id, conversation and ratings stay); only its asker may, and only an
    answer."""
    mine = ask()  # 16 tokens of 16: cut by the length limit
    cut = stored_message(api, mine.reply.id)
    assert cut.finish_reason == "length" and cut.completion_tokens == 16
    go_on = {
        "model": "kindchat-sft",
        "messages": HELLO,
        "continue_of": mine.reply.id,
        "max_tokens": 8,
        "min_tokens": 8,
        "seed": 5,
    }
    url = f"{api.url}/v1/chat/completions"
    more = httpx.post(url, json=go_on, headers=mine.signed)
    assert more.status_code == 200, more.text
    added = more.json()["choices"][0]["message"]["content"]
    grown = stored_message(api, mine.reply.id)
    assert added and grown.content == cut.content + added
    assert grown.completion_tokens == 24 and grown.finish_reason == "length"
    assert grown.conversation_id == cut.conversation_id

    stranger = {"Authorization": f"Bearer {new_session(api.url)}"}
    assert httpx.post(url, json=go_on, headers=stranger).status_code == 404
    both = {**go_on, "regenerate": mine.reply.id}
    refused = httpx.post(url, json=both, headers=mine.signed)
    assert refused.status_code in (400, 422) and "continue_of" in refused.text
    assert stored_message(api, mine.reply.id).content == grown.content  # nothing else changed


@pytest.mark.parametrize(
    ("who", "status"), [("nobody", 401), ("another session", 404)], ids=["anonymous", "other"]
)
def test_nobody_else_can_regenerate_into_a_conversation(
    api: ServerThread, answer: Asked, new_session: Any, who: str, status: int
) -> None:
    headers = {"Authorization": f"Bearer {new_session(api.url)}"} if who != "nobody" else {}
    regenerate = {"model": "kindchat-sft", "messages": HELLO, "regenerate": answer.reply.id}
    hijack = httpx.post(f"{api.url}/v1/chat/completions", json=regenerate, headers=headers)
    assert hijack.status_code == status, hijack.text


def test_metrics_count_each_answer_and_name_the_served_version(
    api: ServerThread, client: openai.OpenAI, sft_version: str
) -> None:
    ttft = f'kindchat_time_to_first_token_seconds_count{{model="{sft_version}"}}'
    before, ttft_before = metric(api, REQUESTS_200), metric(api, ttft)
    client.chat.completions.create(model="kindchat-sft", messages=HELLO, max_tokens=2)  # type: ignore[arg-type]
    assert metric(api, REQUESTS_200) == before + 1
    assert metric(api, ttft) == ttft_before + 1
    info = f'kindchat_model_info{{alias="sft",backend="hf",version="{sft_version}"}}'
    assert metric(api, info) == 1.0
    assert metric(api, "kindchat_queue_depth") == 0.0


def test_health_is_ok_and_lists_the_loaded_aliases(api: ServerThread, sft_version: str) -> None:
    health = httpx.get(f"{api.url}/healthz").json()
    assert health["status"] == "ok" and health["aliases"] == {"sft": sft_version}
