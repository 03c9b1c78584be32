"""Registered stages: reward models, and the evaluations.

Each training stage registers a version (`common.register_model`) and returns its manifest.
The causal-LM stages (tokenizer + base LM, SFT) live in `sft`, the preference methods' in their
own modules: `ppo.train_ppo`, `dpo.train_dpo`.
"""

from __future__ import annotations

import json
import logging

from kindchat.config import Settings
from kindchat.models.loading import load_reward_model
from kindchat.models.registry import Manifest, Registry
from kindchat.models.tokenizer import load_tokenizer
from kindchat.retrain.common import config_dict, new_run_dir, register_model
from kindchat.retrain.data import without_eval_prompts
from kindchat.retrain.policy_eval import (
    PolicyEvalConfig,
    PolicySetResult,
    eval_metrics,
    evaluate_policies,
)
from kindchat.retrain.reward import RmConfig, reward_model_from_lm, train_reward_model
from kindchat.retrain.rm_eval import RmSetResult, accuracy_metrics, evaluate_reward_model
from kindchat.seed import (
    GevalRecord,
    RmPair,
    fingerprint,
    normalize_prompt,
    read_geval,
    read_rm,
    read_rm_file,
)

logger = logging.getLogger(__name__)


def rm_training_pairs(settings: Settings, config: RmConfig, gold: bool = False) -> list[RmPair]:
    """Seed RM train pairs (unless `seed_data` is off) + extra pair files, evaluation prompts left
    out, deduplicated (same context, prompt and answers).

    The gold RM (the judge of policy evaluation) also sees every complete G-Eval pair of the seed
    whose sums differ, the raw material the seed's RM data was filtered from.
    """
    pairs = read_rm(settings.data_dir, "train") if config.seed_data else []
    for path in config.extra_data:
        pairs.extend(read_rm_file(path))
    if gold:
        pairs.extend(geval_pairs(read_geval(settings.data_dir)))
    if config.exclude_eval_prompts:
        pairs = without_eval_prompts(pairs, settings.data_dir)
    seen: set[tuple[str, str, str, str]] = set()
    unique = []
    for p in pairs:
        key = (
            json.dumps(p.context, ensure_ascii=False),
            normalize_prompt(p.prompt),
            p.chosen.strip(),
            p.rejected.strip(),
        )
        if key not in seen and p.chosen.strip() != p.rejected.strip():
            seen.add(key)
            unique.append(p)
    if config.max_records is not None:
        unique = unique[:: max(1, len(unique) // config.max_records)][: config.max_records]
    return unique


def geval_pairs(records: list[GevalRecord]) -> list[RmPair]:
    """G-Eval rows as pairs: the answer with the higher score sum is chosen; ties are dropped."""
    out = []
    for g in records:
        if not g.complete or g.sum1 == g.sum2:
            continue
        first_wins = g.sum1 > g.sum2
        out.append(
            RmPair(
                id=f"geval:{g.id}",
                prompt=g.prompt,
                chosen=g.response1 if first_wins else g.response2,
                rejected=g.response2 if first_wins else g.response1,
                subset=g.subset,
            )
        )
    return out


def train_rm(
    settings: Settings, registry: Registry, init_ref: str, config: RmConfig, gold: bool = False
) -> Manifest:
    """Train a reward model from an LM (or an earlier RM), evaluate it, register it as `rm`."""
    init_dir = registry.resolve(init_ref)
    tokenizer = load_tokenizer(init_dir)
    model = reward_model_from_lm(init_dir, tokenizer.pad_token_id, seed=config.seed)
    pairs = rm_training_pairs(settings, config, gold=gold)
    logger.info("%s: %d training pairs", "gold rm" if gold else "rm", len(pairs))
    run_dir = new_run_dir(settings.runs_dir, "gold-rm" if gold else "rm")
    model, metrics = train_reward_model(model, tokenizer, pairs, config, run_dir)
    results = evaluate_reward_model(
        model, tokenizer, read_rm(settings.data_dir, "test"), config.max_length
    )
    metrics.update(accuracy_metrics(results), train_pairs=len(pairs), gold=gold)
    logger.info("rm accuracy on held-out pairs: %.3f", metrics["accuracy"])
    return register_model(
        registry,
        "rm",
        model,
        tokenizer,
        parents=[registry.version_of(init_ref)],
        config={"stage": config_dict(config), "init": init_ref, "gold": gold},
        metrics=metrics,
        data_fingerprint=fingerprint(pairs),
    )


def eval_rm(
    settings: Settings, registry: Registry, rm_ref: str, max_length: int
) -> list[RmSetResult]:
    """Pairwise accuracy on `rm/*_test.json`; stored in the version's manifest when registered."""
    model, tokenizer = load_reward_model(registry.resolve(rm_ref))
    results = evaluate_reward_model(
        model, tokenizer, read_rm(settings.data_dir, "test"), max_length
    )
    version = registry.version_of(rm_ref)
    if version:
        registry.update_metrics(version, accuracy_metrics(results))
    return results


def eval_policy(
    settings: Settings,
    registry: Registry,
    policy_ref: str,
    baseline_ref: str,
    gold_ref: str,
    config: PolicyEvalConfig,
    sft_ref: str = "sft",
) -> list[PolicySetResult]:
    """Win rate of a policy over a baseline on the unseen `rm/*_test.json` prompts, gold-judged."""
    pairs = read_rm(settings.data_dir, "test")
    results = evaluate_policies(
        registry.resolve(policy_ref),
        registry.resolve(baseline_ref),
        registry.resolve(gold_ref),
        registry.resolve(sft_ref),
        pairs,
        config,
    )
    version = registry.version_of(policy_ref)
    if version:
        baseline = registry.version_of(baseline_ref) or baseline_ref
        gold = registry.version_of(gold_ref) or gold_ref
        registry.update_metrics(version, eval_metrics(results, baseline, gold))
    return results
