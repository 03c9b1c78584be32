"""The `openai` backend against a real `transformers serve` process on 127.0.0.1.

The server serves a micro Llama directory that kindchat registered, as it is: the KULLM chat
template kindchat wrote into it is what the server applies, so its prompt is kindchat's.
"""

from __future__ import annotations

import os
import shutil
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import openai
import pytest

from kindchat.config import Settings
from kindchat.models.backends.base import (
    BackendUnavailableError,
    GenerationOptions,
    InputTooLongError,
)
from kindchat.models.backends.openai_server import ContinueUnsupportedError, OpenAIBackend
from kindchat.models.generation import SamplingParams
from kindchat.models.registry import Registry
from kindchat.models.tokenizer import load_tokenizer
from tests.helpers import collect, free_port, server_process

pytestmark = pytest.mark.slow

QUESTION = [{"role": "user", "content": "주말에 뭐 하면 좋을까?"}]


@dataclass(frozen=True)
class TransformersServe:
    url: str  # …/v1
    model: str  # the served model name (the directory)
    directory: Path


@pytest.fixture(scope="module")
def transformers_serve(micro_llama_settings: Settings) -> Iterator[TransformersServe]:
    """`transformers serve` on the registered micro Llama SFT directory (offline mode on)."""
    exe = shutil.which("transformers") or str(Path(sys.executable).with_name("transformers"))
    directory = Registry(micro_llama_settings.models_dir).resolve("sft")
    port = free_port()
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    command = [exe, "serve", str(directory), "--host", "127.0.0.1", "--port", str(port)]
    base = f"http://127.0.0.1:{port}"
    log = micro_llama_settings.home / "transformers-serve.log"
    with server_process("transformers serve", command, f"{base}/v1/models", log, env, 180):
        yield TransformersServe(f"{base}/v1", str(directory), directory)


def test_streams_with_usage_and_the_registered_template(
    transformers_serve: TransformersServe,
) -> None:
    tokenizer = load_tokenizer(transformers_serve.directory)
    backend = backend_for(transformers_serve)
    greedy = SamplingParams(max_new_tokens=12, do_sample=False)
    deltas = collect(backend, QUESTION, greedy)
    assert backend.model_id == transformers_serve.model  # the server's only model, found
    assert deltas[-1].finish_reason in ("stop", "length")
    assert all(d.finish_reason is None for d in deltas[:-1])
    text = "".join(d.text for d in deltas)
    assert text.strip()
    # The server's usage: its prompt is the KULLM prompt kindchat builds for these messages.
    kullm = backend.prompt_format.prompt(QUESTION)
    assert kullm.endswith("### 응답:\n")
    assert deltas[-1].prompt_tokens == len(tokenizer(kullm, add_special_tokens=False)["input_ids"])
    assert 1 <= deltas[-1].completion_tokens <= 12
    # Greedy answers repeat: the same text again, and `stop` cuts it at a stop string.
    again = "".join(d.text for d in collect(backend_for(transformers_serve), QUESTION, greedy))
    assert again == text
    cut = next(i for i in range(1, len(text)) if not text[i].isspace())
    stopped = collect(
        backend_for(transformers_serve),
        QUESTION,
        greedy,
        GenerationOptions(stop=(text[cut : cut + 1],)),
    )
    assert "".join(d.text for d in stopped) == text[: text.index(text[cut : cut + 1])]
    assert stopped[-1].finish_reason == "stop"


def backend_for(server: TransformersServe, **kwargs: object) -> OpenAIBackend:
    return OpenAIBackend(server.url, model_dir=server.directory, **kwargs)  # type: ignore[arg-type]


def test_errors_map_to_kindchats(transformers_serve: TransformersServe) -> None:
    params = SamplingParams(max_new_tokens=8)
    long_input = [{"role": "user", "content": "아주 긴 질문 " * 400}]
    with pytest.raises(InputTooLongError, match="tokens"):
        collect(backend_for(transformers_serve), long_input, params)
    with pytest.raises(BackendUnavailableError, match="does not serve 'nope'"):
        collect(backend_for(transformers_serve, model="nope"), QUESTION, params)
    with pytest.raises(BackendUnavailableError, match="unreachable"):
        collect(OpenAIBackend("http://127.0.0.1:9/v1"), QUESTION, params)
    # 계속 생성 needs continue_final_message, which it does not take: said, never a new answer
    with pytest.raises(ContinueUnsupportedError, match="cannot continue an answer"):
        go_on = GenerationOptions(prefix="주말에는 ")
        collect(backend_for(transformers_serve), QUESTION, params, go_on)


def test_kindchat_serves_through_it_and_takes_feedback(
    transformers_serve: TransformersServe, micro_llama_copy: Settings, serve, new_session
) -> None:  # type: ignore[no-untyped-def]
    with serve(
        settings=micro_llama_copy,
        backend="openai",
        openai_base_url=transformers_serve.url,
        serve_aliases=["sft"],
    ) as api:
        token = new_session(api.url)  # the session token is the OpenAI client's key
        client = openai.OpenAI(base_url=f"{api.url}/v1", api_key=token)
        assert "kindchat-sft" in [m.id for m in client.models.list().data]
        reply = client.chat.completions.create(
            model="kindchat-sft", messages=QUESTION, max_tokens=10, temperature=0
        )
        assert reply.model == f"openai:{transformers_serve.model}"
        assert reply.choices[0].message.content.strip()
        assert reply.usage.completion_tokens >= 1
        chunks = list(
            client.chat.completions.create(
                model="kindchat-sft", messages=QUESTION, max_tokens=10, stream=True
            )
        )
        assert chunks[-1].choices[0].finish_reason in ("stop", "length")
        stored = httpx.post(
            f"{api.url}/v1/feedback",
            json={"message_id": reply.id, "rating": 1},
            headers={"Authorization": f"Bearer {token}"},
        )
        assert stored.status_code == 200, stored.text
