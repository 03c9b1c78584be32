"""Policy A against policy B on held-out prompts, judged by a gold RM that PPO never optimised.

For every evaluation prompt both policies draw one answer through the one sampler with the
server's default sampling (as users get answers) and the same request seed (answer i of A and
of B: `row_seeds(config.seed, …)[i]`); the gold RM scores both; A wins a prompt when its score
is higher (a tie counts half). Reported per set and overall: win rate with a 95% bootstrap
interval, mean gold-RM rewards, an estimate of KL(A‖SFT) (mean over A's answers of
Σ_t log π_A − log π_SFT), empty-answer and repetition rates.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from tqdm.auto import tqdm
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from kindchat.models.generation import (
    DEFAULT_SAMPLING,
    Generation,
    SamplingParams,
    generate_batch,
    left_pad,
    row_seeds,
)
from kindchat.models.loading import load_causal_lm, load_reward_model
from kindchat.models.template import prompt_format
from kindchat.retrain.evaluate import response_logits
from kindchat.retrain.ppo_math import logprobs_from_logits
from kindchat.retrain.reward import score_texts
from kindchat.seed import RmPair
from kindchat.stats import Estimate, bootstrap

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class PolicyEvalConfig:
    max_new_tokens: int = 64  # answer budget of both policies
    # Sampling of both policies: the server's defaults, so answers are scored as users get them.
    temperature: float = DEFAULT_SAMPLING.temperature
    top_p: float = DEFAULT_SAMPLING.top_p
    top_k: int = DEFAULT_SAMPLING.top_k
    repetition_penalty: float = DEFAULT_SAMPLING.repetition_penalty
    batch_size: int = 16  # prompts generated together
    gold_max_length: int = 256  # tokens the gold RM reads
    repetition_ngram: int = 3  # an answer is repetitive when under half its n-grams are distinct
    seed: int = 0

    def sampling(self) -> SamplingParams:
        return SamplingParams(
            max_new_tokens=self.max_new_tokens,
            temperature=self.temperature,
            top_p=self.top_p,
            top_k=self.top_k,
            repetition_penalty=self.repetition_penalty,
        )


def is_repetitive(token_ids: Sequence[int], n: int = 3) -> bool:
    """Under half of the answer's token n-grams are distinct (needs at least 2n tokens)."""
    grams = [tuple(token_ids[i : i + n]) for i in range(len(token_ids) - n + 1)]
    return len(token_ids) >= 2 * n and len(set(grams)) < 0.5 * len(grams)


def sample_answers(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    prompts: Sequence[str],
    config: PolicyEvalConfig,
    desc: str,
) -> list[Generation]:
    """One answer per prompt; answer i is drawn with request seed `row_seeds(config.seed, …)[i]`,
    so it does not depend on `batch_size`, and two policies get the same seeds."""
    out: list[Generation] = []
    fmt = prompt_format(tokenizer)
    seeds = row_seeds(config.seed, len(prompts))
    for start in tqdm(range(0, len(prompts), config.batch_size), desc=desc, leave=False):
        end = start + config.batch_size
        batch = [fmt.single(p) for p in prompts[start:end]]
        out.extend(generate_batch(model, tokenizer, batch, config.sampling(), seeds[start:end]))
    return out


@torch.no_grad()
def sequence_logprobs(
    model: PreTrainedModel,
    pad_id: int,
    generations: Sequence[Generation],
    temperature: float = 1.0,
    batch_size: int = 16,
) -> list[float]:
    """Σ_t log p_T(answer token t | prompt, earlier tokens) under `model`, per generation.

    p_T is the model's distribution at the sampling `temperature`, so that for answers sampled
    from A the mean of log p_T,A − log p_T,SFT estimates KL(A_T ‖ SFT_T) ≥ 0. Simplified: the
    answers were drawn with top-p, top-k and the repetition penalty too, which p_T leaves out.
    """
    totals: list[float] = []
    for start in range(0, len(generations), batch_size):
        chunk = generations[start : start + batch_size]
        prompt_ids, prompt_mask = left_pad([g.prompt_ids for g in chunk], pad_id)
        width = max(1, max(len(g.response_ids) for g in chunk))
        response = torch.full((len(chunk), width), pad_id, dtype=torch.long)
        mask = torch.zeros((len(chunk), width))
        for i, g in enumerate(chunk):  # the mask from lengths: right even when pad is EOS
            response[i, : len(g.response_ids)] = torch.tensor(g.response_ids, dtype=torch.long)
            mask[i, : len(g.response_ids)] = 1.0
        sequences = torch.cat([prompt_ids, response], dim=1)
        attention = torch.cat([prompt_mask, mask.long()], dim=1)
        logits = response_logits(model, sequences, attention, prompt_ids.size(1))
        logits = logits / max(temperature, 1e-6)
        totals.extend((logprobs_from_logits(logits, response) * mask).sum(dim=1).tolist())
    return totals


@dataclass(frozen=True)
class PolicySetResult:
    name: str
    win_rate: Estimate
    reward_a: float
    reward_b: float
    kl_a_sft: float
    empty_a: float
    empty_b: float
    repetitive_a: float
    repetitive_b: float
    reward_gap: Estimate | None = None  # per-prompt gold-RM reward A − B, 95% interval

    def as_dict(self) -> dict[str, Any]:
        gap = self.reward_gap
        return {
            **(
                {"reward_gap": gap.value, "reward_gap_low": gap.low, "reward_gap_high": gap.high}
                if gap is not None
                else {}
            ),
            "win_rate": self.win_rate.value,
            "win_rate_low": self.win_rate.low,
            "win_rate_high": self.win_rate.high,
            "n": self.win_rate.n,
            "reward_a": self.reward_a,
            "reward_b": self.reward_b,
            "kl_a_sft": self.kl_a_sft,
            "empty_a": self.empty_a,
            "empty_b": self.empty_b,
            "repetitive_a": self.repetitive_a,
            "repetitive_b": self.repetitive_b,
        }


def evaluate_policies(
    policy_dir: Path,
    baseline_dir: Path,
    gold_dir: Path,
    sft_dir: Path,
    pairs: Sequence[RmPair],
    config: PolicyEvalConfig,
) -> list[PolicySetResult]:
    """Compare two policies on the prompts of `pairs`; one result per subset plus `overall`."""
    prompts = [p.prompt for p in pairs]
    policy, tokenizer = load_causal_lm(policy_dir)
    answers_a = sample_answers(policy, tokenizer, prompts, config, "policy A")
    logp_a = sequence_logprobs(policy, tokenizer.pad_token_id, answers_a, config.temperature)
    del policy
    baseline, _ = load_causal_lm(baseline_dir)
    answers_b = sample_answers(baseline, tokenizer, prompts, config, "policy B")
    del baseline
    sft, _ = load_causal_lm(sft_dir)
    logp_sft = sequence_logprobs(sft, tokenizer.pad_token_id, answers_a, config.temperature)
    del sft
    gold, gold_tokenizer = load_reward_model(gold_dir)
    reward_a = score_texts(
        gold, gold_tokenizer, prompts, [g.text for g in answers_a], config.gold_max_length
    )
    reward_b = score_texts(
        gold, gold_tokenizer, prompts, [g.text for g in answers_b], config.gold_max_length
    )
    rows = list(zip(pairs, answers_a, answers_b, reward_a, reward_b, logp_a, logp_sft, strict=True))
    results = []
    for name in [*sorted({p.subset for p in pairs}), "overall"]:
        part = [r for r in rows if name == "overall" or r[0].subset == name]
        n = len(part)
        wins = [1.0 if ra > rb else 0.5 if ra == rb else 0.0 for _, _, _, ra, rb, _, _ in part]
        results.append(
            PolicySetResult(
                name=name,
                win_rate=bootstrap(wins),
                reward_a=sum(r[3] for r in part) / n,
                reward_b=sum(r[4] for r in part) / n,
                kl_a_sft=sum(r[5] - r[6] for r in part) / n,
                empty_a=sum(not r[1].text for r in part) / n,
                empty_b=sum(not r[2].text for r in part) / n,
                repetitive_a=sum(
                    is_repetitive(r[1].response_ids, config.repetition_ngram) for r in part
                )
                / n,
                repetitive_b=sum(
                    is_repetitive(r[2].response_ids, config.repetition_ngram) for r in part
                )
                / n,
                reward_gap=bootstrap([r[3] - r[4] for r in part]),
            )
        )
    overall = results[-1]
    logger.info("policy eval: win rate %s, KL(A||SFT) %.3f", overall.win_rate, overall.kl_a_sft)
    return results


def eval_metrics(results: Sequence[PolicySetResult], baseline: str, gold_rm: str) -> dict[str, Any]:
    """Flat manifest metrics: `win_rate`, `kl` (to SFT) and the per-set breakdown."""
    by_name = {r.name: r.as_dict() for r in results}
    overall = by_name["overall"]
    return {
        "win_rate": overall["win_rate"],
        "kl_to_sft": overall["kl_a_sft"],
        "policy_eval": {"baseline": baseline, "gold_rm": gold_rm, "sets": by_name},
    }
