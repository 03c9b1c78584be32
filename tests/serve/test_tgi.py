"""The `tgi` backend end to end against a real TGI-protocol server on 127.0.0.1 (TGI itself
needs a GPU and is archived upstream; the server here speaks its HTTP API), in offline mode."""

from __future__ import annotations

import asyncio
from typing import Any

import httpx
import openai
import pytest

from kindchat.config import Settings
from kindchat.models.backends.base import BackendUnavailableError, InputTooLongError
from kindchat.models.backends.tgi import TgiBackend
from kindchat.models.generation import SamplingParams
from kindchat.models.template import RESPONSE_TAG, kullm_prompt

ANSWER = "안녕하세요! 무엇을 도와드릴까요?"


@pytest.fixture(autouse=True)
def offline(monkeypatch: pytest.MonkeyPatch) -> None:
    """Every test here runs in offline mode, as air-gapped GPU clusters set it (it made
    huggingface_hub's InferenceClient refuse even this local server)."""
    import huggingface_hub.constants

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)


def test_backend_streams_with_kullm_template_and_counts(tgi_server: Any) -> None:
    server, received = tgi_server

    async def run() -> list[Any]:
        backend = TgiBackend(server.url)
        await backend.start()
        assert backend.model_id == "test/kullm-tgi" and backend.context_length == 512
        messages = [{"role": "user", "content": "인사해 줘"}]
        return [
            d
            async for d in backend.stream(
                messages,
                SamplingParams(max_new_tokens=50, seed=None)
                if False
                else SamplingParams(max_new_tokens=50),
            )
        ]

    deltas = asyncio.run(run())
    assert "".join(d.text for d in deltas) == ANSWER
    assert deltas[-1].finish_reason == "stop" and deltas[-1].completion_tokens == 9
    assert [d.finish_reason for d in deltas[:-1]] == [None] * (len(deltas) - 1)
    body = received[-1]
    assert body["inputs"] == kullm_prompt("인사해 줘") and body["inputs"].endswith(
        RESPONSE_TAG + "\n"
    )
    assert body["stream"] is True and body["parameters"]["details"] is True
    assert body["parameters"]["max_new_tokens"] == 50


def test_backend_length_and_errors(tgi_server: Any) -> None:
    server, _ = tgi_server

    async def run() -> None:
        backend = TgiBackend(server.url)
        await backend.start()
        short = [
            d
            async for d in backend.stream(
                [{"role": "user", "content": "hi"}],
                SamplingParams(max_new_tokens=3, do_sample=False),
            )
        ]
        assert (
            short[-1].finish_reason == "length" and "".join(d.text for d in short) == "안녕하세요!"
        )
        with pytest.raises(InputTooLongError):
            async for _ in backend.stream(
                [{"role": "user", "content": "말 " * 450}], SamplingParams(max_new_tokens=3)
            ):
                pass
        gone = TgiBackend("http://127.0.0.1:9")  # nothing listens on the discard port
        with pytest.raises(BackendUnavailableError):
            await gone.start()

    asyncio.run(run())


def test_openai_client_through_kindchat_on_tgi(
    tgi_server: Any, settings: Settings, serve: Any, new_session: Any
) -> None:
    server, received = tgi_server
    with serve(settings=settings, backend="tgi", tgi_url=server.url) as api:
        token = new_session(api.url)  # the session token is the OpenAI client's key
        client = openai.OpenAI(base_url=f"{api.url}/v1", api_key=token)
        models = [m.id for m in client.models.list().data]
        assert "kindchat-rlhf" in models and "kindchat-sft" in models
        reply = client.chat.completions.create(
            model="kindchat-sft", messages=[{"role": "user", "content": "인사해 줘"}]
        )
        assert reply.choices[0].message.content == ANSWER
        assert reply.model == "tgi:test/kullm-tgi" and reply.usage.completion_tokens == 9
        chunks = list(
            client.chat.completions.create(
                model="kindchat-rlhf",
                messages=[{"role": "user", "content": "인사해 줘"}],
                stream=True,
            )
        )
        assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == ANSWER
        assert chunks[-1].choices[0].finish_reason == "stop"
        assert received[-1]["inputs"] == kullm_prompt("인사해 줘")
        stored = httpx.post(
            f"{api.url}/v1/feedback",
            json={"message_id": reply.id, "rating": 1},
            headers={"Authorization": f"Bearer {token}"},
        )
        assert stored.status_code == 200
