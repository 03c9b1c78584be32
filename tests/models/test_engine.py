"""Continuous batching on the micro SFT model: same tokens as `generate`, joins, limits, cancel."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
import torch

from kindchat.config import Settings
from kindchat.models.backends.base import (
    GenerationOptions,
    IncrementalDecoder,
    QueueFullError,
    TextDelta,
)
from kindchat.models.backends.hf import HFBackend
from kindchat.models.engine import BatchEngine, WaveEngine
from kindchat.models.generation import SamplingParams
from kindchat.models.loading import load_causal_lm
from kindchat.models.registry import Registry
from kindchat.models.template import kullm_prompt

PROMPTS = [
    "안녕하세요",
    "한국의 수도는 어디인가요? 자세히 설명해 주세요.",
    "오늘 날씨",
    "고양이와 개",
]
LENGTHS = [30, 45, 20, 50]


@pytest.fixture(scope="module")
def lm(micro_settings: Settings) -> tuple[torch.nn.Module, object]:
    return load_causal_lm(Registry(micro_settings.models_dir).resolve("sft"), "cpu")


def reference(model: torch.nn.Module, tokenizer: object, prompt: str, n: int) -> list[int]:
    """Greedy tokens of transformers `generate`, one request alone, EOS ignored."""
    ids = torch.tensor([tokenizer(prompt, add_special_tokens=False)["input_ids"]])  # type: ignore[operator]
    out = model.generate(  # type: ignore[operator]
        ids,
        attention_mask=torch.ones_like(ids),
        max_new_tokens=n,
        min_new_tokens=n,
        do_sample=False,
        pad_token_id=tokenizer.pad_token_id,  # type: ignore[attr-defined]
    )
    return out[0, ids.shape[1] :].tolist()


async def run_all(engine: BatchEngine, tokenizer: object, stagger: float) -> list[list[int]]:
    async def one(prompt: str, n: int, delay: float) -> list[int]:
        await asyncio.sleep(delay)
        ids = tokenizer(kullm_prompt(prompt), add_special_tokens=False)["input_ids"]  # type: ignore[operator]
        params = SamplingParams(max_new_tokens=n, do_sample=False, repetition_penalty=1.0)
        return [
            e.token_id
            async for e in engine.submit(ids, params, min_new_tokens=n)
            if e.token_id is not None
        ]

    engine.start()
    try:
        return await asyncio.gather(
            *(one(p, n, i * stagger) for i, (p, n) in enumerate(zip(PROMPTS, LENGTHS, strict=True)))
        )
    finally:
        engine.stop()


@pytest.mark.parametrize("engine_cls", [BatchEngine, WaveEngine])
def test_batched_tokens_equal_generate_alone(lm: tuple, engine_cls: type[BatchEngine]) -> None:
    """Requests joining a running batch at different steps get exactly `generate`'s tokens."""
    model, tokenizer = lm
    expected = [
        reference(model, tokenizer, kullm_prompt(p), n)
        for p, n in zip(PROMPTS, LENGTHS, strict=True)
    ]
    engine = engine_cls(model, tokenizer, max_batch_size=3, max_queue=8)
    got = asyncio.run(run_all(engine, tokenizer, stagger=0.02 if engine_cls is BatchEngine else 0))
    assert got == expected
    assert engine.max_running >= 2  # they really ran together


def test_queue_full_raises_and_cancel_frees_the_slot(lm: tuple) -> None:
    model, tokenizer = lm
    engine = BatchEngine(model, tokenizer, max_batch_size=1, max_queue=1)
    ids = tokenizer(kullm_prompt("안녕"), add_special_tokens=False)["input_ids"]
    long = SamplingParams(max_new_tokens=120, do_sample=False)

    async def scenario() -> tuple[int, int]:
        engine.start()
        first = engine.submit(ids, long, min_new_tokens=120)
        second = engine.submit(ids, long, min_new_tokens=120)  # waits: 1 queue slot
        with pytest.raises(QueueFullError) as busy:
            engine.submit(ids, long)
        assert busy.value.retry_after >= 1
        got = 0
        async for event in first:
            got += event.token_id is not None
            if got == 3:
                first.cancel()  # the client went away
        second.cancel()
        async for _ in second:
            pass
        for _ in range(200):  # the engine drops cancelled rows at its next step
            if engine.running == 0 and engine.queued == 0:
                break
            await asyncio.sleep(0.01)
        return got, engine.running

    got, running = asyncio.run(scenario())
    engine.stop()
    assert got < 10 and running == 0  # stopped within a step or two, not after 120 tokens


def test_sampling_with_seed_is_reproducible(lm: tuple) -> None:
    model, tokenizer = lm
    ids = tokenizer(kullm_prompt("안녕하세요"), add_special_tokens=False)["input_ids"]
    params = SamplingParams(max_new_tokens=20, temperature=1.0, top_p=0.9, top_k=50)

    async def twice() -> list[list[int]]:
        engine = BatchEngine(model, tokenizer, max_batch_size=4)
        engine.start()
        try:

            async def one() -> list[int]:
                stream = engine.submit(ids, params, seed=7, min_new_tokens=20)
                return [e.token_id async for e in stream if e.token_id is not None]

            return list(await asyncio.gather(one(), one()))
        finally:
            engine.stop()

    a, b = asyncio.run(twice())
    assert a == b and len(a) == 20


def test_submit_checks_context(lm: tuple, tmp_path: Path) -> None:
    model, tokenizer = lm
    engine = BatchEngine(model, tokenizer)

    async def over() -> None:
        engine.submit([1] * 250, SamplingParams(max_new_tokens=10))

    with pytest.raises(ValueError, match="exceed the context"):
        asyncio.run(over())


def test_answer_cut_inside_a_syllable_never_ends_in_a_broken_character(lm: tuple) -> None:
    """Byte-level BPE splits a rare syllable over tokens; a cut between them drops the
    incomplete bytes (held back while streaming, dropped at the end), never U+FFFD."""
    _, tokenizer = lm
    full = "저는 호랑이 뷁똠퓇 반갑습니다"
    ids = tokenizer(full, add_special_tokens=False)["input_ids"]

    def decode(part: list[int]) -> str:
        return str(tokenizer.decode(part, skip_special_tokens=True))

    cuts = [k for k in range(1, len(ids)) if decode(ids[:k]).endswith("\ufffd")]
    assert len(cuts) >= 3, "the micro tokenizer no longer splits these syllables"
    for cut in range(1, len(ids) + 1):
        decoder = IncrementalDecoder(decode)
        pieces = [decoder.push(t, final=i == cut - 1) for i, t in enumerate(ids[:cut])]
        text = "".join(pieces)
        assert "\ufffd" not in text, (cut, pieces)
        assert full.startswith(text), (cut, text)
        assert text == decode(ids[:cut]).rstrip("\ufffd")  # every complete character came
    # The last event of a stream may carry no token (a finish after the last one).
    decoder = IncrementalDecoder(decode)
    pieces = [decoder.push(t) for t in ids[: cuts[0]]] + [decoder.push(None, final=True)]
    assert "".join(pieces) == decode(ids[: cuts[0]]).rstrip("\ufffd")
    # A replacement character the model really wrote, inside the text, is kept.
    middle = tokenizer("저는 \ufffd요", add_special_tokens=False)["input_ids"]
    decoder = IncrementalDecoder(decode)
    pieces = [decoder.push(t, final=i == len(middle) - 1) for i, t in enumerate(middle)]
    assert "".join(pieces) == "저는 \ufffd요"


def test_length_cut_answers_have_no_broken_character(lm: tuple) -> None:
    """End to end through the hf backend: answers cut by short `max_tokens` (many of them
    inside a syllable), many seeds; no delta and no answer ends in U+FFFD. (A U+FFFD inside an
    answer would be the model's own bytes and is kept; tempered sampling keeps those rare.)"""
    model, tokenizer = lm
    # 80 requests at once: the queue holds them all (this test is not about its limit)
    backend = HFBackend(model, tokenizer, max_batch_size=8, max_queue=128)
    messages = [{"role": "user", "content": "자기소개를 해 주세요"}]

    async def one(n: int, seed: int) -> list[TextDelta]:
        params = SamplingParams(max_new_tokens=n, temperature=0.8, top_k=50)
        options = GenerationOptions(seed=seed, min_tokens=n)
        return [d async for d in backend.stream(messages, params, options)]

    async def run() -> list[list[TextDelta]]:
        await backend.start()
        try:
            cuts = [one(n, seed) for n in range(1, 9) for seed in range(10)]
            return list(await asyncio.gather(*cuts))
        finally:
            await backend.close()

    answers = asyncio.run(run())
    assert all(a[-1].finish_reason == "length" for a in answers)
    broken = [
        [d.text for d in a]
        for a in answers
        if any(d.text.endswith("\ufffd") for d in a)
        or "".join(d.text for d in a).endswith("\ufffd")
    ]
    assert not broken, broken
