"""The PPO rollout's fast paths are exact: the sampler's logits, its sampling law, and the
mini-batch trimming must give what the slow, obvious computation gives."""

from __future__ import annotations

import tempfile
from pathlib import Path

import pytest
import torch

from kindchat.config import Settings
from kindchat.models.generation import (
    SamplingParams,
    left_pad,
    next_tokens,
    response_mask,
    sample_with_logits,
)
from kindchat.models.loading import load_causal_lm
from kindchat.models.registry import Registry
from kindchat.models.template import kullm_prompt
from kindchat.retrain.evaluate import response_logits
from kindchat.retrain.ppo import PpoConfig, PpoTrainer, _response_values, build_rlhf_models
from kindchat.retrain.ppo_math import logprobs_from_logits
from kindchat.seed import read_ppo_prompts

PROMPTS = [
    "안녕하세요",
    "오늘 날씨가 어때요? 자세히 알려 주세요.",
    "김치찌개 만드는 법",
    "고마워요",
]


def test_response_mask_stops_after_the_first_eos_even_when_pad_is_eos() -> None:
    eos = 2
    response = torch.tensor([[5, 2, 2, 2], [5, 6, 7, 8], [2, 9, 9, 9]])
    assert response_mask(response, eos).tolist() == [[1, 1, 0, 0], [1, 1, 1, 1], [1, 0, 0, 0]]


def sample_token(
    logits: torch.Tensor, temperature: float = 1.0, top_p: float = 1.0
) -> torch.Tensor:
    """What the rollout draws: the one sampler, no penalty or top-k, the global generator."""
    params = SamplingParams(temperature=temperature, top_p=top_p, top_k=0, repetition_penalty=1.0)
    rows = logits.size(0)
    return next_tokens(logits, [[0]] * rows, [params] * rows, [None] * rows)


def test_sample_token_follows_the_distribution() -> None:
    probs = torch.tensor([0.5, 0.3, 0.15, 0.05])
    logits = probs.log().repeat(20_000, 1)
    torch.manual_seed(0)
    counts = torch.bincount(sample_token(logits), minlength=4).float() / 20_000
    assert torch.allclose(counts, probs, atol=0.015)
    # Nucleus 0.6 keeps the tokens whose better neighbours hold < 0.6: 0.5 and 0.3, renormalised.
    counts = torch.bincount(sample_token(logits, top_p=0.6), minlength=4).float() / 20_000
    assert torch.allclose(counts, torch.tensor([0.625, 0.375, 0.0, 0.0]), atol=0.015)
    # Temperature 2 flattens: p ∝ sqrt(p).
    flat = probs.sqrt() / probs.sqrt().sum()
    counts = torch.bincount(sample_token(logits, temperature=2.0), minlength=4).float() / 20_000
    assert torch.allclose(counts, flat, atol=0.015)
    assert sample_token(logits[:3], temperature=0).tolist() == [0, 0, 0]


def test_sampler_logits_equal_a_full_forward(micro_settings: Settings) -> None:
    model, tok = load_causal_lm(Registry(micro_settings.models_dir).resolve("sft"))
    model.eval()
    encoded = [tok(kullm_prompt(p), add_special_tokens=False)["input_ids"] for p in PROMPTS]
    prompt_ids, prompt_mask = left_pad(encoded, tok.pad_token_id)
    torch.manual_seed(0)
    responses, logits = sample_with_logits(
        model, prompt_ids, prompt_mask, 12, tok.eos_token_id, tok.pad_token_id
    )
    assert responses.shape == logits.shape[:2] and logits.size(2) == len(tok)
    mask = response_mask(responses, tok.eos_token_id)
    assert bool((responses[mask == 0] == tok.pad_token_id).all())
    sequences = torch.cat([prompt_ids, responses], dim=1)
    with torch.no_grad():
        full = response_logits(
            model, sequences, torch.cat([prompt_mask, mask], dim=1), prompt_ids.size(1)
        )
    real = mask.bool()
    assert torch.allclose(logits[real], full[real], atol=1e-4)


@pytest.fixture(scope="module")
def trainer(micro_settings: Settings) -> PpoTrainer:
    registry = Registry(micro_settings.models_dir)
    config = PpoConfig(steps=1, batch_size=8, mini_batch_size=4, max_new_tokens=16)
    models = build_rlhf_models(registry.resolve("sft"), registry.resolve("rm"), config)
    prompts = [p.prompt for p in read_ppo_prompts(micro_settings.data_dir)[:8]]
    return PpoTrainer(models, prompts, config, Path(tempfile.mkdtemp()))


def test_minibatch_trimming_changes_no_number(trainer: PpoTrainer) -> None:
    torch.manual_seed(1)
    rollout = trainer.make_rollout(trainer.next_prompts())
    actor, critic = trainer.models.actor.module, trainer.models.critic.module
    # The longest prompt and the longest answer, apart: each alone sets one side's padding.
    prompt_lengths = rollout.attention_mask[:, : rollout.prompt_length].sum(dim=1)
    answer_lengths = rollout.response_mask.sum(dim=1)
    index = torch.tensor([int(prompt_lengths.argmin()), int(answer_lengths.argmin())])
    full = {  # the same rows, untrimmed
        name: getattr(rollout, name)[index]
        for name in ("sequences", "attention_mask", "response_mask", "old_logprobs")
    }
    mb = rollout.take(index)
    assert mb.sequences.size(1) <= full["sequences"].size(1)
    assert torch.equal(mb.old_logprobs, full["old_logprobs"][:, : mb.old_logprobs.size(1)])
    with torch.no_grad():
        responses = full["sequences"][:, rollout.prompt_length :]
        slow_lp = logprobs_from_logits(
            response_logits(
                actor, full["sequences"], full["attention_mask"], rollout.prompt_length
            ),
            responses,
        )
        fast_lp = logprobs_from_logits(
            response_logits(actor, mb.sequences, mb.attention_mask, mb.prompt_length),
            mb.sequences[:, mb.prompt_length :],
        )
        slow_v = _response_values(
            critic, full["sequences"], full["attention_mask"], rollout.prompt_length
        )
        fast_v = _response_values(critic, mb.sequences, mb.attention_mask, mb.prompt_length)
    real = mb.response_mask.bool()
    width = real.size(1)
    assert torch.equal(full["response_mask"][:, width:].sum(), torch.tensor(0.0))
    assert torch.allclose(fast_lp[real], slow_lp[:, :width][real], atol=1e-5)
    assert torch.allclose(fast_v[real], slow_v[:, :width][real], atol=1e-5)
    # And the sampling pass's log-probs are those of the actor (no update has happened yet).
    assert torch.allclose(mb.old_logprobs[real], fast_lp[real], atol=1e-4)
