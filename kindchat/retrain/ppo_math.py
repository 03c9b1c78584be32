"""The PPO math of DeepSpeed-Chat step 3 as small pure functions.

Shapes: B = batch (rollouts), R = response length (right-padded after EOS). Every `mask` is a
[B, R] float tensor that is 1 on response tokens (EOS included) and 0 on padding.

References: Ouyang et al. 2022 (InstructGPT, per-token KL penalty); Schulman et al. 2016 (GAE);
Schulman et al. 2017 (PPO clipped objectives); DeepSpeed-Chat `ppo_trainer.py`
(`compute_rewards`, `get_advantages_and_returns`, `actor_loss_fn`, `critic_loss_fn`).
"""

from __future__ import annotations

import torch


def masked_mean(values: torch.Tensor, mask: torch.Tensor, dim: int | None = None) -> torch.Tensor:
    """Mean of `values` where `mask` is 1 (over everything, or along `dim`)."""
    if dim is None:
        return (values * mask).sum() / mask.sum().clamp(min=1)
    return (values * mask).sum(dim) / mask.sum(dim).clamp(min=1)


def masked_whiten(values: torch.Tensor, mask: torch.Tensor, eps: float = 1e-8) -> torch.Tensor:
    """(values − mean) / std over the masked entries; padding stays 0."""
    mean = masked_mean(values, mask)
    var = masked_mean((values - mean) ** 2, mask)
    return (values - mean) * torch.rsqrt(var + eps) * mask


def kl_penalized_rewards(
    scores: torch.Tensor,
    logprobs: torch.Tensor,
    ref_logprobs: torch.Tensor,
    mask: torch.Tensor,
    kl_coef: float,
    reward_clip: float,
) -> torch.Tensor:
    """Per-token rewards [B, R]: −β·(log π − log π_ref) on every response token, plus the RM
    score clipped to ±`reward_clip` on the last response token.

    scores [B]; logprobs, ref_logprobs, mask [B, R].
    """
    rewards = -kl_coef * (logprobs - ref_logprobs) * mask
    last = (mask.sum(dim=1).long() - 1).clamp(min=0)
    clipped = scores.clamp(-reward_clip, reward_clip)
    return rewards.scatter_add(1, last[:, None], clipped[:, None].to(rewards.dtype))


def gae(
    rewards: torch.Tensor, values: torch.Tensor, mask: torch.Tensor, gamma: float, lam: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """Generalised advantage estimation over response tokens; returns (advantages, returns).

    δ_t = r_t + γ·V_{t+1} − V_t, with V = 0 after the last response token;
    A_t = δ_t + γ·λ·A_{t+1};  returns_t = A_t + V_t.  All [B, R].
    """
    advantages = torch.zeros_like(rewards)
    next_value = torch.zeros_like(rewards[:, 0])
    next_advantage = torch.zeros_like(rewards[:, 0])
    for t in reversed(range(rewards.size(1))):
        delta = rewards[:, t] + gamma * next_value - values[:, t]
        next_advantage = (delta + gamma * lam * next_advantage) * mask[:, t]
        advantages[:, t] = next_advantage
        next_value = values[:, t] * mask[:, t]
    return advantages, (advantages + values) * mask


def clipped_policy_loss(
    logprobs: torch.Tensor,
    old_logprobs: torch.Tensor,
    advantages: torch.Tensor,
    mask: torch.Tensor,
    clip: float,
) -> tuple[torch.Tensor, torch.Tensor]:
    """PPO-clip actor loss E[max(−A·ρ, −A·clip(ρ, 1−ε, 1+ε))], ρ = π/π_old; and the clip fraction.

    All inputs [B, R]; returns two scalars.
    """
    ratio = torch.exp(logprobs - old_logprobs)
    unclipped = -advantages * ratio
    clipped = -advantages * ratio.clamp(1.0 - clip, 1.0 + clip)
    loss = masked_mean(torch.maximum(unclipped, clipped), mask)
    clip_fraction = masked_mean((clipped > unclipped).float(), mask)
    return loss, clip_fraction


def clipped_value_loss(
    values: torch.Tensor,
    old_values: torch.Tensor,
    returns: torch.Tensor,
    mask: torch.Tensor,
    clip: float,
) -> torch.Tensor:
    """Critic loss ½·E[max((V − G)², (clip(V, V_old ± ε) − G)²)]. Inputs [B, R]; a scalar."""
    clipped = old_values + (values - old_values).clamp(-clip, clip)
    loss = torch.maximum((values - returns) ** 2, (clipped - returns) ** 2)
    return 0.5 * masked_mean(loss, mask)


def logprobs_from_logits(logits: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
    """log p(token) under `logits`: logits [B, R, V], tokens [B, R] → [B, R]."""
    return torch.log_softmax(logits.float(), dim=-1).gather(-1, tokens[..., None]).squeeze(-1)


def entropy_from_logits(logits: torch.Tensor) -> torch.Tensor:
    """Entropy of the categorical at each position: [B, R, V] → [B, R]."""
    logp = torch.log_softmax(logits.float(), dim=-1)
    return -(logp.exp() * logp).sum(-1)
