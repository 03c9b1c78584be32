"""The `openai` backend against a real vLLM (its CPU build, `scripts/vllm-cpu`) on 127.0.0.1.

vLLM serves the micro Llama's `rlhf` version as kindchat registered it: the KULLM chat template
kindchat wrote into the directory is the one vLLM applies, so vLLM's prompt is kindchat's. The
same checks as against `transformers serve`, plus what vLLM adds: its sampling extras, `seed`,
and aborting a request when the client leaves.
"""

from __future__ import annotations

import asyncio
import re
import time
from typing import Any

import httpx
import pytest

from kindchat.models.backends.base import (
    BackendUnavailableError,
    GenerationOptions,
    InputTooLongError,
    TextDelta,
)
from kindchat.models.backends.openai_server import OpenAIBackend
from kindchat.models.generation import SamplingParams
from kindchat.models.tokenizer import load_tokenizer
from tests.helpers import collect

VllmServer = Any  # tests/conftest.py's VllmServer (conftest modules are not importable)

QUESTION = [{"role": "user", "content": "주말에 뭐 하면 좋을까?"}]


def backend_for(server: VllmServer, **kwargs: object) -> OpenAIBackend:
    return OpenAIBackend(server.url, model_dir=server.directory, **kwargs)  # type: ignore[arg-type]


def text_of(deltas: list[TextDelta]) -> str:
    return "".join(d.text for d in deltas)


def metric(server: VllmServer, name: str, **labels: str) -> float:
    """The sum of a Prometheus counter/gauge vLLM exports, over series matching `labels`."""
    body = httpx.get(server.url.removesuffix("/v1") + "/metrics", timeout=10).text
    total = 0.0
    for line in body.splitlines():
        if not line.startswith(name + "{") and not line.startswith(name + " "):
            continue
        if all(f'{key}="{value}"' in line for key, value in labels.items()):
            total += float(line.rsplit(" ", 1)[1])
    return total


def test_streams_with_usage_and_the_registered_template(vllm_server: VllmServer) -> None:
    tokenizer = load_tokenizer(vllm_server.directory)
    backend = backend_for(vllm_server)
    greedy = SamplingParams(max_new_tokens=12, do_sample=False)
    deltas = collect(backend, QUESTION, greedy)
    assert backend.model_id == vllm_server.base_version  # served under its version id
    assert backend.context_length == 256  # vLLM's max_model_len, read from /v1/models
    assert deltas[-1].finish_reason in ("stop", "length")
    assert all(d.finish_reason is None for d in deltas[:-1])
    text = text_of(deltas)
    assert text.strip()
    kullm = backend.prompt_format.prompt(QUESTION)
    assert kullm.endswith("### 응답:\n")
    assert deltas[-1].prompt_tokens == len(tokenizer(kullm, add_special_tokens=False)["input_ids"])
    assert 1 <= deltas[-1].completion_tokens <= 12
    assert text_of(collect(backend_for(vllm_server), QUESTION, greedy)) == text
    cut = next(i for i in range(1, len(text)) if not text[i].isspace())
    stopped = collect(
        backend_for(vllm_server), QUESTION, greedy, GenerationOptions(stop=(text[cut],))
    )
    assert text_of(stopped) == text[: text.index(text[cut])]
    assert stopped[-1].finish_reason == "stop"


def test_vllm_streams_several_tokens_per_event_when_asked(vllm_server: VllmServer) -> None:
    """With `stream_interval` 4 vLLM sends the first token alone and then 4 per event: the
    same answer in fewer pieces, its tokens counted as they come and exactly at the end."""
    greedy = SamplingParams(max_new_tokens=24, do_sample=False)
    exact = GenerationOptions(min_tokens=24)
    one = collect(backend_for(vllm_server), QUESTION, greedy, exact)
    backend = backend_for(vllm_server, stream_interval=4)
    four = collect(backend, QUESTION, greedy, exact)
    assert backend._vllm  # the server said it is vLLM: the field went with the request
    assert text_of(four) == text_of(one)
    assert four[-1].completion_tokens == one[-1].completion_tokens == 24
    pieces = [d for d in four if d.text]
    assert len(pieces) <= 1 + 23 // 4 + 1 < len([d for d in one if d.text])
    counts = [d.completion_tokens for d in pieces]
    assert counts[0] == 1 and counts == sorted(counts) and counts[-1] <= 24


def test_vllm_goes_on_with_an_answer_cut_by_length(vllm_server: VllmServer) -> None:
    """계속 생성: the answer so far goes as the last assistant message with
    continue_final_message; vLLM's prompt is kindchat's prompt followed by that answer (no
    end of turn, no new answer header), and only the new text streams."""
    tokenizer = load_tokenizer(vllm_server.directory)
    greedy = SamplingParams(max_new_tokens=8, do_sample=False)
    first = collect(backend_for(vllm_server), QUESTION, greedy, GenerationOptions(min_tokens=8))
    assert first[-1].finish_reason == "length"
    so_far = text_of(first)
    more = collect(
        backend_for(vllm_server), QUESTION, greedy, GenerationOptions(prefix=so_far, min_tokens=8)
    )
    assert text_of(more) and not text_of(more).startswith(so_far)
    assert more[-1].completion_tokens == 8
    kullm = backend_for(vllm_server).prompt_format.prompt(QUESTION) + so_far
    assert more[-1].prompt_tokens == len(tokenizer(kullm, add_special_tokens=False)["input_ids"])


def test_vllm_takes_the_sampling_extras_and_the_seed(vllm_server: VllmServer) -> None:
    """top_k, repetition_penalty and min_tokens go through (no fallback to OpenAI's fields);
    a seed gives the same sample again, another seed another sample."""
    params = SamplingParams(max_new_tokens=24, temperature=1.0, top_k=50, top_p=1.0)
    longer = GenerationOptions(seed=7, min_tokens=24)
    backend = backend_for(vllm_server)
    first = collect(backend, QUESTION, params, longer)
    assert backend._extras  # vLLM took top_k and min_tokens
    assert first[-1].completion_tokens == 24  # min_tokens held EOS back
    again = collect(backend_for(vllm_server), QUESTION, params, longer)
    assert text_of(again) == text_of(first)
    others = {
        text_of(collect(backend_for(vllm_server), QUESTION, params, GenerationOptions(seed=s)))
        for s in (8, 9, 10)
    }
    assert others - {text_of(first)}, "three other seeds all gave the seed-7 sample"


def test_leaving_the_stream_aborts_the_request_in_vllm(vllm_server: VllmServer) -> None:
    """A client that leaves after two pieces of a 128-token answer (half the context: the
    most a request may ask): vLLM stops generating it (it never finishes by length, and far
    fewer than 128 tokens are generated)."""
    finished = ("vllm:request_success_total",)
    # The earlier tests' requests (finished by length) reach vLLM's counters a moment after
    # their answers: read the counts once they stand still, or one of them lands in this test.
    length_before = -1.0
    deadline = time.monotonic() + 20
    while (now := metric(vllm_server, *finished, finished_reason="length")) != length_before:
        assert time.monotonic() < deadline, "vLLM's counters did not settle"
        length_before = now
        time.sleep(1.0)
    tokens_before = metric(vllm_server, "vllm:generation_tokens_total")
    params = SamplingParams(max_new_tokens=128, temperature=1.0)

    async def read_two() -> int:
        backend = backend_for(vllm_server)
        await backend.start()
        got = 0
        try:
            stream = backend.stream(QUESTION, params, GenerationOptions(min_tokens=500))
            async for _ in stream:
                got += 1
                if got == 2:
                    break
            await stream.aclose()  # type: ignore[attr-defined]
        finally:
            await backend.close()
        return got

    assert asyncio.run(read_two()) == 2
    deadline = time.monotonic() + 20
    while metric(vllm_server, "vllm:num_requests_running") > 0:
        assert time.monotonic() < deadline, "vLLM still runs the request the client left"
        time.sleep(0.1)
    time.sleep(1.0)  # a request still generating would finish by length within this
    assert metric(vllm_server, *finished, finished_reason="length") == length_before
    generated = metric(vllm_server, "vllm:generation_tokens_total") - tokens_before
    assert generated < 100, f"vLLM generated {generated} of 128 tokens for a client that left"


def test_errors_map_to_kindchats(vllm_server: VllmServer) -> None:
    params = SamplingParams(max_new_tokens=8)
    long_input = [{"role": "user", "content": "아주 긴 질문 " * 400}]
    with pytest.raises(InputTooLongError, match="tokens"):
        collect(backend_for(vllm_server), long_input, params)
    # without a local tokenizer the input goes as it is, and vLLM's own limit answers
    with pytest.raises(InputTooLongError, match=re.compile("length|tokens|context", re.I)):
        collect(OpenAIBackend(vllm_server.url), long_input, params)
    with pytest.raises(BackendUnavailableError, match="does not serve 'nope'"):
        collect(backend_for(vllm_server, model="nope"), QUESTION, params)
    with pytest.raises(BackendUnavailableError, match="unreachable"):
        collect(OpenAIBackend("http://127.0.0.1:9/v1"), QUESTION, params)
