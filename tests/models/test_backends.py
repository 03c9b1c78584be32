"""Local backends on the micro SFT model: Korean deltas with counts, limits, DeepSpeed on CPU."""

from __future__ import annotations

import asyncio
import re

import pytest

from kindchat.config import Settings
from kindchat.models.backends.base import (
    GenerationBackend,
    GenerationOptions,
    IncrementalDecoder,
    InputTooLongError,
    StopMatcher,
    TextDelta,
)
from kindchat.models.backends.hf import HFBackend
from kindchat.models.generation import SamplingParams
from kindchat.models.registry import Registry

HANGUL = re.compile("[가-힣]")


def answer(backend: GenerationBackend, content: str, **options: object) -> list[TextDelta]:
    async def run() -> list[TextDelta]:
        await backend.start()
        try:
            params = SamplingParams(max_new_tokens=24, temperature=0.8)
            messages = [{"role": "user", "content": content}]
            opts = GenerationOptions(**options)  # type: ignore[arg-type]
            return [d async for d in backend.stream(messages, params, opts)]
        finally:
            await backend.close()

    return asyncio.run(run())


def check_deltas(deltas: list[TextDelta]) -> None:
    assert deltas[-1].finish_reason == "length"  # min_tokens = max_tokens below
    assert all(d.finish_reason is None for d in deltas[:-1])
    assert deltas[-1].completion_tokens == 24 and deltas[-1].prompt_tokens > 20
    counts = [d.completion_tokens for d in deltas]
    assert counts == sorted(counts)
    assert HANGUL.search("".join(d.text for d in deltas))


def test_hf_backend_streams_korean(micro_settings: Settings) -> None:
    path = Registry(micro_settings.models_dir).resolve("sft")
    check_deltas(answer(HFBackend.load(path, device="cpu"), "안녕하세요", min_tokens=24, seed=1))


def test_hf_backend_input_limits(micro_settings: Settings) -> None:
    backend = HFBackend.load(Registry(micro_settings.models_dir).resolve("sft"), device="cpu")
    with pytest.raises(InputTooLongError, match="max_input_tokens 10"):
        answer(backend, "한국어로 길게 말해 주세요 " * 3, max_input_tokens=10)


@pytest.mark.slow
def test_deepspeed_backend_answers_on_cpu(micro_settings: Settings) -> None:
    from kindchat.models.backends.deepspeed import DeepSpeedBackend

    path = Registry(micro_settings.models_dir).resolve("sft")
    backend = DeepSpeedBackend.load(path, device="cpu")
    assert backend.ds_engine is not None and backend.name == "deepspeed"
    check_deltas(answer(backend, "안녕하세요", min_tokens=24, seed=1))


def test_incremental_decoder_never_splits_a_syllable() -> None:
    data = "안녕".encode()
    decoder = IncrementalDecoder(lambda ids: bytes(ids).decode("utf-8", errors="replace"))
    pieces = [decoder.push(b) for b in data]
    assert pieces == ["", "", "안", "", "", "녕"]


def test_stop_matcher_cuts_and_holds_back() -> None:
    stop = StopMatcher(["###"])
    out = [stop.feed(p) for p in ["안녕", "하세요 #", "## 명령어"]]
    assert "".join(out) == "안녕하세요 " and stop.stopped
