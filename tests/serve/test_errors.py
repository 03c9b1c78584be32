"""Every bad input gets its 4xx with an OpenAI-style error body naming the problem."""

from __future__ import annotations

from typing import Any

import httpx
import pytest

OK = [{"role": "user", "content": "안녕하세요"}]


def chat(**overrides: Any) -> dict[str, Any]:
    return {"model": "kindchat-sft", "messages": OK, "max_tokens": 4, **overrides}


CASES: list[tuple[str, str, dict[str, Any], int, str]] = [
    (
        "empty content",
        "/v1/chat/completions",
        chat(messages=[{"role": "user", "content": ""}]),
        400,
        "messages.0.content",
    ),
    (
        "whitespace",
        "/v1/chat/completions",
        chat(messages=[{"role": "user", "content": " \n\t "}]),
        400,
        "messages.0.content",
    ),
    ("no messages", "/v1/chat/completions", chat(messages=[]), 422, "messages"),
    (
        "bad role",
        "/v1/chat/completions",
        chat(messages=[{"role": "robot", "content": "hi"}]),
        422,
        "messages.0.role",
    ),
    (
        "ends with assistant",
        "/v1/chat/completions",
        chat(messages=[*OK, {"role": "assistant", "content": "네"}]),
        400,
        "messages",
    ),
    (
        "too many chars",
        "/v1/chat/completions",
        chat(messages=[{"role": "user", "content": "가" * 301}]),
        413,
        "messages",
    ),
    (
        "too many tokens",
        "/v1/chat/completions",
        chat(messages=[{"role": "user", "content": "한국 " * 100}]),
        413,
        "messages",
    ),
    ("temperature", "/v1/chat/completions", chat(temperature=2.5), 422, "temperature"),
    ("top_p", "/v1/chat/completions", chat(top_p=0), 422, "top_p"),
    ("max_tokens 0", "/v1/chat/completions", chat(max_tokens=0), 422, "max_tokens"),
    ("max_tokens over limit", "/v1/chat/completions", chat(max_tokens=100_000), 400, "max_tokens"),
    ("n=2", "/v1/chat/completions", chat(n=2), 422, "n"),
    ("unknown model", "/v1/chat/completions", chat(model="gpt-5"), 404, "model"),
    (
        "unknown regenerate id",
        "/v1/chat/completions",
        chat(regenerate="chatcmpl-nope"),
        404,
        "message_id",
    ),
    (
        "feedback unknown id",
        "/v1/feedback",
        {"message_id": "chatcmpl-nope", "rating": 1},
        404,
        "message_id",
    ),
    ("feedback bad rating", "/v1/feedback", {"message_id": "x", "rating": 2}, 422, "rating"),
    (
        "vote unknown battle",
        "/v1/arena/battles/nope/vote",
        {"winner": "a"},
        404,
        "battle_id",
    ),
    (
        "vote bad winner",
        "/v1/arena/battles/nope/vote",
        {"winner": "c"},
        422,
        "winner",
    ),
    (
        "arena one model twice",
        "/v1/arena/battles",
        {"prompt": "안녕", "models": ["kindchat-sft", "kindchat-sft"]},
        409,
        "models",
    ),
    (
        "arena prompt and messages",
        "/v1/arena/battles",
        {"prompt": "안녕", "messages": OK},
        400,
        "prompt",
    ),
]


def test_bad_inputs_get_their_4xx(serve: Any, new_session: Any) -> None:
    limits = {"max_input_chars": 300, "max_input_tokens": 120, "max_tokens_limit": 512}
    with serve(serve_aliases=["sft"], **limits) as api:
        signed = {"Authorization": f"Bearer {new_session(api.url)}"}
        for name, path, body, status, param in CASES:
            response = httpx.post(f"{api.url}{path}", json=body, headers=signed, timeout=30)
            assert response.status_code == status, (name, response.text)
            error = response.json()["error"]
            assert error["message"] and error["type"], name
            assert error["param"] == param, (name, error)
        missing = httpx.get(f"{api.url}/v1/nothing-here")
        assert missing.status_code == 404 and missing.json()["error"]["type"] == "not_found_error"
        assert httpx.get(f"{api.url}/v1/models/gpt-5").status_code == 404
        # admin routes: off without a token (403)
        assert httpx.post(f"{api.url}/v1/admin/reload").status_code == 403


@pytest.mark.parametrize(
    ("header", "status"), [(None, 401), ("Bearer wrong", 403), ("Bearer s3cret", 200)]
)
def test_admin_token(serve: Any, header: str | None, status: int) -> None:
    with serve(admin_token="s3cret") as api:
        headers = {"Authorization": header} if header else {}
        response = httpx.post(f"{api.url}/v1/admin/reload", headers=headers, timeout=60)
        assert response.status_code == status, response.text
        if status == 200:
            assert response.json()["failed"] == {} and "sft" in response.json()["aliases"]
