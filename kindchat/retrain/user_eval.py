"""How well a policy pleases some users, on prompts no training ever saw.

For each held-out prompt the policy samples `samples` answers; the users' `score` of each is
averaged per prompt. Reported: the mean with a 95% bootstrap interval over prompts, and — for a
policy against a baseline on the same prompts — the paired gain (per-prompt difference, its
interval from resampling prompts), plus KL(policy ‖ SFT) in nats per answer, estimated on the
policy's own samples at the sampling temperature (as in :mod:`kindchat.retrain.policy_eval`).

The score function is a black box here: it is only ever used to *report*, never to train or to
gate (the users' votes and thumbs are what train).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from kindchat.models.generation import Generation
from kindchat.models.loading import load_causal_lm
from kindchat.retrain.policy_eval import PolicyEvalConfig, sample_answers, sequence_logprobs
from kindchat.stats import Estimate, bootstrap

logger = logging.getLogger(__name__)

Scorer = Callable[[str, str], float]


@dataclass(frozen=True)
class PolicyScores:
    """One policy's answers and the users' mean score per prompt."""

    per_prompt: list[float]
    answers: list[Generation]  # prompt-major: samples of prompt 0, then prompt 1, …
    kl_sft: float | None  # nats per answer, when an SFT model was given
    empty: float  # share of empty answers

    @property
    def mean(self) -> Estimate:
        return bootstrap(self.per_prompt)


def score_policy(
    policy_dir: Path,
    prompts: Sequence[str],
    scorer: Scorer,
    *,
    sft_dir: Path | None = None,
    samples: int = 2,
    config: PolicyEvalConfig | None = None,
) -> PolicyScores:
    """Sample `samples` answers per prompt from the policy and score them with `scorer`."""
    config = config or PolicyEvalConfig()
    repeated = [p for p in prompts for _ in range(samples)]
    model, tokenizer = load_causal_lm(policy_dir)
    answers = sample_answers(model, tokenizer, repeated, config, "sampling")
    kl = None
    if sft_dir is not None:
        own = sequence_logprobs(model, tokenizer.pad_token_id, answers, config.temperature)
        del model
        sft, _ = load_causal_lm(sft_dir)
        ref = sequence_logprobs(sft, tokenizer.pad_token_id, answers, config.temperature)
        del sft
        kl = sum(a - b for a, b in zip(own, ref, strict=True)) / len(own)
    scores = [scorer(p, g.text) for p, g in zip(repeated, answers, strict=True)]
    per_prompt = [sum(scores[i : i + samples]) / samples for i in range(0, len(scores), samples)]
    empty = sum(not g.text for g in answers) / len(answers)
    return PolicyScores(per_prompt, answers, kl, empty)


def paired_gain(new: PolicyScores, old: PolicyScores) -> Estimate:
    """Mean per-prompt score difference new − old, 95% interval over prompts."""
    if len(new.per_prompt) != len(old.per_prompt):
        raise ValueError("both policies must be scored on the same prompts")
    return bootstrap([a - b for a, b in zip(new.per_prompt, old.per_prompt, strict=True)])
