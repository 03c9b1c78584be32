"""The one sampler, token for token against transformers `generate` on the micro SFT model.

A request alone with seed `s` must get what `torch.manual_seed(s)` + `model.generate(...,
do_sample=True)` gives, through every path an answer is drawn by: the serving engines
(`BatchEngine`, `WaveEngine`), the plain batch function used by evaluation and nights
(`generate_batch`) and PPO's rollout sampler (`sample_with_logits`). And a seeded request gets
the same answer alone as batched beside other requests with other parameters.
"""

from __future__ import annotations

import asyncio
from dataclasses import replace
from typing import Any

import pytest
import torch

from kindchat.config import Settings
from kindchat.models.engine import BatchEngine, WaveEngine
from kindchat.models.generation import (
    SamplingParams,
    generate_batch,
    left_pad,
    next_tokens,
    sample_with_logits,
    seeded_generator,
)
from kindchat.models.loading import load_causal_lm
from kindchat.models.registry import Registry
from kindchat.models.template import kullm_prompt

PROMPTS = [
    kullm_prompt("안녕하세요"),
    kullm_prompt("한국의 수도는 어디인가요? 자세히 설명해 주세요."),
]
SEEDS = [0, 1, 2]

COMBOS = {
    "temperature": SamplingParams(
        max_new_tokens=24, temperature=1.3, top_p=1.0, top_k=0, repetition_penalty=1.0
    ),
    "top_k": SamplingParams(
        max_new_tokens=24, temperature=1.0, top_p=1.0, top_k=20, repetition_penalty=1.0
    ),
    "top_p": SamplingParams(
        max_new_tokens=24, temperature=1.2, top_p=0.8, top_k=0, repetition_penalty=1.0
    ),
    "repetition_penalty": SamplingParams(
        max_new_tokens=24, temperature=1.0, top_p=1.0, top_k=0, repetition_penalty=1.5
    ),
    "server_defaults": SamplingParams(max_new_tokens=24),
    "all": SamplingParams(
        max_new_tokens=24, temperature=0.9, top_p=0.9, top_k=40, repetition_penalty=1.2
    ),
    "greedy": SamplingParams(max_new_tokens=24, do_sample=False, repetition_penalty=1.3),
}


@pytest.fixture(scope="module")
def lm(micro_settings: Settings) -> tuple[Any, Any]:
    model, tokenizer = load_causal_lm(Registry(micro_settings.models_dir).resolve("sft"), "cpu")
    model.eval()
    return model, tokenizer


def ids_of(tokenizer: Any, prompt: str) -> list[int]:
    return list(tokenizer(prompt, add_special_tokens=False)["input_ids"])


def hf_generate(
    lm: tuple[Any, Any], prompt: str, params: SamplingParams, seed: int, min_new_tokens: int = 0
) -> list[int]:
    """transformers' own answer: the global generator seeded, one request, EOS kept."""
    model, tokenizer = lm
    ids = torch.tensor([ids_of(tokenizer, prompt)])
    kwargs: dict[str, Any] = {"do_sample": not params.greedy}
    if not params.greedy:
        kwargs.update(temperature=params.temperature, top_p=params.top_p, top_k=params.top_k)
    torch.manual_seed(seed)
    out = model.generate(
        ids,
        attention_mask=torch.ones_like(ids),
        max_new_tokens=params.max_new_tokens,
        min_new_tokens=min_new_tokens,
        repetition_penalty=params.repetition_penalty,
        pad_token_id=tokenizer.pad_token_id,
        eos_token_id=tokenizer.eos_token_id,
        **kwargs,
    )
    return [int(t) for t in out[0, ids.shape[1] :]]


def serve(
    engine: BatchEngine,
    requests: list[tuple[list[int], SamplingParams, int | None, int]],
    stagger: float = 0.0,
) -> list[list[int]]:
    """Submit (prompt ids, params, seed, min tokens) requests, the i-th after i * `stagger` s;
    each answer's tokens, EOS included when the request stopped on it."""

    async def one(
        ids: list[int], params: SamplingParams, seed: int | None, least: int, delay: float
    ) -> list[int]:
        await asyncio.sleep(delay)
        tokens: list[int] = []
        async for event in engine.submit(ids, params, seed=seed, min_new_tokens=least):
            if event.token_id is not None:
                tokens.append(event.token_id)
            elif event.finish_reason == "stop":
                tokens.append(engine.eos_id)
        return tokens

    async def run() -> list[list[int]]:
        engine.start()
        try:
            return list(
                await asyncio.gather(
                    *(one(*r, i * stagger) for i, r in enumerate(requests))  # type: ignore[misc]
                )
            )
        finally:
            engine.stop()

    return asyncio.run(run())


@pytest.mark.parametrize("combo", list(COMBOS))
def test_plain_sampler_equals_generate(lm: tuple[Any, Any], combo: str) -> None:
    """`generate_batch` (evaluation, nights, the CLI, the benches) with a seed = `generate`."""
    model, tokenizer = lm
    params = COMBOS[combo]
    answers = set()
    for prompt in PROMPTS:
        for seed in SEEDS:
            expected = hf_generate(lm, prompt, params, seed)
            [got] = generate_batch(model, tokenizer, [prompt], params, seeds=[seed])
            assert got.response_ids == expected, (combo, prompt, seed)
            answers.add(tuple(expected))
    if not params.greedy:  # the seeds really changed the draws
        assert len(answers) > len(PROMPTS)


@pytest.mark.parametrize("engine_cls", [BatchEngine, WaveEngine])
@pytest.mark.parametrize("combo", list(COMBOS))
def test_served_answer_equals_generate(
    lm: tuple[Any, Any], engine_cls: type[BatchEngine], combo: str
) -> None:
    """A request served alone with a seed gets `generate`'s tokens, EOS held back to its
    `min_new_tokens` the same way, on both serving engines."""
    model, tokenizer = lm
    params = COMBOS[combo]
    for prompt in PROMPTS:
        for seed in SEEDS[:2]:
            expected = hf_generate(lm, prompt, params, seed, min_new_tokens=12)
            engine = engine_cls(model, tokenizer, max_batch_size=4)
            [got] = serve(engine, [(ids_of(tokenizer, prompt), params, seed, 12)])
            assert got == expected, (engine_cls.__name__, combo, prompt, seed)


def test_ppo_rollout_sampler_equals_generate(lm: tuple[Any, Any]) -> None:
    """PPO's `sample_with_logits` draws as `generate` does from the seeded global generator."""
    model, tokenizer = lm
    params = SamplingParams(
        max_new_tokens=16, temperature=1.1, top_p=0.9, top_k=0, repetition_penalty=1.0
    )
    for prompt in PROMPTS:
        for seed in SEEDS:
            expected = hf_generate(lm, prompt, params, seed)
            ids, mask = left_pad([ids_of(tokenizer, prompt)], tokenizer.pad_token_id)
            torch.manual_seed(seed)
            tokens, logits = sample_with_logits(
                model,
                ids,
                mask,
                params.max_new_tokens,
                tokenizer.eos_token_id,
                tokenizer.pad_token_id,
                params.temperature,
                params.top_p,
            )
            assert tokens[0, : len(expected)].tolist() == expected
            assert logits.shape[:2] == tokens.shape


NEIGHBOURS: list[tuple[str, SamplingParams, int | None]] = [
    (kullm_prompt("오늘 날씨"), COMBOS["top_k"], 11),
    (kullm_prompt("고양이와 개"), COMBOS["greedy"], None),
    (kullm_prompt("김치찌개 만드는 법"), COMBOS["temperature"], 12),
]


@pytest.mark.parametrize("engine_cls", [BatchEngine, WaveEngine])
def test_seeded_request_is_the_same_alone_and_batched(
    lm: tuple[Any, Any], engine_cls: type[BatchEngine]
) -> None:
    """The same seed gives the same answer served alone or beside other requests (other
    parameters, other seeds, joining at other steps)."""
    model, tokenizer = lm
    params = COMBOS["all"]
    mine = (ids_of(tokenizer, PROMPTS[1]), params, 7, 20)
    [alone] = serve(engine_cls(model, tokenizer, max_batch_size=4), [mine])
    others = [(ids_of(tokenizer, p), q, s, 20) for p, q, s in NEIGHBOURS]
    engine = engine_cls(model, tokenizer, max_batch_size=4)
    stagger = 0.02 if engine_cls is BatchEngine else 0.0
    batched = serve(engine, [others[0], mine, *others[1:]], stagger=stagger)
    assert engine.max_running >= 2  # it really ran beside others
    assert batched[1] == alone
    assert alone == hf_generate(lm, PROMPTS[1], params, 7, min_new_tokens=20)


def test_plain_sampler_is_the_same_alone_and_batched(lm: tuple[Any, Any]) -> None:
    """`generate_batch`: a prompt's answer under a seed does not depend on its batch, and equals
    what the serving engine gives for that seed."""
    model, tokenizer = lm
    params = COMBOS["all"]
    [alone] = generate_batch(model, tokenizer, [PROMPTS[1]], params, seeds=[7])
    prompts = [NEIGHBOURS[0][0], PROMPTS[1], NEIGHBOURS[2][0]]
    batched = generate_batch(model, tokenizer, prompts, params, seeds=[11, 7, None])
    assert batched[1].response_ids == alone.response_ids
    [served] = serve(BatchEngine(model, tokenizer), [(ids_of(tokenizer, PROMPTS[1]), params, 7, 0)])
    assert served == alone.response_ids


def test_next_tokens_rows_keep_their_own_params_and_leave_the_logits() -> None:
    """Rows with different rules in one call draw what each draws alone; the logits stay."""
    torch.manual_seed(0)
    logits = torch.randn(4, 50) * 3
    before = logits.clone()
    histories = [[1, 2, 3], [4, 4, 5], [6], [7, 8]]
    params = [COMBOS["top_p"], COMBOS["greedy"], COMBOS["all"], COMBOS["repetition_penalty"]]
    together = next_tokens(
        logits, histories, params, [seeded_generator(s, "cpu") for s in (1, 2, 3, 4)]
    )
    assert torch.equal(logits, before)
    for row, seed in enumerate((1, 2, 3, 4)):
        alone = next_tokens(
            logits[row : row + 1],
            [histories[row]],
            [params[row]],
            [seeded_generator(seed, "cpu")],
        )
        assert int(alone[0]) == int(together[row])
    with pytest.raises(ValueError, match="as many histories"):
        next_tokens(logits, histories[:2], params, [None] * 4)


def test_sampling_params_reject_bad_values() -> None:
    with pytest.raises(ValueError, match="top_k"):
        SamplingParams(top_k=-1)
    with pytest.raises(ValueError, match="repetition_penalty"):
        SamplingParams(repetition_penalty=0)
    with pytest.raises(ValueError, match="seeds"):
        generate_batch(None, None, ["a", "b"], SamplingParams(), seeds=[1])  # type: ignore[arg-type]


def test_evaluation_and_nights_draw_as_a_served_request(
    lm: tuple[Any, Any], micro_settings: Settings
) -> None:
    """The guard rails' answers (`sample_answers`) and a simulated night's (`nights.Sampler`) are
    what a served request with the server's defaults and the same seed gets, whatever their
    batch size."""
    from kindchat.models.generation import row_seeds
    from kindchat.models.template import prompt_format
    from kindchat.nights import NightConfig
    from kindchat.nights import Sampler as NightSampler
    from kindchat.retrain.policy_eval import PolicyEvalConfig, sample_answers

    model, tokenizer = lm
    users = ["안녕하세요", "오늘 날씨", "고양이와 개"]
    config = PolicyEvalConfig(max_new_tokens=16, seed=5, batch_size=2)
    answers = sample_answers(model, tokenizer, users, config, "test")
    one_by_one = sample_answers(model, tokenizer, users, replace(config, batch_size=1), "test")
    assert [a.response_ids for a in answers] == [a.response_ids for a in one_by_one]
    fmt = prompt_format(tokenizer)
    served = serve(
        BatchEngine(model, tokenizer, max_batch_size=4),
        [
            (ids_of(tokenizer, fmt.single(u)), SamplingParams(max_new_tokens=16), seed, 0)
            for u, seed in zip(users, row_seeds(5, len(users)), strict=True)
        ],
    )
    assert served == [a.response_ids for a in answers]

    sft = Registry(micro_settings.models_dir).resolve("sft")
    conversations = [[{"role": "user", "content": u}] for u in users]
    night = NightSampler(sft, NightConfig(max_new_tokens=16, seed=5, batch_size=2))
    texts = night.answer(conversations)
    assert texts == [a.text for a in answers]  # the same defaults and seeds as the evaluation
    again = NightSampler(sft, NightConfig(max_new_tokens=16, seed=5, batch_size=16))
    assert again.answer(conversations) == texts
    assert again.answer(conversations) != texts  # the next answers draw with the next seeds
