"""The PPO math on hand-made tensors, each value worked out by hand in the comments."""

from __future__ import annotations

import math

import pytest
import torch

from kindchat.retrain.ppo_math import (
    clipped_policy_loss,
    clipped_value_loss,
    entropy_from_logits,
    gae,
    kl_penalized_rewards,
    logprobs_from_logits,
    masked_mean,
    masked_whiten,
)

T = torch.tensor


def close(actual: torch.Tensor, expected: list) -> None:
    torch.testing.assert_close(actual, torch.tensor(expected), atol=1e-4, rtol=1e-4)


def test_masked_mean() -> None:
    values, mask = T([[1.0, 2.0, 100.0], [3.0, 4.0, 5.0]]), T([[1.0, 1.0, 0.0], [1.0, 1.0, 1.0]])
    assert masked_mean(values, mask).item() == pytest.approx(15 / 5)
    assert masked_mean(values, mask, dim=1).tolist() == pytest.approx([1.5, 4.0])


def test_masked_whiten_ignores_padding() -> None:
    values, mask = T([[1.0, 3.0, 1000.0]]), T([[1.0, 1.0, 0.0]])
    out = masked_whiten(values, mask)
    close(out, [[-1.0, 1.0, 0.0]])


def test_kl_penalized_rewards() -> None:
    # row 0: KL terms −0.1·(0.5, 0) → (−0.05, 0); score 2 lands on the last real token (index 1).
    # row 1: KL terms −0.1·(0, −1, 0) → (0, 0.1, 0); score 10 is clipped to 5, lands on index 2.
    rewards = kl_penalized_rewards(
        scores=T([2.0, 10.0]),
        logprobs=T([[-1.0, -1.0, -1.0], [-2.0, -2.0, 0.0]]),
        ref_logprobs=T([[-1.5, -1.0, -1.0], [-2.0, -1.0, 0.0]]),
        mask=T([[1.0, 1.0, 0.0], [1.0, 1.0, 1.0]]),
        kl_coef=0.1,
        reward_clip=5.0,
    )
    close(rewards, [[-0.05, 2.0, 0.0], [0.0, 0.1, 5.0]])


def test_gae_undiscounted_with_padding() -> None:
    # γ=1, λ=0.5, last position is padding (its value 9 must not leak in).
    # t=1: δ = 2 + 0 − 1 = 1 → A1 = 1;  t=0: δ = 1 + 1 − 0.5 = 1.5 → A0 = 1.5 + 0.5·1 = 2.
    adv, ret = gae(T([[1.0, 2.0, 0.0]]), T([[0.5, 1.0, 9.0]]), T([[1.0, 1.0, 0.0]]), 1.0, 0.5)
    close(adv, [[2.0, 1.0, 0.0]])
    close(ret, [[2.5, 2.0, 0.0]])


def test_gae_discounted() -> None:
    # γ=0.9, λ=0.8. t=1: δ = 1 − 0.4 = 0.6 → A1 = 0.6.
    # t=0: δ = 0 + 0.9·0.4 − 0.2 = 0.16 → A0 = 0.16 + 0.9·0.8·0.6 = 0.592.
    adv, ret = gae(T([[0.0, 1.0]]), T([[0.2, 0.4]]), T([[1.0, 1.0]]), 0.9, 0.8)
    close(adv, [[0.592, 0.6]])
    close(ret, [[0.792, 1.0]])


def test_clipped_policy_loss() -> None:
    # token 0: ρ=1.5, A=1 → max(−1.5, −1.2) = −1.2 (clipped);
    # token 1: ρ=0.5, A=−1 → max(0.5, 0.8) = 0.8 (clipped); token 2: ρ=1.1, A=1 → −1.1 (inside).
    loss, clip_fraction = clipped_policy_loss(
        logprobs=T([[math.log(1.5), math.log(0.5), math.log(1.1)]]),
        old_logprobs=T([[0.0, 0.0, 0.0]]),
        advantages=T([[1.0, -1.0, 1.0]]),
        mask=T([[1.0, 1.0, 1.0]]),
        clip=0.2,
    )
    assert loss.item() == pytest.approx((-1.2 + 0.8 - 1.1) / 3)
    assert clip_fraction.item() == pytest.approx(2 / 3)


def test_clipped_policy_loss_gradient_vanishes_when_clipped() -> None:
    logprobs = T([[math.log(1.5)]], requires_grad=True)
    loss, _ = clipped_policy_loss(logprobs, T([[0.0]]), T([[1.0]]), T([[1.0]]), 0.2)
    loss.backward()
    assert logprobs.grad.item() == 0.0


def test_clipped_value_loss() -> None:
    # token 0: V_clip = 0.5 + clip(0.5, ±0.2) = 0.7 → max((1−2)², (0.7−2)²) = 1.69;
    # token 1: V = V_old = 0 → (0−1)² = 1. Loss = ½·(1.69 + 1)/2 = 0.6725.
    loss = clipped_value_loss(
        T([[1.0, 0.0]]), T([[0.5, 0.0]]), T([[2.0, 1.0]]), T([[1.0, 1.0]]), 0.2
    )
    assert loss.item() == pytest.approx(0.6725)


def test_logprobs_and_entropy() -> None:
    logits = torch.log(T([[[0.5, 0.25, 0.25]]]))
    assert logprobs_from_logits(logits, T([[1]])).item() == pytest.approx(math.log(0.25))
    expected = -(0.5 * math.log(0.5) + 2 * 0.25 * math.log(0.25))
    assert entropy_from_logits(logits).item() == pytest.approx(expected)
