"""Pairwise accuracy of a reward model on the seed's held-out `rm/*_test.json`, per set."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from transformers import PreTrainedModel, PreTrainedTokenizerBase

from kindchat.retrain.reward import score_texts
from kindchat.seed import RmPair
from kindchat.stats import Estimate, bootstrap

# The seed project's RM-1.3b on the same test sets (VAIV 2023 report).
SEED_RM_ACCURACY = {
    "conversation": 0.725,
    "hatespeech": 0.85,
    "translation": 0.475,
    "overall": 0.65,
}


@dataclass(frozen=True)
class RmSetResult:
    name: str
    accuracy: Estimate
    chosen_mean: float
    rejected_mean: float

    def as_dict(self) -> dict[str, Any]:
        return {
            "accuracy": self.accuracy.value,
            "accuracy_low": self.accuracy.low,
            "accuracy_high": self.accuracy.high,
            "n": self.accuracy.n,
            "chosen_mean": self.chosen_mean,
            "rejected_mean": self.rejected_mean,
        }


def evaluate_reward_model(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    pairs: Sequence[RmPair],
    max_length: int,
) -> list[RmSetResult]:
    """Accuracy (chosen scored above rejected) per subset and overall, with 95% intervals."""
    prompts = [p.prompt for p in pairs]
    chosen = score_texts(model, tokenizer, prompts, [p.chosen for p in pairs], max_length)
    rejected = score_texts(model, tokenizer, prompts, [p.rejected for p in pairs], max_length)
    rows = list(zip(pairs, chosen, rejected, strict=True))
    results = []
    subsets = sorted({p.subset for p in pairs})
    for name in [*subsets, "overall"]:
        part = [r for r in rows if name == "overall" or r[0].subset == name]
        wins = [1.0 if c > r else 0.0 for _, c, r in part]
        results.append(
            RmSetResult(
                name=name,
                accuracy=bootstrap(wins),
                chosen_mean=sum(c for _, c, _ in part) / len(part),
                rejected_mean=sum(r for _, _, r in part) / len(part),
            )
        )
    return results


def accuracy_metrics(results: Sequence[RmSetResult]) -> dict[str, Any]:
    """Flat manifest metrics: `accuracy` (overall) and a per-set breakdown."""
    by_name = {r.name: r.as_dict() for r in results}
    return {"accuracy": by_name["overall"]["accuracy"], "rm_eval": by_name}
